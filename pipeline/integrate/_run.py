"""The integrate stage in a workdir: the PCs (and, for scVI, the counts) in; the
integrated embeddings, the Harmony reference and the scVI model out."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import IntegrateConfig
from ..runtime import release_memory
from ._scvi import require_scvi
from ._scvi_stage import scvi_cohort
from ._stage import integrate_cohort

if TYPE_CHECKING:
    from ..stages import StageContext


def require_extras(params: IntegrateConfig) -> None:
    """Fail before any work when the settings ask for scVI and its extra is missing."""
    if params.method in ("scvi", "both"):
        require_scvi(f"integrate.method: {params.method}")


def run_integrate(ctx: StageContext) -> str:
    """Reads only its inputs while it computes (the rest of the cohort afterwards)."""
    c = ctx.cfg.integrate
    require_extras(c)
    obs = ctx.read_obs(list(dict.fromkeys(["qc_pass", "sample_id", c.batch_key])))
    pcs = ctx.array("obsm/X_pca")
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    batch = obs[c.batch_key].astype(str).to_numpy()
    other: dict[str, np.ndarray] = {}
    scvi_info: dict[str, Any] = {}
    if c.method in ("scvi", "both"):
        model_dir = ctx.workdir.scvi_model
        model_dir.parent.mkdir(exist_ok=True)
        hvg = np.flatnonzero(ctx.read_elem("var")["highly_variable"].to_numpy())
        result_scvi = scvi_cohort(
            ctx.open_cohort(), client=ctx.cluster, keep=keep, batch=batch, hvg=hvg,
            model_dir=model_dir, params=c,
        )  # fmt: skip
        other["X_scvi"] = result_scvi.latent
        scvi_info = {
            "model_dir": str(model_dir.relative_to(ctx.workdir.root)),
            "model_sha256": result_scvi.model.to_record(),
            "n_cells_trained": result_scvi.training.n_cells,
            "n_epochs": result_scvi.training.n_epochs,
            "history": {k: np.asarray(v) for k, v in result_scvi.training.history.items()},
            "seconds": result_scvi.seconds,
        }
    result = integrate_cohort(
        pcs,  # the tasks read it a block of cells at a time
        keep,
        batch,
        params=c,
        other=other,
        sample=obs["sample_id"].astype(str).to_numpy(),
    )
    del obs, other
    release_memory()
    record = {
        "method": c.method,
        "params": c.model_dump(mode="json"),
        "metrics": result.metrics,
        "seconds": result.seconds,
        **result.info,
        **({"scvi": scvi_info} if scvi_info else {}),
    }
    # Harmony's embedding is lazy: the workers write the blocks they corrected
    embeddings = {f"obsm/{k}": v for k, v in result.embeddings.items()}
    ctx.update_cohort(elems={**embeddings, "uns/integrate": record})
    mixing = ", ".join(f"{k} {m['ilisi']:.2f}" for k, m in result.metrics.items())
    return f"integrate: {c.method} on {int(keep.sum()):,} cells by {c.batch_key}; iLISI {mixing}"

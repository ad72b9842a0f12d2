"""The stages behind ``immunoprofile run`` after ingest: read inputs, compute, write.

Each stage records a digest of what it was computed from (the previous stage's digest and
its own parameters) in ``cohort.zarr``'s manifest; a re-run skips a stage whose digest is
unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from distributed import Client

from . import __version__
from .cohort import open_cohort
from .config import RunConfig
from .errors import ImmunoprofileError
from .ingest import STAGE_RECORD, sample_store_path
from .preprocess import preprocess_cohort
from .qc import QCRules, compute_qc
from .store import read_manifest, write_anndata_store

COHORT_STORE = "cohort.zarr"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_digests(cfg: RunConfig) -> dict[str, str]:
    """What each stage's outputs depend on, as a chain of digests."""
    record = Path(cfg.workdir) / STAGE_RECORD
    if not record.exists():
        msg = f"{cfg.workdir} has no {STAGE_RECORD}: run the ingest stage first"
        raise ImmunoprofileError(msg)
    ingest = hashlib.sha256(record.read_bytes()).hexdigest()
    qc = _sha({"ingest": ingest, "qc": cfg.qc.model_dump(mode="json")})
    pre = _sha({"qc": qc, "preprocess": cfg.preprocess.model_dump(mode="json")})
    return {"ingest": ingest, "qc": qc, "preprocess": pre}


def done_stages(cfg: RunConfig) -> dict[str, str]:
    manifest = read_manifest(Path(cfg.workdir) / COHORT_STORE)
    return dict(manifest.get("stages", {})) if manifest else {}


def is_current(cfg: RunConfig, stage: str) -> bool:
    return done_stages(cfg).get(stage) == stage_digests(cfg)[stage]


def _write_cohort(cfg: RunConfig, adata: ad.AnnData, stages: list[str]) -> None:
    digests = stage_digests(cfg)
    info = {
        "kind": "cohort",
        "immunoprofile_version": __version__,
        "stages": {s: digests[s] for s in stages},
        "n_obs": int(adata.n_obs),
        "n_vars": int(adata.n_vars),
    }
    write_anndata_store(Path(cfg.workdir) / COHORT_STORE, adata, info)


def run_qc(cfg: RunConfig, client: Client) -> str:
    workdir = Path(cfg.workdir)
    cohort = open_cohort(workdir, chunk_cells=cfg.ingest.chunk_cells)
    stores = {s: sample_store_path(workdir, s) for s in cohort.obs["sample_id"].cat.categories}
    q = cfg.qc
    rules = QCRules(
        nmads=q.nmads, nmads_mt=q.nmads_mt, min_counts=q.min_counts, max_counts=q.max_counts,
        min_genes=q.min_genes, max_genes=q.max_genes, max_pct_mt=q.max_pct_mt,
    )  # fmt: skip
    result = compute_qc(
        cohort,
        client=client,
        stores=stores,
        rules=rules,
        doublets=q.doublets,
        expected_doublet_rate=q.expected_doublet_rate,
        doublet_mean_center=q.doublet_mean_center,
        seed=q.seed,
    )
    obs = cohort.obs.join(result.obs)
    out = ad.AnnData(obs=obs, var=cohort.var.copy())
    out.uns["qc"] = {"params": q.model_dump(mode="json"), "seconds": result.seconds}
    out.uns["qc_summary"] = result.summary
    _write_cohort(cfg, out, ["ingest", "qc"])
    (workdir / "qc").mkdir(exist_ok=True)
    result.summary.to_csv(workdir / "qc" / "summary.csv", index=False)
    kept = int(obs["qc_pass"].sum())
    return (
        f"qc: {kept:,} of {len(obs):,} cells pass ({kept / len(obs):.1%}) in {result.seconds:.1f} s"
    )


def run_preprocess(cfg: RunConfig, client: Client) -> str:
    workdir = Path(cfg.workdir)
    previous = ad.read_zarr(workdir / COHORT_STORE)
    cohort = open_cohort(workdir, chunk_cells=cfg.ingest.chunk_cells)
    p = cfg.preprocess
    result = preprocess_cohort(
        cohort,
        client=client,
        keep=previous.obs["qc_pass"].to_numpy(dtype=bool),
        total_counts=previous.obs["total_counts"].to_numpy(dtype=np.float64),
        batch_key=p.hvg_batch_key,
        n_top_genes=p.n_top_genes,
        span=p.hvg_span,
        target_sum=p.target_sum,
        n_comps=p.n_comps,
    )
    # a re-run replaces the previous preprocess outputs
    var = previous.var.drop(columns=list(result.var.columns), errors="ignore").join(result.var)
    out = ad.AnnData(obs=previous.obs, var=var, uns=dict(previous.uns))
    out.obsm["X_pca"] = result.pca
    loadings = np.zeros((out.n_vars, result.components.shape[1]), dtype=np.float32)
    loadings[var["highly_variable"].to_numpy()] = result.components
    out.varm["PCs"] = loadings
    out.uns["pca"] = {
        "variance": result.variance,
        "variance_ratio": result.variance_ratio,
        "params": p.model_dump(mode="json"),
        "seconds": result.seconds,
    }
    _write_cohort(cfg, out, ["ingest", "qc", "preprocess"])
    ratio = float(np.sum(result.variance_ratio))
    return (
        f"preprocess: {int(var['highly_variable'].sum())} HVGs, {result.pca.shape[1]} PCs "
        f"({ratio:.1%} of variance) in {sum(result.seconds.values()):.1f} s"
    )


def qc_summary_table(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(Path(workdir) / "qc" / "summary.csv")

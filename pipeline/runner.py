"""The stages behind ``immunoprofile run`` after ingest: read inputs, compute, write.

Each stage records a digest of what it was computed from in ``cohort.zarr``'s manifest
(`workdir`); a re-run skips a stage whose digest is unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import zarr
from distributed import Client

from ._memory import release_memory
from .batches import read_obs_columns
from .cohort import open_cohort
from .config import RunConfig
from .errors import ImmunoprofileError
from .graph import build_graph
from .ingest import sample_store_path
from .integrate import integrate_cohort, scvi_cohort
from .preprocess import Moments, preprocess_cohort
from .qc import QCResult, QCRules, compute_qc
from .runner_abundance import run_abundance
from .runner_annotate import run_annotate
from .runner_report import run_report
from .workdir import (
    COHORT_STORE,
    MOMENT_SUM,
    MOMENT_SUMSQ,
    STAGE_ORDER,
    STAGE_OUTPUTS,
    done_stages,
    is_current,
    stage_digests,
    update_cohort,
    write_cohort,
)

__all__ = [
    "COHORT_STORE",
    "STAGE_ORDER",
    "STAGE_OUTPUTS",
    "done_stages",
    "is_current",
    "run_abundance",
    "run_annotate",
    "run_graph",
    "run_integrate",
    "run_preprocess",
    "run_qc",
    "run_report",
    "stage_digests",
]


def qc_cells(
    cfg: RunConfig, client: Client, cells: ad.AnnData, *, seed_offset: int = 0
) -> QCResult:
    """The qc stage's rules on the cells of a lazily opened view (`open_cohort`)."""
    workdir = Path(cfg.workdir)
    stores = {s: sample_store_path(workdir, s) for s in cells.obs["sample_id"].cat.categories}
    q = cfg.qc
    rules = QCRules(
        nmads=q.nmads, nmads_mt=q.nmads_mt, min_counts=q.min_counts, max_counts=q.max_counts,
        min_genes=q.min_genes, max_genes=q.max_genes, max_pct_mt=q.max_pct_mt,
    )  # fmt: skip
    return compute_qc(
        cells.obs,
        cells.var,
        client=client,
        stores=stores,
        rules=rules,
        doublets=q.doublets,
        expected_doublet_rate=q.expected_doublet_rate,
        doublet_mean_center=q.doublet_mean_center,
        doublet_sim_scored_fraction=q.doublet_sim_scored_fraction,
        seed=q.seed + seed_offset,
        uniform_genes=bool(cells.uns["uniform_genes"]),
    )


def run_qc(cfg: RunConfig, client: Client) -> str:
    workdir = Path(cfg.workdir)
    cohort = open_cohort(workdir, chunk_cells=cfg.ingest.chunk_cells)
    q = cfg.qc
    result = qc_cells(cfg, client, cohort)
    obs = cohort.obs.join(result.obs)
    out = ad.AnnData(obs=obs, var=cohort.var.copy())
    samples = list(result.moments)
    moments = np.stack([result.moments[s] for s in samples])  # samples x 3 x genes
    out.varm[MOMENT_SUM] = moments[:, 1].T
    out.varm[MOMENT_SUMSQ] = moments[:, 2].T
    out.uns["qc"] = {
        "params": q.model_dump(mode="json"),
        "seconds": result.seconds,
        "moment_samples": samples,
    }
    out.uns["qc_summary"] = result.summary
    write_cohort(cfg, out, "qc")
    (workdir / "qc").mkdir(exist_ok=True)
    result.summary.to_csv(workdir / "qc" / "summary.csv", index=False)
    kept = int(obs["qc_pass"].sum())
    return (
        f"qc: {kept:,} of {len(obs):,} cells pass ({kept / len(obs):.1%}) in {result.seconds:.1f} s"
    )


def batch_moments_from_qc(cohort: ad.AnnData, batch_key: str) -> Moments | None:
    """The qc stage's per-sample moments summed per batch (codes as in preprocess)."""
    if MOMENT_SUM not in cohort.varm or "moment_samples" not in cohort.uns.get("qc", {}):
        return None
    obs = cohort.obs
    codes = pd.Categorical(obs[batch_key].astype(str)).codes
    sample = obs["sample_id"].astype(str).to_numpy()
    kept = obs["qc_pass"].to_numpy(dtype=bool)
    out: Moments = {}
    for i, sid in enumerate(cohort.uns["qc"]["moment_samples"]):
        cells = sample == sid
        batch = np.unique(codes[cells])
        if batch.size != 1:
            return None  # the batch key varies within a sample: preprocess makes the pass
        m = np.zeros((3, cohort.n_vars))
        m[0, 0] = kept[cells].sum()
        m[1] = cohort.varm[MOMENT_SUM][:, i]
        m[2] = cohort.varm[MOMENT_SUMSQ][:, i]
        b = int(batch[0])
        out[b] = out[b] + m if b in out else m
    return out


def _qc_outputs(path: Path, batch_key: str) -> ad.AnnData:
    """What preprocess needs of cohort.zarr: the qc stage's obs columns, var and moments
    (not the later stages' outputs)."""
    columns = list(dict.fromkeys(["qc_pass", "total_counts", "sample_id", batch_key]))
    obs = read_obs_columns(path, columns, needs="run the qc stage first")
    group = zarr.open_group(str(path), mode="r")
    varm, uns = group["varm"], group["uns"]
    assert isinstance(varm, zarr.Group) and isinstance(uns, zarr.Group)
    moments = {k: ad.io.read_elem(varm[k]) for k in (MOMENT_SUM, MOMENT_SUMSQ) if k in varm}
    qc = {"qc": ad.io.read_elem(uns["qc"])} if "qc" in uns else {}
    return ad.AnnData(obs=obs, var=ad.io.read_elem(group["var"]), varm=moments, uns=qc)


def run_preprocess(cfg: RunConfig, client: Client) -> str:
    workdir = Path(cfg.workdir)
    before = _qc_outputs(workdir / COHORT_STORE, cfg.preprocess.hvg_batch_key)
    cohort = open_cohort(workdir, chunk_cells=cfg.ingest.chunk_cells)
    p = cfg.preprocess
    result = preprocess_cohort(
        cohort,
        client=client,
        keep=before.obs["qc_pass"].to_numpy(dtype=bool),
        total_counts=before.obs["total_counts"].to_numpy(dtype=np.float64),
        batch_key=p.hvg_batch_key,
        n_top_genes=p.n_top_genes,
        span=p.hvg_span,
        target_sum=p.target_sum,
        n_comps=p.n_comps,
        moments=batch_moments_from_qc(before, p.hvg_batch_key),
    )
    # a re-run replaces the previous preprocess outputs
    var = before.var.drop(columns=list(result.var.columns), errors="ignore").join(result.var)
    loadings = np.zeros((len(var), result.components.shape[1]), dtype=np.float32)
    loadings[var["highly_variable"].to_numpy()] = result.components
    pca = {
        "variance": result.variance,
        "variance_ratio": result.variance_ratio,
        "params": p.model_dump(mode="json"),
        "seconds": result.seconds,
    }
    del before
    update_cohort(
        cfg,
        "preprocess",
        elems={"var": var, "obsm/X_pca": result.pca, "varm/PCs": loadings, "uns/pca": pca},
    )
    ratio = float(np.sum(result.variance_ratio))
    return (
        f"preprocess: {int(var['highly_variable'].sum())} HVGs, {result.pca.shape[1]} PCs "
        f"({ratio:.1%} of variance) in {sum(result.seconds.values()):.1f} s"
    )


def qc_summary_table(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(Path(workdir) / "qc" / "summary.csv")


SCVI_MODEL = Path("models") / "scvi"  # in the workdir


def run_integrate(cfg: RunConfig, client: Client) -> str:
    """Reads only its inputs while it computes (the rest of the cohort afterwards)."""
    c = cfg.integrate
    workdir = Path(cfg.workdir)
    path = workdir / COHORT_STORE
    columns = list(dict.fromkeys(["qc_pass", "sample_id", c.batch_key]))
    obs = read_obs_columns(path, columns, needs="run the qc stage first")
    group = zarr.open_group(str(path), mode="r")
    obsm = group["obsm"]
    assert isinstance(obsm, zarr.Group)
    if "X_pca" not in obsm:
        msg = f"{path} has no obsm X_pca: run the preprocess stage first"
        raise ImmunoprofileError(msg)
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    batch = obs[c.batch_key].astype(str).to_numpy()
    other: dict[str, np.ndarray] = {}
    scvi_info: dict[str, Any] = {}
    if c.method in ("scvi", "both"):
        (workdir / SCVI_MODEL).parent.mkdir(exist_ok=True)
        result_scvi = scvi_cohort(
            open_cohort(workdir, chunk_cells=cfg.ingest.chunk_cells),
            client=client,
            keep=keep,
            batch=batch,
            hvg=np.flatnonzero(ad.io.read_elem(group["var"])["highly_variable"].to_numpy()),
            model_dir=workdir / SCVI_MODEL,
            max_cells=c.scvi_max_cells,
            n_latent=c.scvi_n_latent,
            max_epochs=c.scvi_max_epochs,
            batch_size=c.scvi_batch_size,
            seed=c.seed,
        )
        other["X_scvi"] = result_scvi.latent
        scvi_info = {
            "model_dir": str(SCVI_MODEL),
            "n_cells_trained": result_scvi.training.n_cells,
            "n_epochs": result_scvi.training.n_epochs,
            "history": {k: np.asarray(v) for k, v in result_scvi.training.history.items()},
            "seconds": result_scvi.seconds,
        }
    result = integrate_cohort(
        np.asarray(ad.io.read_elem(obsm["X_pca"])),
        keep,
        batch,
        harmony=c.method in ("harmony", "both"),
        other=other,
        theta=c.harmony_theta,
        max_iter=c.harmony_max_iter,
        max_cells=c.harmony_max_cells,
        sample=obs["sample_id"].astype(str).to_numpy(),
        metrics_max_cells=c.metrics_max_cells,
        seed=c.seed,
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
    embeddings = {f"obsm/{k}": v for k, v in result.embeddings.items()}
    update_cohort(cfg, "integrate", elems={**embeddings, "uns/integrate": record})
    mixing = ", ".join(f"{k} {m['ilisi']:.2f}" for k, m in result.metrics.items())
    return f"integrate: {c.method} on {int(keep.sum()):,} cells by {c.batch_key}; iLISI {mixing}"


def run_graph(cfg: RunConfig, client: Client) -> str:
    """In the driver; Leiden on a worker (its graph scattered, not sent inside the task)."""
    g = cfg.graph
    path = Path(cfg.workdir) / COHORT_STORE
    obsm = zarr.open_group(str(path), mode="r")["obsm"]
    assert isinstance(obsm, zarr.Group)
    if g.use_rep not in obsm:
        msg = (
            f"graph.use_rep is {g.use_rep}, which the integrate stage did not compute "
            f"(integrate.method is {cfg.integrate.method}; cohort.zarr has {sorted(obsm)})"
        )
        raise ImmunoprofileError(msg)
    # only the inputs (the kept cells' embedding, two obs columns); writes only the results
    obs = read_obs_columns(path, ["qc_pass", "sample_id"], needs="the qc stage")
    embedding = obsm[g.use_rep]
    assert isinstance(embedding, zarr.Array)
    result = build_graph(
        embedding,
        obs["qc_pass"].to_numpy(dtype=bool),
        obs["sample_id"].astype(str).to_numpy(),
        n_neighbors=g.n_neighbors,
        resolutions=tuple(g.resolutions),
        umap_max_cells=g.umap_max_cells,
        leiden_max_cells=g.leiden_max_cells,
        exact_below=g.exact_knn_below,
        seed=g.seed,
        submit=lambda f, graph, *a: client.submit(f, client.scatter(graph), *a, pure=False),
    )
    del obs
    release_memory()
    clusters = {}
    for r, labels in result.clusters.items():
        names = [str(i) for i in range(int(labels.max()) + 1)]
        clusters[f"leiden_{r:g}"] = pd.Categorical.from_codes(labels, categories=names)
    neighbors = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": {
            "n_neighbors": g.n_neighbors,
            "method": "umap",
            "metric": "euclidean",
            "use_rep": g.use_rep,
        },
    }
    record = {"params": g.model_dump(mode="json"), "seconds": result.seconds, **result.info}
    update_cohort(
        cfg,
        "graph",
        obs=pd.DataFrame(clusters),
        elems={
            "obsp/distances": result.distances,
            "obsp/connectivities": result.connectivities,
            "obsm/X_umap": result.umap,
            "uns/neighbors": neighbors,
            "uns/graph": record,
        },
    )
    counts = ", ".join(
        f"{len(np.unique(v[v >= 0]))} clusters at {r:g}" for r, v in result.clusters.items()
    )
    sec = result.seconds
    steps = sec["neighbors"] + sec["umap"] + sec.get("leiden_wait", sec["leiden"])
    return f"graph: {g.n_neighbors}-NN graph on {g.use_rep}, {counts}, in {steps:.1f} s"

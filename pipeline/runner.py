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
from .preprocess import Moments, preprocess_cohort
from .qc import QCRules, compute_qc
from .store import read_manifest, write_anndata_store

COHORT_STORE = "cohort.zarr"
MOMENT_SUM = "qc_counts_sum"  # varm: genes x samples, raw counts summed over kept cells
MOMENT_SUMSQ = "qc_counts_sumsq"  # the same for squared counts


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
        cohort.obs,
        cohort.var,
        client=client,
        stores=stores,
        rules=rules,
        doublets=q.doublets,
        expected_doublet_rate=q.expected_doublet_rate,
        doublet_mean_center=q.doublet_mean_center,
        doublet_sim_scored_fraction=q.doublet_sim_scored_fraction,
        seed=q.seed,
        uniform_genes=bool(cohort.uns["uniform_genes"]),
    )
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
    _write_cohort(cfg, out, ["ingest", "qc"])
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
        moments=batch_moments_from_qc(previous, p.hvg_batch_key),
    )
    # a re-run replaces the previous preprocess outputs
    var = previous.var.drop(columns=list(result.var.columns), errors="ignore").join(result.var)
    out = ad.AnnData(obs=previous.obs, var=var, varm=dict(previous.varm), uns=dict(previous.uns))
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

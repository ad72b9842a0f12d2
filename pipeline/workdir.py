"""The workdir's cohort store: what each stage wrote, from what, and how to rewrite it.

Each stage records a digest of what it was computed from (the previous stage's digest and
its own parameters) in ``cohort.zarr``'s manifest; a re-run skips a stage whose digest is
unchanged. A stage clears its own and every later stage's outputs before it writes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import anndata as ad
import pandas as pd

from . import __version__
from .annotate import load_markers
from .config import RunConfig
from .errors import ImmunoprofileError
from .ingest import STAGE_RECORD
from .store import obs_columns, read_manifest, update_anndata_store, write_anndata_store

COHORT_STORE = "cohort.zarr"
ABUNDANCE_DIR = "abundance"  # its own folder and manifest: it adds nothing to cohort.zarr
ABUNDANCE_MANIFEST = "manifest.json"
REPORT_DIR = "report"  # its own folder and manifest, like abundance
REPORT_MANIFEST = "manifest.json"
BATCHES_DIR = "batches"  # add-batch: one folder per batch of new samples
BATCH_CELLS = "cells.zarr"  # in a batch's folder: its cells' per-cell results
MOMENT_SUM = "qc_counts_sum"  # varm: genes x samples, raw counts summed over kept cells
MOMENT_SUMSQ = "qc_counts_sumsq"  # the same for squared counts


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# A stage's algorithm version: bump it when the stage's results change for the same
# inputs and parameters (a new rule or method), so that workdirs computed before re-run
# it and the stages after it. qc 2: the top-20 rule on non-immunoglobulin genes.
# preprocess 2 and integrate 2: record what add-batch maps new cells with (the PCA
# centre; Harmony's reference compression).
STAGE_VERSIONS: dict[str, int] = {
    "qc": 2,
    "preprocess": 2,
    "integrate": 4,
    "graph": 2,
    "annotate": 2,
    "abundance": 1,
    "report": 1,
}


def stage_digests(cfg: RunConfig) -> dict[str, str]:
    """What each stage's outputs depend on, as a chain of digests: the previous stage's
    digest, the stage's parameters and its algorithm version."""
    record = Path(cfg.workdir) / STAGE_RECORD
    if not record.exists():
        msg = f"{cfg.workdir} has no {STAGE_RECORD}: run the ingest stage first"
        raise ImmunoprofileError(msg)
    digests = {"ingest": hashlib.sha256(record.read_bytes()).hexdigest()}
    params: dict[str, Any] = {
        "qc": cfg.qc.model_dump(mode="json"),
        "preprocess": cfg.preprocess.model_dump(mode="json"),
        "integrate": cfg.integrate.model_dump(mode="json"),
        "graph": cfg.graph.model_dump(mode="json"),
        "annotate": _annotate_inputs(cfg),
        "abundance": {
            "params": cfg.abundance.model_dump(mode="json"),
            "batches": {k: v["digest"] for k, v in batch_layers(cfg.workdir).items()},
        },
        "report": {},
    }
    before = "ingest"
    for stage, values in params.items():
        digests[stage] = _sha(
            {before: digests[before], stage: values, "version": STAGE_VERSIONS[stage]}
        )
        before = stage
    return digests


def batch_layers(workdir: str | Path) -> dict[str, dict[str, Any]]:
    """Name -> manifest of every complete batch added by add-batch, by name."""
    folder = Path(workdir) / BATCHES_DIR
    out = {}
    for store in sorted(folder.glob(f"*/{BATCH_CELLS}")):
        manifest = read_manifest(store)
        if manifest is not None:
            out[store.parent.name] = manifest
    return out


def _annotate_inputs(cfg: RunConfig) -> dict[str, Any]:
    """The annotate parameters plus what its files contain (marker file hash; the
    reference's size and modification time)."""
    a = cfg.annotate
    reference = None
    if a.reference is not None:
        path = Path(a.reference.path)
        stat = path.stat() if path.exists() else None
        reference = [str(path), stat.st_size, stat.st_mtime_ns] if stat else [str(path)]
    return {
        "params": a.model_dump(mode="json"),
        "markers_sha256": load_markers(a.markers).sha256,
        "reference": reference,
    }


# What each stage adds to cohort.zarr besides the obs columns that qc rebuilds. A stage
# clears its own previous outputs and every later stage's before it writes (they were
# computed from what it replaces).
STAGE_ORDER = ("ingest", "qc", "preprocess", "integrate", "graph", "annotate")
STAGE_OUTPUTS: dict[str, dict[str, list[str]]] = {
    "preprocess": {"obsm": ["X_pca"], "varm": ["PCs"], "uns": ["pca"]},
    "integrate": {"obsm": ["X_pca_harmony", "X_scvi"], "uns": ["integrate"]},
    "graph": {
        "obsm": ["X_umap"],
        "obsp": ["distances", "connectivities"],
        "uns": ["graph", "neighbors"],
        "obs_prefix": ["leiden_"],
    },
    "annotate": {"uns": ["annotate"], "obs_prefix": ["lineage", "b_subset"]},
}


SLOTS = ("obsm", "varm", "obsp", "uns")


def done_stages(cfg: RunConfig) -> dict[str, str]:
    """Stage -> the digest it was computed with, for the stages whose outputs are there."""
    manifest = read_manifest(Path(cfg.workdir) / COHORT_STORE)
    done = dict(manifest.get("stages", {})) if manifest else {}
    abundance = Path(cfg.workdir) / ABUNDANCE_DIR / ABUNDANCE_MANIFEST
    if abundance.exists():
        done["abundance"] = json.loads(abundance.read_text()).get("digest", "")
    report = Path(cfg.workdir) / REPORT_DIR / REPORT_MANIFEST
    if report.exists():
        done["report"] = json.loads(report.read_text()).get("digest", "")
    return done


# Files a stage writes into the workdir besides cohort.zarr: when one is gone, the stage
# counts as not done and runs again (re-creating it).
STAGE_FILES: dict[str, list[str]] = {
    "qc": ["qc/summary.csv"],
    "annotate": ["annotate/markers_used.yaml"],
    "report": ["report/index.html"],
}


def is_current(cfg: RunConfig, stage: str) -> bool:
    """The stage's recorded digest equals the one computed now and its files exist."""
    files = [Path(cfg.workdir) / f for f in STAGE_FILES.get(stage, [])]
    if not all(f.exists() for f in files):
        return False
    return done_stages(cfg).get(stage) == stage_digests(cfg)[stage]


def _cohort_info(cfg: RunConfig, stage: str, n_obs: int, n_vars: int) -> dict[str, Any]:
    digests = stage_digests(cfg)
    stages = STAGE_ORDER[: STAGE_ORDER.index(stage) + 1]
    return {
        "kind": "cohort",
        "immunoprofile_version": __version__,
        "stages": {s: digests[s] for s in stages},
        "n_obs": n_obs,
        "n_vars": n_vars,
    }


def write_cohort(cfg: RunConfig, adata: ad.AnnData, stage: str) -> None:
    """Write cohort.zarr whole, as computed by the stages up to ``stage``."""
    info = _cohort_info(cfg, stage, int(adata.n_obs), int(adata.n_vars))
    write_anndata_store(Path(cfg.workdir) / COHORT_STORE, adata, info)
    _remove_stale_results(cfg)


def update_cohort(
    cfg: RunConfig,
    stage: str,
    *,
    obs: pd.DataFrame | None = None,
    elems: dict[str, Any] | None = None,
) -> None:
    """Replace the outputs of ``stage`` (and clear every later stage's) in cohort.zarr
    without reading the rest: new obs columns ``obs`` and elements ``elems`` (keys
    ``"<slot>/<name>"`` or ``"var"``; see `update_anndata_store`)."""
    path = Path(cfg.workdir) / COHORT_STORE
    manifest = read_manifest(path)
    if manifest is None:
        msg = f"{path} has no readable manifest: run the qc stage first"
        raise ImmunoprofileError(msg)
    remove: list[str] = []
    columns = obs_columns(path)
    for later in STAGE_ORDER[STAGE_ORDER.index(stage) :]:
        outputs = STAGE_OUTPUTS.get(later, {})
        remove += [f"{slot}/{key}" for slot in SLOTS for key in outputs.get(slot, [])]
        for prefix in outputs.get("obs_prefix", []):
            remove += [f"obs/{c}" for c in columns if str(c).startswith(prefix)]
    info = _cohort_info(cfg, stage, int(manifest["n_obs"]), int(manifest["n_vars"]))
    update_anndata_store(path, info, remove=remove, obs=obs, elems=elems)
    _remove_stale_results(cfg)


def _remove_stale_results(cfg: RunConfig) -> None:
    # the abundance results and the report were computed from the labels just replaced
    for folder in (ABUNDANCE_DIR, REPORT_DIR):
        stale = Path(cfg.workdir) / folder
        if stale.exists():
            shutil.rmtree(stale)

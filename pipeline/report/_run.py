"""The report stage: ``WORKDIR/report/index.html``, one self-contained page: the key
findings in words first, then QC, integration, annotation, abundance, expression,
prediction, (after add-batch) what each batch changed, and the provenance last, collapsed.

Reads only per-cell outputs (obs, UMAP), the stage files and logs; written under a
temporary name with a manifest holding the stage digest.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import __version__
from ..integrate import integration_metrics
from ..results import leiden_columns
from . import _figures as figs
from . import _sections as sections
from ._html import page

if TYPE_CHECKING:
    from ..stages import StageContext

OBS = [
    "sample_id",
    "patient_id",
    "timepoint_months",
    "response",
    "batch",
    "qc_pass",
    "total_counts",
    "n_genes_by_counts",
    "pct_counts_mt",
    "lineage",
    "lineage_confidence",
    "b_subset",
    "b_subset_confidence",
]
# cells the report's metrics are computed on: the silhouettes are quadratic (20,000 cells
# took 25 s per embedding at 1M, 5,000 took 1.8 s)
METRIC_CELLS = 5_000
EMBEDDINGS = ("X_pca", "X_pca_harmony", "X_scvi")
B_UMAP_CELLS = 10_000  # B cells in the report's UMAP of B cells alone


def integration_metrics_table(ctx: StageContext) -> pd.DataFrame:
    """Batch mixing and lineage conservation of every embedding of cohort.zarr's kept,
    annotated cells (one subsample of `METRIC_CELLS`, the rows `integration_metrics`
    would draw, and only those read from the store)."""
    c = ctx.cfg.integrate
    obs = ctx.read_obs(["qc_pass", "lineage", "batch"])
    keep = obs["qc_pass"].to_numpy(dtype=bool) & obs["lineage"].notna().to_numpy()
    kept = np.flatnonzero(keep)
    max_cells = min(METRIC_CELLS, c.metrics_max_cells)
    chosen = np.arange(kept.size)
    if kept.size > max_cells:  # as integration_metrics draws among the rows it is given
        chosen = np.sort(np.random.default_rng(c.seed).choice(kept.size, max_cells, replace=False))
    rows_read = kept[chosen]  # text for these cells only, not for every cell
    batch = obs[c.batch_key if c.batch_key in obs else "batch"].iloc[rows_read].astype(str)
    lineage = obs["lineage"].iloc[rows_read].astype(str)
    del obs
    rows = []
    for key in EMBEDDINGS:
        if ctx.has(f"obsm/{key}"):
            m = integration_metrics(
                ctx.read_rows(f"obsm/{key}", rows_read),
                batch.to_numpy(),
                lineage.to_numpy(),
                max_cells=max_cells,
                seed=c.seed,
            )
            rows.append({"embedding": key, **m})
    return pd.DataFrame(rows)


def b_cell_umap(ctx: StageContext, obs: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """A UMAP of the cohort's QC-passed B cells alone (at most `B_UMAP_CELLS`, sampled),
    from their integrated embedding, and their obs rows."""
    n_cohort = int(ctx.array("obsm/X_umap").shape[0])
    head = obs.iloc[:n_cohort]
    is_b = (head["lineage"] == "B").to_numpy(dtype=bool) & head["qc_pass"].to_numpy(bool)
    rows = np.flatnonzero(is_b)
    if rows.size > B_UMAP_CELLS:
        rows = np.sort(np.random.default_rng(0).choice(rows, B_UMAP_CELLS, replace=False))
    key = next((k for k in ("X_pca_harmony", "X_scvi", "X_pca") if ctx.has(f"obsm/{k}")), None)
    if key is None or rows.size == 0:
        return np.zeros((0, 2)), head.iloc[:0]
    embedding = ctx.read_rows(f"obsm/{key}", rows)
    return figs.own_umap(embedding), head.iloc[rows].reset_index(drop=True)


def run_report(ctx: StageContext) -> str:
    """Write ``WORKDIR/report/index.html``; one summary line."""
    start = time.perf_counter()
    workdir = ctx.workdir
    present = set(ctx.obs_columns())
    columns = [c for c in [*OBS, *leiden_columns(present)] if c in present]
    obs = ctx.read_obs(columns, batches=True).reset_index(drop=True)
    umap = ctx.read_obsm("X_umap", batches=True)
    samples = [str(s) for s in pd.unique(obs["sample_id"])]  # in order, no per-cell text
    method = ctx.read_elem("uns/integrate").get("method")
    parts = [
        ("findings", "Key findings",
         sections.findings_section(workdir, obs, sections.qc_flagged(workdir))),
        ("qc", "Quality control", sections.qc_section(workdir, obs)),
        (
            "integration",
            "Integration",
            sections.integration_section(method, integration_metrics_table(ctx), obs, umap),
        ),
        ("annotation", "Annotation",
         sections.annotation_section(workdir, obs, umap, b_cell_umap(ctx, obs))),
        ("abundance", "Abundance", sections.abundance_section(workdir)),
        ("neighbourhoods", "Neighbourhoods (label-free abundance)",
         sections.neighbourhoods_section(workdir, umap)),
        ("expression", "Differential expression", sections.expression_section(workdir)),
        ("prediction", "Prediction of non-response", sections.prediction_section(workdir)),
    ]  # fmt: skip
    changes = sections.changes_section(workdir)
    if changes:
        parts.append(("changes", "What changed (added batches)", changes))
    parts.append(("provenance", "Provenance",
                  sections.provenance_section(ctx.cfg, workdir, samples)))  # fmt: skip
    subtitle = (
        f"{len(samples)} samples, {len(obs):,} cells; immunoprofile {__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    text = page("immunoprofile report", subtitle, parts)
    with ctx.stage_folder() as (out, _):
        out.index.write_text(text)
    size = len(text.encode()) / 2**20
    return (
        f"report: {workdir.report.index} ({size:.1f} MiB, "
        f"{len(parts)} sections) in {time.perf_counter() - start:.1f} s"
    )

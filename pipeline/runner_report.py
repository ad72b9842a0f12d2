"""The report stage: ``WORKDIR/report/index.html``, one self-contained page of the run,
its QC, integration, annotation, abundance and (after add-batch) what each batch changed.

Reads only per-cell outputs (obs, UMAP), the stage files and logs; written under a
temporary name with a manifest holding the stage digest.
"""

from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import yaml
import zarr

from . import __version__
from .batches import batch_store, result_stores
from .config import RunConfig
from .ingest import sample_store_path
from .integrate import integration_metrics
from .report import _figures as figs
from .report._html import esc, figure, page, png_file, table
from .stagelog import LOG_FILE
from .store import atomic_path, read_manifest
from .workdir import ABUNDANCE_DIR, REPORT_DIR, REPORT_MANIFEST, batch_layers, stage_digests

PACKAGES = (
    "dask",
    "distributed",
    "zarr",
    "anndata",
    "scanpy",
    "scvi-tools",
    "harmonypy",
    "numpy",
    "pandas",
    "scipy",
    "statsmodels",
    "umap-learn",
    "pynndescent",
    "igraph",
    "faiss-cpu",
    "torch",
    "xarray",
)
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


def _cells(workdir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """obs columns and UMAP of every cell (cohort, then each batch), nothing else."""
    frames, umaps = [], []
    for path in result_stores(workdir):
        group = zarr.open_group(str(path), mode="r")
        obs_group = group["obs"]
        assert isinstance(obs_group, zarr.Group)
        leiden = sorted(
            (str(c) for c in obs_group if str(c).startswith("leiden_")),
            key=lambda c: float(c.removeprefix("leiden_")),
        )
        cols = [c for c in [*OBS, *leiden] if c in obs_group]
        frames.append(pd.DataFrame({c: ad.io.read_elem(obs_group[c]) for c in cols}))
        umaps.append(np.asarray(ad.io.read_elem(group["obsm/X_umap"])))
    obs = pd.concat(frames, ignore_index=True)
    return obs, np.vstack(umaps)


def _versions() -> pd.DataFrame:
    rows = [("immunoprofile", __version__)]
    for name in PACKAGES:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    return pd.DataFrame(rows, columns=["package", "version"])


def _inputs(workdir: Path, samples: list[str]) -> pd.DataFrame:
    rows = []
    for sid in samples:
        manifest = read_manifest(sample_store_path(workdir, sid)) or {}
        inputs = manifest.get("inputs", {})
        digests = inputs.get("sha256", {})
        rows.append(
            {
                "sample_id": sid,
                "input": inputs.get("path", ""),
                "sha256": "; ".join(f"{k}: {v[:16]}" for k, v in digests.items()),
            }
        )
    return pd.DataFrame(rows)


def _stage_table(workdir: Path) -> pd.DataFrame:
    path = workdir / LOG_FILE
    if not path.exists():
        return pd.DataFrame()
    last: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        last[entry["stage"]] = entry
    return pd.DataFrame(
        [
            {
                "stage": s,
                "status": e.get("status"),
                "started": e.get("started"),
                "seconds": e.get("seconds"),
                "driver peak GiB": e.get("driver_peak_rss_gib"),
                "workers peak GiB (sum)": e.get("peak_workers_total_gib"),
            }
            for s, e in last.items()
        ]
    )


def _qc_flags(summary: pd.DataFrame) -> pd.Series:
    """Samples whose kept fraction is below half or > 3 MADs below the median."""
    kept = summary["fraction_kept"].astype(float)
    mad = 1.4826 * (kept - kept.median()).abs().median()
    return (kept < 0.5) | (kept < kept.median() - 3 * max(mad, 0.01))


def _run_section(cfg: RunConfig, workdir: Path, samples: list[str]) -> str:
    stages = _stage_table(workdir)
    parts = [
        "<h3>Stages: duration and peak memory</h3>",
        table(stages) if len(stages) else "<p>No stage log.</p>",
        "<h3>Cluster</h3>",
        f"<pre>{esc(yaml.safe_dump(cfg.cluster.model_dump(mode='json'), sort_keys=False))}</pre>",
        "<h3>Package versions</h3>",
        table(_versions()),
        "<h3>Inputs (SHA-256, first 16 hex digits)</h3>",
        table(_inputs(workdir, samples), scroll=True, left=3),
        "<h3>Configuration</h3>",
        f"<pre>{esc(yaml.safe_dump(cfg.model_dump(mode='json'), sort_keys=False))}</pre>",
    ]
    return "".join(parts)


def _qc_section(workdir: Path, obs: pd.DataFrame) -> str:
    frames = [pd.read_csv(workdir / "qc" / "summary.csv")]
    frames += [
        pd.read_csv(batch_store(workdir, n).parent / "qc_summary.csv")
        for n in batch_layers(workdir)
    ]
    summary = pd.concat(frames, ignore_index=True)
    flagged = summary.loc[_qc_flags(summary), "sample_id"].tolist()
    note = (
        f'<p class="flag">Flagged (share of cells kept far below the others): '
        f"{esc(', '.join(flagged))}</p>"
        if flagged
        else "<p>No sample flagged (share of cells kept below half or more than 3 MADs below "
        "the median).</p>"
    )
    kept = int(obs["qc_pass"].sum())
    return (
        f"<p>{kept:,} of {len(obs):,} cells pass QC ({kept / len(obs):.1%}).</p>{note}"
        + table(summary, scroll=True)
        + figure(figs.qc_distributions(obs), "Per sample: kept (blue) and removed (red) cells")
    )


# cells the report's metrics are computed on: the silhouettes are quadratic (20,000 cells
# took 25 s per embedding at 1M, 5,000 took 1.8 s)
METRIC_CELLS = 5_000


def _integration_metrics(workdir: Path, cfg: RunConfig) -> pd.DataFrame:
    """Batch mixing and lineage conservation of every embedding of cohort.zarr's kept,
    annotated cells (one subsample of `METRIC_CELLS`)."""
    group = zarr.open_group(str(workdir / "cohort.zarr"), mode="r")
    obs = {c: ad.io.read_elem(group[f"obs/{c}"]) for c in ("qc_pass", "lineage", "batch")}
    keep = np.asarray(obs["qc_pass"], dtype=bool) & pd.notna(obs["lineage"])
    batch = np.asarray(
        obs[cfg.integrate.batch_key] if cfg.integrate.batch_key in obs else obs["batch"]
    ).astype(str)[keep]
    lineage = np.asarray(obs["lineage"]).astype(str)[keep]
    rows = []
    for key in ("X_pca", "X_pca_harmony", "X_scvi"):
        if f"obsm/{key}" in group:
            emb = np.asarray(ad.io.read_elem(group[f"obsm/{key}"]))[keep]
            m = integration_metrics(
                emb,
                batch,
                lineage,
                max_cells=min(METRIC_CELLS, cfg.integrate.metrics_max_cells),
                seed=cfg.integrate.seed,
            )
            rows.append({"embedding": key, **m})
    return pd.DataFrame(rows)


def _integration_section(cfg: RunConfig, workdir: Path, obs: pd.DataFrame, umap: np.ndarray) -> str:
    uns = ad.io.read_elem(zarr.open_group(str(workdir / "cohort.zarr"), mode="r")["uns/integrate"])
    leiden = [c for c in obs if c.startswith("leiden_")]
    keys = ["batch", "patient_id", "timepoint_months", "response", *leiden[-1:]]
    return (
        f"<p>Method: {esc(uns.get('method'))}. Batch mixing (iLISI: 0 unmixed, 1 fully "
        "mixed; batch silhouette: 1 mixed) and conservation of the lineages the annotate "
        "stage called (cLISI: 1 each cell's neighbours share its lineage; lineage "
        "silhouette: higher is better separated), before (X_pca) and after integration, "
        "on one subsample of the cohort's cells:</p>"
        + table(_integration_metrics(workdir, cfg))
        + figure(
            figs.umap_panels(umap, obs, keys),
            "UMAP by batch, patient, timepoint, response and Leiden cluster",
        )
    )


def _annotation_section(workdir: Path, obs: pd.DataFrame, umap: np.ndarray) -> str:
    kept = obs["qc_pass"].to_numpy(dtype=bool)
    counts = obs.loc[kept, "lineage"].astype(str).value_counts().rename_axis("lineage")
    b = obs.loc[kept & (obs["lineage"].astype(str) == "B").to_numpy(), "b_subset"]
    subsets = b.astype(str).value_counts().rename_axis("B subset")
    parts = [
        figure(
            figs.umap_panels(umap, obs, ["lineage", "b_subset"], ncols=2),
            "UMAP by lineage and B-cell subset",
        ),
        "<div style='display:flex;gap:32px'>",
        table(counts.reset_index(name="cells")),
        table(subsets.reset_index(name="cells")),
        "</div>",
        figure(figs.confidence_histograms(obs), "Label confidence by label"),
    ]
    for level in ("lineage", "b_subset"):
        path = workdir / "annotate" / f"dotplot_{level}.png"
        if path.exists():
            parts.append(png_file(path, f"Marker features by {level.replace('_', ' ')}"))
    return "".join(parts)


def _abundance_section(workdir: Path) -> str:
    folder = workdir / ABUNDANCE_DIR
    summary = json.loads((folder / "summary.json").read_text())
    findings = summary.get("findings", [])
    parts = ["<h3>Baseline (predictive) finding</h3>"]
    parts += [f'<p class="finding">{esc(f)}</p>' for f in findings] or [
        "<p>No cell type differs between non-responders and responders at baseline "
        f"at q < {summary.get('alpha')} (GLMM).</p>"
    ]
    for name in summary.get("plots", []):
        parts.append(png_file(folder / name, name.removesuffix(".png").replace("_", " ")))
    tests = pd.read_csv(folder / "tests.csv").sort_values(["method", "qvalue"])
    parts += ["<h3>All contrasts (tests.csv)</h3>", table(tests, scroll=True, left=4)]
    return "".join(parts)


def _changes_section(workdir: Path) -> str:
    parts = []
    for name in batch_layers(workdir):
        path = batch_store(workdir, name).parent / "changes.json"
        if not path.exists():
            continue
        report = json.loads(path.read_text())
        samples = pd.DataFrame(report["samples"])
        moved = pd.DataFrame(report["moved"])
        flagged = report.get("flagged", [])
        parts += [
            f"<h3>Batch {esc(name)}</h3>",
            f"<p>{len(samples)} new samples, {int(samples['n_kept'].sum()):,} cells kept. "
            + (
                f'<span class="flag">Mapping poorly: {esc(", ".join(flagged))}</span>'
                if flagged
                else "Every sample maps well."
            )
            + "</p>",
            table(samples, scroll=True),
            "<p>Contrasts whose conclusion moved:</p>",
            table(moved, scroll=True, left=4) if len(moved) else "<p>None.</p>",
        ]
    return "".join(parts)


def run_report(cfg: RunConfig, client: Any = None) -> str:
    """Write ``WORKDIR/report/index.html``; one summary line."""
    start = time.perf_counter()
    workdir = Path(cfg.workdir)
    obs, umap = _cells(workdir)
    samples = list(dict.fromkeys(obs["sample_id"].astype(str)))
    sections = [
        ("run", "The run", _run_section(cfg, workdir, samples)),
        ("qc", "Quality control", _qc_section(workdir, obs)),
        ("integration", "Integration", _integration_section(cfg, workdir, obs, umap)),
        ("annotation", "Annotation", _annotation_section(workdir, obs, umap)),
        ("abundance", "Abundance", _abundance_section(workdir)),
    ]
    changes = _changes_section(workdir)
    if changes:
        sections.append(("changes", "What changed (added batches)", changes))
    subtitle = (
        f"{len(samples)} samples, {len(obs):,} cells; immunoprofile {__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}"
    )
    text = page("immunoprofile report", subtitle, sections)
    digest = stage_digests(cfg)["report"]
    with atomic_path(workdir / REPORT_DIR) as tmp:
        tmp.mkdir()
        (tmp / "index.html").write_text(text)
        manifest = {"kind": "report", "immunoprofile_version": __version__, "digest": digest}
        (tmp / REPORT_MANIFEST).write_text(json.dumps(manifest, indent=2))
    size = len(text.encode()) / 2**20
    return (
        f"report: {workdir / REPORT_DIR / 'index.html'} ({size:.1f} MiB, "
        f"{len(sections)} sections) in {time.perf_counter() - start:.1f} s"
    )

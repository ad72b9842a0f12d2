"""The abundance stage behind ``immunoprofile run``: per-cell labels in, the abundance
table, the models' contrasts, plots and a summary out (``WORKDIR/abundance/``).

The folder is built under a temporary name and renamed into place with its manifest
(the stage digest and every file's SHA-256), so a killed run leaves the previous
complete folder or none.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from distributed import Client

from . import __version__
from .abundance import (
    AbundanceDesignError,
    abundance_counts,
    composition_plot,
    concordance,
    counts_dataset,
    fit_abundance_models,
    forest_grid,
    trajectory_plot,
)
from .batches import cohort_obs
from .config import RunConfig
from .errors import ImmunoprofileError
from .store import atomic_path
from .workdir import ABUNDANCE_DIR, ABUNDANCE_MANIFEST, stage_digests

OBS_COLUMNS = ("sample_id", "patient_id", "timepoint_months", "response", "batch", "qc_pass",
               "lineage", "b_subset")  # fmt: skip


def read_labels(workdir: Path) -> pd.DataFrame:
    """The obs columns the abundance table needs, of cohort.zarr's cells and of every
    batch added since (`pipeline.batches`), without reading the rest."""
    needs = "run the stages up to annotate first"
    return cohort_obs(workdir, OBS_COLUMNS, needs=needs).reset_index(drop=True)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _plots(folder: Path, counts: pd.DataFrame, tests: pd.DataFrame) -> list[str]:
    made = []
    for level, denominator in (("b_subset", "B"), ("b_subset", "PBMC"), ("lineage", "PBMC")):
        name = f"trajectories_{level}_{denominator}.png"
        _save(trajectory_plot(counts, level=level, denominator=denominator), folder / name)
        made.append(name)
    for level in ("lineage", "b_subset"):
        _save(composition_plot(counts, level=level), folder / f"composition_{level}.png")
        made.append(f"composition_{level}.png")
    for denominator in sorted(set(tests["denominator"])):
        _save(forest_grid(tests, denominator=denominator), folder / f"forest_{denominator}.png")
        made.append(f"forest_{denominator}.png")
    return made


def _findings(tests: pd.DataFrame, alpha: float) -> list[str]:
    """One sentence per cell type whose baseline contrast (GLMM) has q < alpha."""
    base = tests[(tests["method"] == "glmm") & (tests["contrast"] == "response@month0")]
    out = []
    for row in base[base["qvalue"] < alpha].sort_values("qvalue").itertuples():
        direction = "higher" if row.estimate > 0 else "lower"
        out.append(
            f"Before treatment, {row.cell_type} (within {row.denominator}) is {direction} in "
            f"non-responders: odds ratio {np.exp(row.estimate):.2f} (95% CI "
            f"{np.exp(row.ci_low):.2f}-{np.exp(row.ci_high):.2f}), q = {row.qvalue:.2g}."
        )
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_abundance(cfg: RunConfig, client: Client | None = None) -> str:
    """Build the table, fit the models, write ``WORKDIR/abundance/``; one summary line."""
    a = cfg.abundance
    workdir = Path(cfg.workdir)
    counts = abundance_counts(read_labels(workdir))
    try:
        result = fit_abundance_models(
            counts, time=a.time, methods=tuple(a.methods), transform=a.transform
        )
    except AbundanceDesignError as err:
        raise ImmunoprofileError(f"abundance: {err}") from err
    tests = result.tests
    agree = concordance(tests, alpha=a.alpha) if len(a.methods) > 1 else pd.DataFrame()
    findings = _findings(tests, a.alpha)
    digest = stage_digests(cfg)["abundance"]
    with atomic_path(workdir / ABUNDANCE_DIR) as tmp:
        tmp.mkdir()
        counts.to_csv(tmp / "counts.csv", index=False)
        tests.to_csv(tmp / "tests.csv", index=False)
        result.fits.to_csv(tmp / "fits.csv", index=False)
        counts_dataset(counts).to_zarr(tmp / "counts.zarr", mode="w", zarr_format=2)
        plots = _plots(tmp, counts, tests)
        summary = {**result.summary, "alpha": a.alpha, "warnings": list(result.warnings),
                   "concordance": agree.to_dict(orient="records"), "findings": findings,
                   "plots": plots}  # fmt: skip
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "kind": "abundance",
            "immunoprofile_version": __version__,
            "digest": digest,
            "n_samples": int(counts["sample_id"].nunique()),
            "n_tests": len(tests),
            "files": {str(p.relative_to(tmp)): _sha256(p) for p in files},
        }
        (tmp / ABUNDANCE_MANIFEST).write_text(json.dumps(manifest, indent=2))
    for note in result.warnings:
        print(f"abundance: warning: {note}")
    excluded = result.summary["excluded_from_response_contrasts"]["patients"]
    lines = [
        f"abundance: {manifest['n_samples']} samples, {len(tests):,} tests "
        f"({', '.join(a.methods)}); {excluded} patients with unknown response left out of "
        f"the response contrasts; outputs in {workdir / ABUNDANCE_DIR}",
        *[f"  {f}" for f in findings],
    ]
    if not findings:
        lines.append(f"  no cell type differs at baseline at q < {a.alpha} (GLMM)")
    return "\n".join(lines)

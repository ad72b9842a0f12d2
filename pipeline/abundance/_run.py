"""The abundance stage in a workdir: per-cell labels in (cohort.zarr and every batch
layer), the abundance table, the models' contrasts, plots and a summary out
(``WORKDIR/abundance/``, built under a temporary name with its manifest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..config import RunConfig
from ..errors import ImmunoprofileError
from ..labels import DESIGN_COLUMNS
from ..workdir import Workdir
from ._design import AbundanceDesignError
from ._draws import fit_with_label_draws, label_probabilities
from ._models import concordance, fit_abundance_models
from ._plots import composition_plot, forest_grid, trajectory_plot
from ._table import abundance_counts, counts_dataset

if TYPE_CHECKING:
    from ..stages import StageContext

OBS_COLUMNS = (*DESIGN_COLUMNS, "qc_pass", "lineage", "b_subset")


def abundance_digest_inputs(cfg: RunConfig, workdir: Workdir) -> dict[str, Any]:
    """What the stage's results depend on besides its parameters: every batch layer."""
    layers = workdir.batch_layers()
    return {
        "params": cfg.abundance.model_dump(mode="json"),
        "batches": {name: layer.digest for name, layer in layers.items()},
    }


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


def baseline_findings(tests: pd.DataFrame, alpha: float) -> list[str]:
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


def _label_draws(ctx: StageContext, labels: pd.DataFrame, counts: pd.DataFrame):
    """The models over ``label_draws`` label sets drawn from the stored probabilities,
    pooled by Rubin's rules (`fit_with_label_draws`): the workers read the probabilities
    and draw, a task per block of cells; the driver holds the label and sample codes."""
    a = ctx.cfg.abundance
    prob = {
        level: label_probabilities(
            labels[level],
            ctx.lazy_obsm(f"{level}_probabilities", batches=True, missing_as_nan=True),
            level,
        )
        for level in ("lineage", "b_subset")
    }
    return fit_with_label_draws(
        labels, prob["lineage"], prob["b_subset"], hard_counts=counts,
        n_draws=a.label_draws, seed=a.seed,
        time=a.time, methods=tuple(a.methods), transform=a.transform, client=ctx.client,
    )  # fmt: skip


def _labels_used(a) -> str:
    if a.labels == "draws":
        return f"{a.label_draws} label draws pooled by Rubin's rules"
    return "hard labels"


def run_abundance(ctx: StageContext) -> str:
    """Build the table, fit the models (over label draws or on the hard labels), write
    ``WORKDIR/abundance/``; one summary line."""
    a = ctx.cfg.abundance
    labels = ctx.read_obs(OBS_COLUMNS, batches=True).reset_index(drop=True)
    counts = abundance_counts(labels)
    try:
        if a.labels == "draws":
            result = _label_draws(ctx, labels, counts)
        else:
            result = fit_abundance_models(
                counts, time=a.time, methods=tuple(a.methods), transform=a.transform
            )
    except AbundanceDesignError as err:
        raise ImmunoprofileError(f"abundance: {err}") from err
    del labels
    tests = result.tests
    agree = concordance(tests, alpha=a.alpha) if len(a.methods) > 1 else pd.DataFrame()
    findings = baseline_findings(tests, a.alpha)
    with ctx.stage_folder() as (out, manifest):
        counts.to_csv(out.counts, index=False)
        tests.to_csv(out.tests, index=False)
        result.fits.to_csv(out.fits, index=False)
        counts_dataset(counts).to_zarr(out.counts_zarr, mode="w", zarr_format=2)
        if result.uncertainty is not None:
            result.uncertainty.to_csv(out.label_uncertainty, index=False)
        plots = _plots(out.root, counts, tests)
        summary = {"labels": {"method": "hard"}, **result.summary, "alpha": a.alpha, "warnings": list(result.warnings),
                   "concordance": agree.to_dict(orient="records"), "findings": findings,
                   "plots": plots}  # fmt: skip
        out.summary.write_text(json.dumps(summary, indent=2, default=str))
        manifest.update(n_samples=int(counts["sample_id"].nunique()), n_tests=len(tests))
    for note in result.warnings:
        print(f"abundance: warning: {note}")
    excluded = result.summary["excluded_from_response_contrasts"]["patients"]
    lines = [
        f"abundance: {manifest['n_samples']} samples, {len(tests):,} tests "
        f"({', '.join(a.methods)}; {_labels_used(a)}); {excluded} patients with unknown response left out of "
        f"the response contrasts; outputs in {ctx.workdir.abundance.root}",
        *[f"  {f}" for f in findings],
    ]
    baseline = result.summary["not_estimable"].get("response@month0")
    if baseline:
        lines.append(f"  the baseline contrast is not estimable: {baseline}")
    elif not findings:
        lines.append(f"  no cell type differs at baseline at q < {a.alpha} (GLMM)")
    return "\n".join(lines)

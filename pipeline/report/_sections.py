"""The report's sections: each a function from the workdir's results to HTML.

The data the sections share (every cell's obs columns and UMAP position, cohort and
batches together) is read once by `run_report`; the rest each section reads from the
workdir's files through `pipeline.workdir.Workdir`.
"""

from __future__ import annotations

import json
from importlib import metadata
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import yaml

from .. import __version__
from ..config import RunConfig
from ..results import leiden_columns
from ..store import read_manifest
from ..workdir import ExpressionFiles, Workdir
from . import _figures as figs
from ._html import esc, figure, png_file, table

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


def _versions() -> pd.DataFrame:
    rows = [("immunoprofile", __version__)]
    for name in PACKAGES:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    return pd.DataFrame(rows, columns=["package", "version"])


def _inputs(workdir: Workdir, samples: list[str]) -> pd.DataFrame:
    rows = []
    for sid in samples:
        manifest = read_manifest(workdir.sample_store(sid)) or {}
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


def _stage_table(workdir: Workdir) -> pd.DataFrame:
    path = workdir.stage_log
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


def run_section(cfg: RunConfig, workdir: Workdir, samples: list[str]) -> str:
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


def qc_section(workdir: Workdir, obs: pd.DataFrame) -> str:
    frames = [pd.read_csv(workdir.qc_summary)]
    frames += [pd.read_csv(layer.files.qc_summary) for layer in workdir.batch_layers().values()]
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


def integration_section(
    method: object, metrics: pd.DataFrame, obs: pd.DataFrame, umap: np.ndarray
) -> str:
    leiden = leiden_columns(obs.columns)
    keys = ["batch", "patient_id", "timepoint_months", "response", *leiden[-1:]]
    return (
        f"<p>Method: {esc(method)}. Batch mixing (iLISI: 0 unmixed, 1 fully "
        "mixed; batch silhouette: 1 mixed) and conservation of the lineages the annotate "
        "stage called (cLISI: 1 each cell's neighbours share its lineage; lineage "
        "silhouette: higher is better separated), before (X_pca) and after integration, "
        "on one subsample of the cohort's cells:</p>"
        + table(metrics)
        + figure(
            figs.umap_panels(umap, obs, keys),
            "UMAP by batch, patient, timepoint, response and Leiden cluster",
        )
    )


def annotation_section(workdir: Workdir, obs: pd.DataFrame, umap: np.ndarray) -> str:
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
        path = workdir.annotate.dotplot_png(level)
        if path.exists():
            parts.append(png_file(path, f"Marker features by {level.replace('_', ' ')}"))
    return "".join(parts)


def abundance_section(workdir: Workdir) -> str:
    files = workdir.abundance
    summary = json.loads(files.summary.read_text())
    findings = summary.get("findings", [])
    parts = ["<h3>Baseline (predictive) finding</h3>"]
    lost = summary.get("not_estimable", {})
    if "response@month0" in lost:
        parts.append(
            f"<p>The baseline contrast is not estimable: {esc(lost['response@month0'])}.</p>"
        )
    else:
        parts += [f'<p class="finding">{esc(f)}</p>' for f in findings] or [
            "<p>No cell type differs between non-responders and responders at baseline "
            f"at q < {summary.get('alpha')} (GLMM).</p>"
        ]
    parts.append(_labels_used(summary, files.label_uncertainty))
    if lost:
        parts += [
            "<h3>Contrasts this design cannot estimate</h3>",
            "<p>These are NaN in tests.csv for every cell type; more samples or patients "
            "would make them estimable.</p>",
            table(pd.DataFrame({"contrast": list(lost), "why": list(lost.values())}), left=2),
        ]
    for name in summary.get("plots", []):
        parts.append(png_file(files.root / name, name.removesuffix(".png").replace("_", " ")))
    tests = pd.read_csv(files.tests).sort_values(["method", "qvalue"])
    parts += ["<h3>All contrasts (tests.csv)</h3>", table(tests, scroll=True, left=4)]
    return "".join(parts)


def _labels_used(summary: dict, uncertainty_csv: Path) -> str:
    """Which labels the models counted: hard calls, or draws from the label
    probabilities pooled by Rubin's rules (with how much the intervals widened)."""
    labels = summary.get("labels", {"method": "hard"})
    if labels.get("method") != "draws":
        return (
            "<h3>Labels counted</h3><p>Hard labels: every cell counts as its called label, "
            "however confident the call (<code>abundance.labels: hard</code>). Intervals do "
            "not include the annotation's uncertainty.</p>"
        )
    share = labels.get("relabelled_share", {})
    text = (
        f"<h3>Labels counted</h3><p>Label draws: the models were fitted on "
        f"{labels['label_draws']} label sets drawn from each cell's label probabilities "
        "and combined by Rubin's rules, so the intervals include the annotation's "
        "uncertainty (<code>abundance.labels: draws</code>). A draw relabels on average "
        f"{share.get('lineage', 0):.1%} of the lineage calls and "
        f"{share.get('b_subset', 0):.1%} of the B-subset calls.</p>"
    )
    if uncertainty_csv.exists():
        side = pd.read_csv(uncertainty_csv)
        side = side[side["method"] == "glmm"].nlargest(8, "fmi")
        if len(side):
            text += (
                "<p>The tests most affected by label uncertainty (GLMM; <code>fmi</code>: the "
                "share of the variance due to the labels; hard-label interval beside the "
                "pooled one; all in abundance/label_uncertainty.csv):</p>"
            )
            cols = ["cell_type", "denominator", "contrast", "estimate", "ci_low", "ci_high",
                    "estimate_hard", "ci_low_hard", "ci_high_hard", "fmi"]  # fmt: skip
            text += table(side[cols], left=3)
    return text


def expression_section(workdir: Workdir) -> str:
    """Differential expression: calls per cell type and contrast, the baseline genes,
    volcano plots, and what could not be tested or estimated."""
    from ..expression import volcano_grid

    files = workdir.expression
    if not files.summary.exists():
        return "<p>The expression stage has not run on this workdir.</p>"
    summary = json.loads(files.summary.read_text())
    alpha = float(summary.get("alpha", 0.05))
    de = pd.read_csv(files.de)
    tested = summary.get("cell_types_tested", [])
    parts = [
        f"<p>{len(tested)} cell types tested, {len(de):,} tests (DESeq2's negative-binomial "
        "GLM through PyDESeq2, pseudobulk per sample and cell type; q-values within each "
        "cell type and contrast). Fold changes are non-responders over responders for "
        "<code>response@month{t}</code>, month t over baseline for <code>time{t}@...</code>.</p>"
    ]
    if len(de):
        calls = (de.assign(hit=de["qvalue"] < alpha)
                 .pivot_table(index="cell_type", columns="contrast", values="hit",
                              aggfunc="sum", fill_value=0, sort=False)
                 .reindex(columns=list(dict.fromkeys(de["contrast"]))))  # fmt: skip
        parts += [f"<h3>Genes at q &lt; {alpha:g} per cell type and contrast</h3>",
                  table(calls.reset_index())]  # fmt: skip
        base = de[(de["contrast"] == "response@month0") & (de["qvalue"] < alpha)]
        parts.append("<h3>Before treatment: genes that differ between non-responders and "
                     "responders</h3>")  # fmt: skip
        if len(base):
            cols = ["cell_type", "gene", "log2fc", "lfc_se", "pvalue", "qvalue", "base_mean"]
            parts.append(table(base.nsmallest(30, "qvalue")[cols], left=2))
        else:
            parts.append(f"<p>No gene at q &lt; {alpha:g} in any tested cell type.</p>")
        contrasts = list(dict.fromkeys(de["contrast"]))
        later = [c for c in contrasts if c.startswith("time") and c.endswith("@responder")]
        for contrast in ["response@month0", *later[-1:]]:
            if contrast in contrasts:
                parts.append(figure(
                    volcano_grid(de, contrast=contrast, alpha=alpha),
                    f"{contrast}: each point a gene; orange at q < {alpha:g}. Look for "
                    "cell types with many coloured genes and for the named ones.",
                ))  # fmt: skip
        parts.append(_top_genes_figure(files, de, alpha))
    if files.program_tests.exists():
        programs = pd.read_csv(files.program_tests)
        found = summary.get("programs", {}).get("genes_found", {})
        parts += [
            "<h3>Gene programs</h3>",
            "<p>Per sample and cell type, a program's score is decoupler's ulm t-value of "
            "its genes' standardized log CPM; scores are tested with the abundance mixed "
            "model (patient random intercept). Genes found per program: "
            + esc(", ".join(f"{k} {v}" for k, v in found.items()))
            + " (programs with fewer than 5 genes found are not scored).</p>",
        ]
        if len(programs):
            parts.append(table(programs.sort_values("pvalue"), scroll=True, left=4))
            parts.append(_trajectories_figure(files, programs))
    skipped = pd.DataFrame(summary.get("cell_types_skipped", []))
    if len(skipped):
        parts += ["<h3>Cell types not tested</h3>", table(skipped, left=3)]
    lost = pd.read_csv(files.not_estimable) if files.not_estimable.exists() else pd.DataFrame()
    if len(lost):
        parts += ["<h3>Contrasts a cell type's design cannot estimate</h3>",
                  table(lost, left=4)]  # fmt: skip
    return "".join(parts)


def prediction_section(workdir: Workdir) -> str:
    """Prediction of non-response: the validated performance in words, the figure (ROC
    with band, calibration, coefficients, per-patient probabilities), the coefficients'
    stability and the predictions of patients the model was not trained on."""
    from ..predict import prediction_figure

    files = workdir.predict
    if not files.metrics.exists():
        return "<p>The predict stage has not run on this workdir.</p>"
    m = json.loads(files.metrics.read_text())
    if m.get("skipped"):
        return f"<p>Not fitted: {esc(m['skipped'])}.</p>"
    cv = m.get("cv", {})
    scheme = ("leave-one-out" if cv.get("scheme") == "leave_one_out"
              else f"{cv.get('folds')}-fold x {cv.get('repeats')} repeats")  # fmt: skip
    parts = [
        f'<p class="finding">Before the first dose, the {esc(m.get("model"))} model separates '
        f"{m['n_non_responder']} non-responders from {m['n_responder']} responders with an "
        f"out-of-fold AUC of {m['auc']:.2f} (95% interval {m['auc_ci_low']:.2f}-"
        f"{m['auc_ci_high']:.2f}; permutation p = {m['permutation_pvalue']:.3g} over "
        f"{m['n_permutations']:,} label shuffles; Brier score {m['brier']:.3f}).</p>",
        f"<p>Penalized logistic regression on {len(m['features'])} baseline features, "
        f"validated by patient-level nested cross-validation ({esc(scheme)}; scaling and "
        "the penalty chosen inside each training fold). An AUC of 0.5 is chance; the "
        "permutation p-value says how often shuffled labels do as well.</p>",
    ]
    patients = pd.read_csv(files.patients)
    coefficients = pd.read_csv(files.coefficients)
    parts.append(figure(
        prediction_figure(patients, m, coefficients),
        "Left to right: the out-of-fold ROC curve with its bootstrap band (look for the "
        "curve above the diagonal and the band clear of it); calibration (points near the "
        "diagonal mean the probabilities can be read as risks); the largest coefficients "
        "(orange, per sd of the feature) with the outer models' mean and sd (grey: a "
        "feature whose bar crosses 0 is unstable); each patient's out-of-fold probability "
        "by true response.",
    ))  # fmt: skip
    parts += ["<h3>Coefficients and their stability over the outer folds</h3>",
              table(coefficients, left=1)]  # fmt: skip
    dropped = m.get("dropped_features") or {}
    if dropped:
        parts += ["<h3>Features left out</h3>",
                  table(pd.DataFrame({"feature": list(dropped), "why": list(dropped.values())}),
                        left=2)]  # fmt: skip
    unknown = patients[patients["fold"].isna()]
    new = pd.read_csv(files.new_patients) if files.new_patients.exists() else pd.DataFrame()
    if len(unknown):
        parts += ["<h3>Cohort patients of unknown response</h3>",
                  table(unknown[["patient_id", "p_non_responder"]], left=1)]  # fmt: skip
    if len(new):
        parts += [
            "<h3>New patients (added batches)</h3>",
            "<p>The saved model's probability of non-response, the 2.5-97.5% range of "
            "the cross-validation models' probabilities, and flags (a poor mapping onto "
            "the cohort, features outside the training range).</p>",
            table(new.fillna({"flags": ""}), left=4),
        ]
    return "".join(parts)


def _top_genes_figure(files: ExpressionFiles, de: pd.DataFrame, alpha: float) -> str:
    """The heatmap of the baseline contrast's top genes in the cell type with the most
    calls for it (the smallest p-value when none is called)."""
    from ..expression import top_genes_heatmap

    base = de[(de["contrast"] == "response@month0") & de["pvalue"].notna()]
    if base.empty:
        return ""
    calls = base.assign(hit=base["qvalue"] < alpha).groupby("cell_type", sort=False)["hit"].sum()
    cell_type = (str(calls.idxmax()) if calls.max() > 0
                 else str(base.loc[base["pvalue"].idxmin(), "cell_type"]))  # fmt: skip
    pseudobulk = ad.read_zarr(files.pseudobulk)
    return figure(
        top_genes_heatmap(pseudobulk, de, cell_type=cell_type, contrast="response@month0"),
        f"The 30 genes with the smallest q-values before treatment in {esc(cell_type)} "
        f"({int(calls.max())} at q < {alpha:g}), one column per sample, responders first: "
        "look for blocks of colour that follow the group and whether they persist by month.",
    )


def _trajectories_figure(files: ExpressionFiles, programs: pd.DataFrame) -> str:
    """Per-patient program scores over time in the cell type of the smallest program p."""
    from ..expression import program_trajectories

    if not files.program_scores.exists() or programs["pvalue"].isna().all():
        return ""
    cell_type = str(programs.loc[programs["pvalue"].idxmin(), "cell_type"])
    scores = pd.read_csv(files.program_scores)
    samples = ad.read_zarr(files.pseudobulk).obs
    return figure(
        program_trajectories(scores, samples, cell_type=cell_type),
        f"Program scores in {esc(cell_type)} (the cell type of the smallest program p-value) "
        "per patient over the months, thin lines, with each group's mean: look for groups "
        "apart at month 0 and for lines that move together under treatment.",
    )


def changes_section(workdir: Workdir) -> str:
    parts = []
    for name, layer in workdir.batch_layers().items():
        path = layer.files.changes_json
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
        if layer.files.expression_changes.exists():
            genes = pd.read_csv(layer.files.expression_changes)
            counts = ", ".join(f"{n} {k}" for k, n in genes["change"].value_counts().items())
            parts.append(f"<p>Expression: {len(genes):,} gene calls moved"
                         f"{' (' + esc(counts) + ')' if counts else ''}.</p>")  # fmt: skip
            if len(genes):
                shown = genes.sort_values("qvalue_after").head(30)
                parts.append(table(shown, scroll=True, left=5))
    return "".join(parts)

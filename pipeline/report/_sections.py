"""The report's sections: each a function from the workdir's results to HTML.

The data the sections share (every cell's obs columns and UMAP position, cohort and
batches together) is read once by `run_report`; the rest each section reads from the
workdir's files through `pipeline.workdir.Workdir`.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import yaml
import zarr

from .. import __version__
from ..abundance import forest_grid
from ..config import RunConfig
from ..results import leiden_columns
from ..store import read_array_rows, read_manifest
from ..workdir import ExpressionFiles, NeighbourhoodsFiles, Workdir
from . import _figures as figs
from ._html import esc, figure, number, png_file, table

MAX_FINDINGS = 15  # abundance findings listed in words at the top
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


def provenance_section(cfg: RunConfig, workdir: Workdir, samples: list[str]) -> str:
    """What the run was computed from and with: collapsed, for whoever needs to check."""
    stages = _stage_table(workdir)
    parts = [
        "<details><summary>Stages, cluster, package versions, inputs and the whole "
        "configuration (click to open)</summary>",
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
        "</details>",
    ]
    return "".join(parts)


def _odds(row: Any) -> str:
    return (
        f"odds ratio {np.exp(row.estimate):.2f} (95% CI {np.exp(row.ci_low):.2f}-"
        f"{np.exp(row.ci_high):.2f}), q = {number(row.qvalue)}"
    )


def contrast_sentence(row: Any) -> str:
    """One abundance test (a row of tests.csv) in words."""
    where = f"{row.cell_type} (within {'B cells' if row.denominator == 'B' else 'PBMC'})"
    up = row.estimate > 0
    contrast = str(row.contrast)
    if m := re.fullmatch(r"response@month(\S+)", contrast):
        when = "Before treatment" if float(m[1]) == 0 else f"At month {m[1]}"
        text = f"{when}, {where} is {'higher' if up else 'lower'} in non-responders"
    elif m := re.fullmatch(r"time(\S+)@(responder|non_responder)", contrast):
        group = "responders" if m[2] == "responder" else "non-responders"
        text = f"From baseline to month {m[1]}, {where} {'rises' if up else 'falls'} in {group}"
    elif m := re.fullmatch(r"response:time(\S+)", contrast):
        text = (
            f"From baseline to month {m[1]}, {where} changes "
            f"{'more upwards' if up else 'more downwards'} in non-responders than in responders"
        )
    else:
        text = f"{where}, {contrast}: {'positive' if up else 'negative'}"
    return f"{text}: {_odds(row)}."


def findings_section(workdir: Workdir, obs: pd.DataFrame, qc_flagged: list[str]) -> str:
    """What the run found, in words, before any table: the abundance contrasts at
    q < alpha (GLMM), the two methods' concordance, the expression and prediction
    headlines, warnings, and the samples flagged by QC or by the mapping of a batch."""
    files = workdir.abundance
    summary = json.loads(files.summary.read_text())
    alpha = float(summary.get("alpha", 0.05))
    tests = pd.read_csv(files.tests)
    glmm = tests[(tests["method"] == "glmm") & (tests["qvalue"] < alpha)].sort_values("qvalue")
    parts = [f"<h3>Abundance: cell types that differ (GLMM, q &lt; {alpha:g})</h3>"]
    if len(glmm):
        shown = glmm.head(MAX_FINDINGS)
        items = "".join(f"<li>{esc(contrast_sentence(r))}</li>" for r in shown.itertuples())
        more = (f"<p>... and {len(glmm) - len(shown)} more in the abundance section.</p>"
                if len(glmm) > len(shown) else "")  # fmt: skip
        parts.append(f'<ul class="findings">{items}</ul>{more}')
    else:
        parts.append(f"<p>No cell type differs in any contrast at q &lt; {alpha:g}.</p>")
    lost = summary.get("not_estimable", {})
    if "response@month0" in lost:
        parts.append(
            f"<p class='flag'>The baseline contrast is not estimable: "
            f"{esc(lost['response@month0'])}.</p>"
        )
    agree = pd.DataFrame(summary.get("concordance", []))
    if len(agree):
        lines = [
            f"within {'B cells' if r.denominator == 'B' else 'PBMC'}, the estimates of "
            f"{r.n} cell type x contrast tests correlate at r = {r.pearson_r:.2f} and the two "
            f"make the same call at q &lt; {alpha:g} in {r.significance_agreement:.0%} "
            f"({r.significant_glmm} GLMM, {r.significant_propeller} propeller calls)"
            for r in agree.itertuples()
        ]
        parts.append("<p>The binomial GLMM and propeller (a linear mixed model of the "
                     "transformed proportions) agree: " + "; ".join(lines) + ".</p>")  # fmt: skip
    parts.append(neighbourhoods_headline(workdir))
    parts.append(_expression_headline(workdir, alpha))
    parts.append(_prediction_headline(workdir))
    notes = [str(w) for w in summary.get("warnings", [])]
    fits = pd.read_csv(files.fits) if files.fits.exists() else pd.DataFrame()
    if len(fits) and "converged" in fits:
        failed = fits[~fits["converged"].astype(bool)]
        if len(failed):
            notes.append(f"{len(failed)} of {len(fits)} model fits did not converge "
                         f"({', '.join(sorted(set(failed['cell_type'].astype(str))))}); "
                         "their rows in tests.csv are NaN or flagged in fits.csv")  # fmt: skip
    if notes:
        parts += ["<h3>Warnings</h3>",
                  "<ul>" + "".join(f"<li class='flag'>{esc(n)}</li>" for n in notes) + "</ul>"]  # fmt: skip
    flagged = [f"{esc(s)} (QC: few cells kept)" for s in qc_flagged]
    for name, layer in workdir.batch_layers().items():
        path = layer.files.changes_json
        if path.exists():
            for sample in json.loads(path.read_text()).get("flagged", []):
                flagged.append(f"{esc(sample)} (batch {esc(name)}: maps poorly onto the cohort)")
    parts += ["<h3>Samples flagged</h3>",
              f"<p class='flag'>{'; '.join(flagged)}</p>" if flagged
              else "<p>None: every sample passed QC's share-kept check and maps well.</p>"]  # fmt: skip
    return "".join(parts)


def _expression_headline(workdir: Workdir, alpha: float) -> str:
    files = workdir.expression
    if not files.de.exists():
        return ""
    de = pd.read_csv(files.de, usecols=["cell_type", "contrast", "qvalue"])
    base = de[(de["contrast"] == "response@month0") & (de["qvalue"] < alpha)]
    if base.empty:
        return (f"<p>Expression: no gene differs between non-responders and responders "
                f"before treatment at q &lt; {alpha:g} in any tested cell type.</p>")  # fmt: skip
    per = base["cell_type"].value_counts()
    listed = ", ".join(f"{n:,} in {esc(k)}" for k, n in per.head(6).items())
    return (f"<p>Expression: {len(base):,} genes differ between non-responders and "
            f"responders before treatment at q &lt; {alpha:g} ({listed}).</p>")  # fmt: skip


def _prediction_headline(workdir: Workdir) -> str:
    files = workdir.predict
    if not files.metrics.exists():
        return ""
    m = json.loads(files.metrics.read_text())
    if m.get("skipped"):
        return f"<p>Prediction of non-response: not fitted ({esc(m['skipped'])}).</p>"
    return (f"<p>Prediction of non-response before the first dose: out-of-fold AUC "
            f"{m['auc']:.2f} (95% interval {m['auc_ci_low']:.2f}-{m['auc_ci_high']:.2f}; "
            f"permutation p = {number(m['permutation_pvalue'])}).</p>")  # fmt: skip


def qc_summary(workdir: Workdir) -> pd.DataFrame:
    """qc/summary.csv of the cohort and of every added batch."""
    frames = [pd.read_csv(workdir.qc_summary)]
    frames += [pd.read_csv(layer.files.qc_summary) for layer in workdir.batch_layers().values()]
    return pd.concat(frames, ignore_index=True)


def qc_flagged(workdir: Workdir) -> list[str]:
    summary = qc_summary(workdir)
    return [str(s) for s in summary.loc[_qc_flags(summary), "sample_id"]]


def qc_section(workdir: Workdir, obs: pd.DataFrame) -> str:
    summary = qc_summary(workdir)
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
        + figure(
            figs.qc_distributions(obs),
            "Per sample: kept (blue) and removed (red) cells by counts, genes and "
            "mitochondrial share. Look for a sample whose kept cells sit apart from the others.",
        )
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
            "UMAP by batch, patient, timepoint, response and Leiden cluster. Look for "
            "batches and patients mixed within each island: an island of one batch alone "
            "is a batch effect left after integration.",
        )
    )


def annotation_section(
    workdir: Workdir, obs: pd.DataFrame, umap: np.ndarray, b_umap: tuple[np.ndarray, pd.DataFrame]
) -> str:
    kept = obs["qc_pass"].to_numpy(dtype=bool)
    counts = obs.loc[kept, "lineage"].astype(str).value_counts().rename_axis("lineage")
    b = obs.loc[kept & (obs["lineage"].astype(str) == "B").to_numpy(), "b_subset"]
    subsets = b.astype(str).value_counts().rename_axis("B subset")
    coords, b_obs = b_umap
    parts = [
        figure(
            figs.umap_panels(umap, obs, ["lineage", "b_subset"], ncols=2),
            "UMAP by lineage and B-cell subset. Look for one colour per island; the B "
            "subsets sit together in the B island (their own UMAP below).",
        ),
    ]
    if len(coords):
        parts.append(figure(
            figs.umap_panels(coords, b_obs, ["b_subset", "response"], ncols=2),
            f"The B cells alone ({len(coords):,} cells; a UMAP of their own integrated "
            "neighbourhoods), by subset and response. Look for each subset in a region of "
            "its own, DN2 apart from naive, and for subsets where one group's cells gather.",
        ))  # fmt: skip
    parts += [
        "<div style='display:flex;gap:32px'>",
        table(counts.reset_index(name="cells")),
        table(subsets.reset_index(name="cells")),
        "</div>",
        figure(
            figs.confidence_histograms(obs),
            "Label confidence by label: the probability of each cell's called label. Look "
            "for labels whose cells pile up near 1; a label with many cells near the "
            "min_confidence threshold is told apart from another by little evidence.",
        ),
    ]
    for level in ("lineage", "b_subset"):
        path = workdir.annotate.dotplot_png(level)
        if path.exists():
            parts.append(png_file(
                path,
                f"Marker features by {level.replace('_', ' ')}: dot size the share of cells "
                "expressing, colour the mean. Look for each label's own markers dark and "
                "large on its row, and for markers shared between labels.",
            ))  # fmt: skip
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
    tests = pd.read_csv(files.tests)
    for name in summary.get("plots", []):
        parts.append(png_file(files.root / name, _plot_caption(name)))
        if name.startswith("forest_") and "propeller" in set(tests["method"]):
            denominator = name.removeprefix("forest_").removesuffix(".png")
            parts.append(figure(
                forest_grid(tests, denominator=denominator, method="propeller"),
                f"The same contrasts by propeller (within {_within(denominator)}): its "
                "intervals should tell the same story as the GLMM's above.",
            ))  # fmt: skip
    tests = tests.sort_values(["method", "qvalue"])
    parts += ["<h3>All contrasts (tests.csv)</h3>", table(tests, scroll=True, left=4)]
    return "".join(parts)


def _nhood_groups_called(tests: pd.DataFrame, alpha: float) -> str:
    from ..neighbourhoods import nhood_groups

    called = tests[tests["spatial_fdr"] < alpha]
    if called.empty:
        return ""
    groups = nhood_groups(called).value_counts()
    return ", ".join(f"{n} {esc(g)}" for g, n in groups.items())


BASELINE = "response@month0"  # the neighbourhoods' contrast the report shows
NHOOD_ROWS_READ = 50_000  # rows of neighbourhoods/tests.csv parsed at a time


def _baseline_nhood_tests(files: NeighbourhoodsFiles) -> tuple[list[str], pd.DataFrame]:
    """The families of neighbourhoods in tests.csv, PBMC first (tests.csv of a stage
    version before 3 has no denominator: all PBMC), and its rows of the `BASELINE`
    contrast: read `NHOOD_ROWS_READ` rows at a time, since tests.csv has a row per
    neighbourhood, contrast and method and so grows with the cohort (213k rows, 59 MB,
    at a million cells: 138 MiB in memory read whole)."""
    families: dict[str, None] = {}
    parts = []
    with pd.read_csv(files.tests, chunksize=NHOOD_ROWS_READ) as reader:
        for block in reader:
            if "denominator" in block:
                families.update(dict.fromkeys(block["denominator"].astype(str)))
            parts.append(block[block["contrast"] == BASELINE])
    base = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    return list(families) or ["PBMC"], base


def _of(tests: pd.DataFrame, family: str) -> pd.DataFrame:
    return tests if "denominator" not in tests else tests[tests["denominator"] == family]


def _family_numbers(summary: dict, family: str) -> tuple[int, int, dict[str, int]]:
    """A family's neighbourhoods, their size and the calls per contrast (summary.json)."""
    if family == "PBMC":
        return summary["n_nhoods"], summary["k"], summary.get("called", {})
    lineage = summary["lineages"][family]
    return lineage["n_nhoods"], lineage["k"], lineage.get("called", {})


def neighbourhoods_headline(workdir: Workdir) -> str:
    """One sentence for the key findings: neighbourhoods that differ at baseline, of all
    cells and within each lineage."""
    files = workdir.neighbourhoods
    if not files.summary.exists():
        return ""
    summary = json.loads(files.summary.read_text())
    alpha = summary["alpha"]
    families, baseline = _baseline_nhood_tests(files)
    sentences = []
    for family in families:
        n_nhoods, _, called = _family_numbers(summary, family)
        n = called.get(BASELINE)
        if n is None:
            continue
        where = _nhood_groups_called(_of(baseline, family), alpha)
        scope = ("neighbourhoods of the kNN graph" if family == "PBMC" else
                 f"neighbourhoods of the {family} cells, out of each sample's {family} cells")  # fmt: skip
        sentences.append(f"{n} of {n_nhoods:,} {scope} differ at baseline at spatial FDR "
                         f"&lt; {alpha:g}" + (f" (by majority label: {where})" if where else ""))  # fmt: skip
    if not sentences:
        return ""
    return "<p>Label-free: " + "; ".join(sentences) + ".</p>"


def neighbourhoods_section(workdir: Workdir, umap: np.ndarray) -> str:
    """Label-free abundance: neighbourhoods called per contrast, and per family a
    beeswarm of the baseline estimates by majority label and the neighbourhoods on the
    UMAP."""
    from ..neighbourhoods import beeswarm_plot, nhood_umap_plot

    files = workdir.neighbourhoods
    if not files.summary.exists():
        return "<p>The neighbourhoods stage has not run on this workdir.</p>"
    summary = json.loads(files.summary.read_text())
    alpha = summary["alpha"]
    families, baseline = _baseline_nhood_tests(files)
    calls = pd.DataFrame({"contrast": list(summary["called"])})
    for family in families:
        _, _, called = _family_numbers(summary, family)
        calls[f"neighbourhoods ({family})"] = [called.get(c) for c in calls["contrast"]]
    lineages = [f for f in families if f != "PBMC"]
    parts = [
        f"<p>{summary['n_nhoods']:,} neighbourhoods of {summary['k']} cells (an index cell "
        "and its nearest cells in the integrated embedding), each tested with the abundance "
        "stage's GLMM and contrasts out of the sample's QC-passed cells; spatial FDR as in "
        "Milo. They can find a shift inside a labelled subset that the label-level tests "
        "above cannot see.</p>",
    ]  # fmt: skip
    for family in lineages:
        n_nhoods, k, _ = _family_numbers(summary, family)
        by = summary["lineages"][family].get("integrated_by")
        parts.append(
            f"<p>{n_nhoods:,} neighbourhoods of {k} {esc(family)} cells, cut from the "
            f"{esc(family)} cells alone"
            + (f" after Harmony over {esc(by)} on their PCs" if by else "")
            + f" and tested out of each sample's {esc(family)} cells (as the label-level "
            f"tests with the {esc(family)} denominator): a shift within the {esc(family)} "
            "cells is not diluted by their own variation between patients.</p>"
        )  # fmt: skip
    parts += ["<h3>Neighbourhoods at spatial FDR &lt; " + f"{alpha:g} per contrast</h3>",
              table(calls)]  # fmt: skip
    index = zarr_obs_column(files.nhoods, "index_cell")
    for family in families:
        base = _of(baseline, family)
        if base.empty or not base["pvalue"].notna().any():
            continue
        title = BASELINE + ("" if family == "PBMC" else f", within {family}")
        parts.append(figure(
            beeswarm_plot(base, alpha=alpha, title=title),
            "Each point a neighbourhood, grouped by its majority label; coloured at spatial "
            f"FDR < {alpha:g}. Look for groups whose points lie on one side of 0, and for a "
            "coloured part of a group whose label-level test was not significant.",
        ))  # fmt: skip
        part = base.sort_values("nhood")
        parts.append(figure(
            nhood_umap_plot(umap, umap[index[part["nhood"].to_numpy()]],
                            part["estimate"].to_numpy(),
                            (part["spatial_fdr"] < alpha).to_numpy(), title=title),
            "Neighbourhoods at their index cells on the UMAP, coloured by the baseline log "
            "odds ratio when called (red: more in non-responders). Look for where the "
            "coloured ones sit relative to the labelled populations.",
        ))  # fmt: skip
    notes = summary.get("warnings", [])
    if notes:
        parts += ["<h3>Warnings</h3>",
                  "<ul>" + "".join(f"<li class='flag'>{esc(n)}</li>" for n in notes) + "</ul>"]  # fmt: skip
    return "".join(parts)


def zarr_obs_column(store: Path, column: str) -> np.ndarray:
    """One obs column of an AnnData-Zarr store, without reading the rest."""
    return np.asarray(ad.io.read_elem(zarr.open_group(str(store), mode="r")[f"obs/{column}"]))


def _within(denominator: str) -> str:
    return "B cells" if denominator == "B" else "all QC-passed cells (PBMC)"


def _plot_caption(name: str) -> str:
    """A sentence for each plot the abundance stage writes (abundance/*.png)."""
    stem = name.removesuffix(".png")
    if stem.startswith("forest_"):
        denominator = stem.removeprefix("forest_")
        return (
            f"Abundance within {_within(denominator)}, binomial GLMM: per contrast, each "
            "cell type's log-odds ratio with its 95% interval; a star marks q < 0.05. Look "
            "for intervals clear of zero: right of zero is higher in non-responders "
            "(response) or rising (time)."
        )
    if stem.startswith("composition"):
        return (
            f"Composition per sample ({stem.removeprefix('composition').strip('_') or 'all'}), "
            "grouped by response and month. Look for a colour band that is wider in one "
            "group or that shrinks over the months."
        )
    if stem.startswith("trajectories"):
        return (
            "Each patient's share over the months (thin lines) with the group means. Look "
            "for the two groups apart at month 0 and for slopes that differ."
        )
    return stem.replace("_", " ")


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


def pseudobulk_of(path: Path, cell_type: str) -> ad.AnnData:
    """The pseudobulk store's rows of ``cell_type`` (its samples), every gene: its X is
    samples x cell types x genes (0.7 GB at 528 samples and 20,000 genes), and a figure
    of one cell type read it whole (`store.read_array_rows`: a chunk of rows at a time)."""
    group = zarr.open_group(str(path), mode="r")
    obs = ad.io.read_elem(group["obs"])
    rows = np.flatnonzero((obs["cell_type"].astype(str) == cell_type).to_numpy())
    x = group["X"]
    counts = (read_array_rows(x, rows) if isinstance(x, zarr.Array)
              else ad.io.read_elem(x)[rows])  # fmt: skip
    return ad.AnnData(X=counts, obs=obs.iloc[rows], var=ad.io.read_elem(group["var"]))


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
    pseudobulk = pseudobulk_of(files.pseudobulk, cell_type)
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
    samples = ad.io.read_elem(zarr.open_group(str(files.pseudobulk), mode="r")["obs"])
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

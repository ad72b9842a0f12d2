"""What a batch added by add-batch changed: ``batches/<name>/changes.json`` and ``.md``.

Per new sample: cells, QC, how well its cells map (median distance to their nearest
cohort cells over the cohort cells' own: `mapping_ratio`), label confidence and
unassigned share against the cohort's; samples above ``add_batch.poor_mapping_ratio``
are flagged. For the abundance tests: every contrast whose conclusion moved (significant
at ``abundance.alpha`` before and not after or the reverse, a sign change of a
significant estimate) and the contrasts that are new (e.g. a timepoint the cohort lacked).
For the expression models (when the workdir has them): the genes whose call moved,
``batches/<name>/expression_changes.csv``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from ..config import RunConfig
from ..labels import DESIGN_COLUMNS, UNASSIGNED
from ..results import read_obs_columns
from ..store import write_text_atomic
from ..workdir import Workdir

KEYS = ["cell_type", "denominator", "contrast", "method"]
GENE_KEYS = ["level", "cell_type", "gene", "contrast", "method"]
_COLUMNS = [*DESIGN_COLUMNS, "qc_pass", "mapping_ratio", "lineage", "lineage_confidence"]


def sample_table(
    cells: pd.DataFrame, poor_ratio: float, cohort_confidence: float, confidence_drop: float
) -> pd.DataFrame:
    """One row per new sample: cells, QC-passed share, mapping and labels. A sample maps
    poorly when its median mapping ratio exceeds ``poor_ratio`` or its median lineage
    confidence is more than ``confidence_drop`` below ``cohort_confidence``
    (``maps_poorly`` says why; empty when it maps well)."""
    rows = []
    for sid, part in cells.groupby("sample_id", observed=True, sort=False):
        kept = part[part["qc_pass"].to_numpy(dtype=bool)]
        nan = float("nan")
        ratio = float(np.nanmedian(kept["mapping_ratio"])) if len(kept) else nan
        conf = float(np.nanmedian(kept["lineage_confidence"])) if len(kept) else nan
        reasons = [] if len(kept) else ["no cell passes QC"]
        if ratio > poor_ratio:
            reasons.append(f"distance ratio {ratio:.2f} > {poor_ratio:g}")
        if conf < cohort_confidence - confidence_drop:
            reasons.append(f"label confidence {conf:.2f}, cohort {cohort_confidence:.2f}")
        rows.append(
            {
                "sample_id": str(sid),
                "patient_id": str(part["patient_id"].iloc[0]),
                "timepoint_months": float(part["timepoint_months"].iloc[0]),
                "response": str(part["response"].iloc[0]),
                "batch": str(part["batch"].iloc[0]),
                "n_cells": len(part),
                "n_kept": len(kept),
                "kept_fraction": len(kept) / max(len(part), 1),
                "mapping_ratio": ratio,
                "median_lineage_confidence": conf,
                "unassigned_fraction": float((kept["lineage"] == UNASSIGNED).mean())
                if len(kept)
                else nan,
                "b_cells": int((kept["lineage"] == "B").sum()),
                "maps_poorly": "; ".join(reasons),
            }
        )
    return pd.DataFrame(rows)


def moved_contrasts(before: pd.DataFrame | None, after: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """The tests whose conclusion differs between ``before`` and ``after``: significant
    at q < ``alpha`` in one only, a significant estimate changing sign, or an estimate
    that is new (a contrast the cohort had no data for, or one it could not estimate)."""
    return _moved(before, after, alpha, KEYS, "estimate")


def moved_gene_calls(
    before: pd.DataFrame | None, after: pd.DataFrame, alpha: float
) -> pd.DataFrame:
    """The expression tests (`expression/de.csv` rows) whose call differs: significant at
    q < ``alpha`` in one only, or a significant log2 fold change changing sign; a gene
    tested now but not before (newly past the filter, a new contrast) only when it is
    significant now."""
    moved = _moved(before, after, alpha, GENE_KEYS, "log2fc")
    new = moved["change"].isin(["new contrast", "now estimable"])
    moved.loc[new, "change"] = "newly tested, significant"
    return moved[~new | (moved["qvalue_after"] < alpha)].reset_index(drop=True)


def _moved(before: pd.DataFrame | None, after: pd.DataFrame, alpha: float, keys: list[str],
           estimate: str) -> pd.DataFrame:  # fmt: skip
    columns = [*keys, estimate, "qvalue"]
    if before is None:
        before = pd.DataFrame({c: pd.Series(dtype=after[c].dtype) for c in columns})
    both = after[columns].merge(
        before[columns], on=keys, how="left", suffixes=("_after", "_before"), indicator=True
    )
    was, now = both[f"{estimate}_before"], both[f"{estimate}_after"]
    sig_before = both["qvalue_before"] < alpha
    sig_after = both["qvalue_after"] < alpha
    known = was.notna()
    change = pd.Series("", index=both.index, dtype=object)
    change[(both["_merge"] == "left_only") & now.notna()] = "new contrast"
    change[(both["_merge"] == "both") & ~known & now.notna()] = "now estimable"
    change[known & sig_after & ~sig_before] = "now significant"
    change[known & sig_before & ~sig_after] = "no longer significant"
    flipped = np.sign(was) != np.sign(now)
    change[known & flipped & (sig_before | sig_after)] = "changed sign"
    order = [*keys, f"{estimate}_before", f"{estimate}_after", "qvalue_before", "qvalue_after"]
    return both.assign(change=change)[change != ""][[*order, "change"]].reset_index(drop=True)


def write_expression_changes(cfg: RunConfig, name: str) -> str:
    """``batches/<name>/expression_changes.csv``: the genes whose call the batch moved
    (`moved_gene_calls`, q < ``expression.alpha``); the line add-batch prints."""
    workdir = Workdir(cfg.workdir)
    files = workdir.batch(name)
    before = pd.read_csv(files.de_before) if files.de_before.exists() else None
    moved = moved_gene_calls(before, pd.read_csv(workdir.expression.de), cfg.expression.alpha)
    write_text_atomic(files.expression_changes, moved.to_csv(index=False))
    counts = moved["change"].value_counts().to_dict()
    where = "" if before is not None else " (the cohort had no expression results before)"
    return (
        f"expression changes: {len(moved):,} gene calls moved at q < {cfg.expression.alpha}"
        f"{where}: {counts or 'none'}; see {files.expression_changes}"
    )


def write_prediction_changes(cfg: RunConfig, name: str) -> str:
    """Append the batch's new patients' predictions (`predict/new_patients.csv`, the rows
    of this batch) to ``batches/<name>/changes.md``; the line add-batch prints."""
    workdir = Workdir(cfg.workdir)
    files = workdir.batch(name)
    path = workdir.predict.new_patients
    metrics = workdir.predict.metrics
    if metrics.exists() and json.loads(metrics.read_text()).get("skipped"):
        reason = json.loads(metrics.read_text())["skipped"]
        text = f"No prediction: the model is not fitted ({reason})."
        rows = pd.DataFrame()
    else:
        table = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["batch"])
        rows = table[table["batch"].astype(str) == name]
        text = (f"The saved model's probability of non-response for {len(rows)} new patient(s) "
                "with a baseline sample in this batch (range: the cross-validation models'; "
                "see predict/new_patients.csv):")  # fmt: skip
    heading = "## Prediction of non-response (new patients)"
    body = ["", heading, "", text, ""]
    if len(rows):
        body += [_table(rows.drop(columns=["batch"]).fillna({"flags": ""})), ""]
    old = files.changes_md.read_text() if files.changes_md.exists() else ""
    # the section is replaced, not appended again, when add-batch runs once more
    new = old.split("\n" + heading)[0].rstrip("\n") + "\n" + "\n".join(body)
    if new != old:
        write_text_atomic(files.changes_md, new)
    return f"predictions: {len(rows)} new patient(s) of batch {name}; see {files.changes_md}"


def _table(frame: pd.DataFrame) -> str:
    """A markdown table (numbers to 3 significant digits)."""

    def cell(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _markdown(
    name: str, samples: pd.DataFrame, reference: dict[str, float], moved: pd.DataFrame, note: str
) -> str:
    lines = [f"# Batch {name}: what changed", "", "## New samples", ""]
    shown = samples[
        [
            "sample_id",
            "patient_id",
            "timepoint_months",
            "response",
            "batch",
            "n_cells",
            "kept_fraction",
            "mapping_ratio",
            "median_lineage_confidence",
            "unassigned_fraction",
            "b_cells",
            "maps_poorly",
        ]
    ]
    lines.append(_table(shown))
    lines += [
        "",
        f"Cohort cells for comparison: median lineage confidence "
        f"{reference['median_lineage_confidence']:.3g}, unassigned "
        f"{reference['unassigned_fraction']:.3g}; mapping ratio 1 is the cohort cells' "
        "own distance to their neighbours.",
        "",
    ]
    flagged = samples.loc[samples["maps_poorly"] != "", "sample_id"].tolist()
    lines.append(f"Samples that map poorly: {', '.join(flagged) if flagged else 'none'}.")
    by_batch = (
        samples.groupby("batch", sort=True)
        .agg(
            samples=("sample_id", "size"),
            cells=("n_kept", "sum"),
            median_mapping_ratio=("mapping_ratio", "median"),
            mapping_poorly=("maps_poorly", lambda v: int((v != "").sum())),
        )
        .reset_index()
    )
    lines += ["", "By processing batch:", "", _table(by_batch)]
    lines += ["", "## Abundance contrasts whose conclusion moved", "", note, ""]
    if len(moved):
        lines.append(_table(moved))
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def write_changes(cfg: RunConfig, name: str) -> str:
    """Write the batch's change report (again when the abundance results changed)."""
    workdir = Workdir(cfg.workdir)
    files = workdir.batch(name)
    abundance = workdir.abundance.digest()
    target = files.changes_json
    if target.exists() and json.loads(target.read_text()).get("abundance") == abundance:
        return f"changes: {files.changes_md} (unchanged)"
    cells = read_obs_columns(files.cells, _COLUMNS, needs="re-run add-batch")
    cohort = read_obs_columns(
        workdir.cohort,
        ["qc_pass", "lineage", "lineage_confidence"],
        needs="run the stages up to annotate first",
    )
    cohort = cohort[cohort["qc_pass"].to_numpy(dtype=bool)]
    reference = {
        "median_lineage_confidence": float(np.nanmedian(cohort["lineage_confidence"])),
        "unassigned_fraction": float((cohort["lineage"] == UNASSIGNED).mean()),
    }
    a = cfg.add_batch
    samples = sample_table(
        cells, a.poor_mapping_ratio, reference["median_lineage_confidence"], a.poor_confidence_drop
    )
    before = pd.read_csv(files.tests_before) if files.tests_before.exists() else None
    tests_path = workdir.abundance.tests
    if tests_path.exists():
        moved = moved_contrasts(before, pd.read_csv(tests_path), cfg.abundance.alpha)
        note = (
            f"Significance at q < {cfg.abundance.alpha} before and after the batch (all methods)."
            if before is not None
            else "The cohort had no abundance results before this batch: every contrast is new."
        )
    else:
        moved, note = pd.DataFrame(columns=[*KEYS, "change"]), "No abundance results."
    report: dict[str, Any] = {
        "batch": name,
        "abundance": abundance,
        "samples": samples.to_dict(orient="records"),
        "flagged": samples.loc[samples["maps_poorly"] != "", "sample_id"].tolist(),
        "cohort": reference,
        "moved": moved.replace({np.nan: None}).to_dict(orient="records"),
    }
    write_text_atomic(files.changes_md, _markdown(name, samples, reference, moved, note))
    write_text_atomic(target, json.dumps(report, indent=1, default=str))
    flagged = report["flagged"]
    counts = moved["change"].value_counts().to_dict() if len(moved) else {}
    return (
        f"changes: {len(samples)} new samples ({sum(samples['n_kept']):,} cells kept); "
        f"mapping poor for {len(flagged)} ({', '.join(flagged) or 'none'}); contrasts "
        f"moved: {counts or 'none'}; see {files.changes_md}"
    )

"""Pilot-sized and degenerate designs, end to end: every stage finishes, and the outputs
and the report say which contrasts cannot be estimated and why (never a number)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from distributed import Client

from pipeline.commands import run_stages
from pipeline.config import SimulationConfig, parse_config
from pipeline.registry import STAGE_NAMES
from pipeline.simulate import simulate_cohort

# 4 patients (2 responders, 2 non-responders) x 3 timepoints x ~150 cells
# (no expression variation between patients: the cohort whose baseline-only design has
# B subsets absent from one group, which the test needs)
TINY = {"seed": 5, "n_patients": 4, "cells_per_sample": 150, "n_genes": 2000, "n_batches": 2,
        "expression_patient_sd": 0.0, "expression_effects": []}  # fmt: skip
CONFIG = {
    "preprocess": {"n_top_genes": 500, "n_comps": 10},
    "graph": {"resolutions": [0.5]},
    "expression": {"cell_types": ["T_CD4"]},  # ~55 cells per sample: tested where it can be
}


def _first_per_group(s: pd.DataFrame) -> pd.DataFrame:
    return s[s["patient_id"].isin(s.groupby("response")["patient_id"].first())]


def _tiny_batch(s: pd.DataFrame, folder: Path) -> pd.DataFrame:
    """Every sample, and 8 cells of the first one as a sample of a processing batch of
    its own (the per-batch HVG loess cannot be fitted on so few), with hostile names."""
    first = s.iloc[0]
    tiny = sc.read_10x_h5(first["path"])[:8].copy()
    tiny.var_names_make_unique()
    tiny.write_h5ad(folder / HOSTILE_FILE)
    row = {**first.to_dict(), "sample_id": "TINY_m0", "patient_id": "TINY",
           "batch": HOSTILE, "path": str(folder / HOSTILE_FILE)}  # fmt: skip
    return pd.concat([s, pd.DataFrame([row])], ignore_index=True)


# samplesheet values are free text: shown in the messages and the report, never run
HOSTILE = '<script>alert("tiny")</script>'  # the tiny sample's batch
HOSTILE_FILE = '<img src=x onerror="alert(1)">.h5ad'  # and its input file (in the report)


DESIGNS: dict[str, Callable[[pd.DataFrame, Path], pd.DataFrame]] = {
    "one_patient_per_group": lambda s, _: _first_per_group(s),
    "one_patient": lambda s, _: s[s["patient_id"] == s["patient_id"].iloc[0]],
    "baseline_only": lambda s, _: s[s["timepoint_months"] == 0],
    "one_group": lambda s, _: s.assign(response="responder"),
    "unknown_only": lambda s, _: s.assign(response="unknown"),
    "tiny_batch": _tiny_batch,
}
DF = "leave no degrees of freedom: the groups' difference cannot be told from patient"
NOT_ESTIMABLE: dict[str, dict[str, str]] = {  # some contrasts of each design and why
    "one_patient_per_group": {
        "response@month0": f"patients per response group (1 responder, 1 non_responder) {DF}",
        "time3@responder": "no samples beyond one per patient and design cell",
        "response:time6": "no samples beyond one per patient and design cell",
    },
    "one_patient": {
        "response@month0": "at least 2 patients; got 1",
        "time6@non_responder": "at least 2 patients; got 1",
    },
    "baseline_only": {},
    "one_group": {
        "response@month0": "no patient has response 'non_responder'",
        "time3@non_responder": "no patient has response 'non_responder'",
        "response:time3": "no patient has response 'non_responder'",
    },
    "unknown_only": {
        "response@month3": "no patient has response 'responder' or 'non_responder'",
        "time6@responder": "no patient has response 'responder' or 'non_responder'",
    },
    "tiny_batch": {},
}


@pytest.fixture(scope="module")
def tiny_sheet(tmp_path_factory: pytest.TempPathFactory, client: Client) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("tiny")
    result = simulate_cohort(SimulationConfig.model_validate(TINY), out=out, client=client)
    sheet = pd.read_csv(result.samplesheet)
    sheet["path"] = [str((result.samplesheet.parent / p).resolve()) for p in sheet["path"]]
    return sheet


@pytest.mark.parametrize("design", list(DESIGNS))
def test_every_stage_finishes_and_says_what_is_not_estimable(
    design: str,
    tiny_sheet: pd.DataFrame,
    tmp_path: Path,
    client: Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sheet = DESIGNS[design](tiny_sheet, tmp_path)
    sheet.to_csv(tmp_path / "samplesheet.csv", index=False)
    work = tmp_path / "work"
    # both abundance methods for the pilot (its propeller q-values were all NaN), the
    # GLMM alone for the others (half the fits)
    methods = ["glmm", "propeller"] if design == "one_patient_per_group" else ["glmm"]
    cfg = parse_config({**CONFIG, "workdir": str(work), "abundance": {"methods": methods},
                        "samplesheet": str(tmp_path / "samplesheet.csv")})  # fmt: skip
    run_stages(cfg, client, list(STAGE_NAMES))
    printed = capsys.readouterr().out
    assert (work / "report" / "index.html").exists()

    summary = json.loads((work / "abundance" / "summary.json").read_text())
    tests = pd.read_csv(work / "abundance" / "tests.csv")
    expected = NOT_ESTIMABLE[design]
    for contrast, why in expected.items():
        assert why in summary["not_estimable"][contrast], (contrast, summary["not_estimable"])
        assert f"{contrast}: not estimable, " in "\n".join(summary["warnings"])
        rows = tests[tests["contrast"] == contrast]
        assert len(rows) > 0 and rows[["estimate", "pvalue", "qvalue"]].isna().all().all()
    # every contrast of the design's timepoints has its rows; the others are numbers
    months = sorted(set(sheet["timepoint_months"]))
    assert set(tests["contrast"]) == set(summary["contrasts"])
    assert len(summary["contrasts"]) == 1 + 4 * (len(months) - 1)
    estimable = tests[~tests["contrast"].isin(list(summary["not_estimable"]))]
    if design in ("one_group", "baseline_only", "tiny_batch"):
        b_cells = estimable[(estimable["cell_type"] == "B") & (estimable["method"] == "glmm")]
        assert len(b_cells) > 0 and np.isfinite(b_cells["estimate"]).all(), b_cells

    expression = json.loads((work / "expression" / "summary.json").read_text())
    if design in ("one_patient", "one_group", "unknown_only"):
        assert not expression["cell_types_tested"], expression
        assert "expected at least 2 of each" in expression["cell_types_skipped"][0]["reason"]
    else:
        assert expression["cell_types_tested"] == ["lineage/T_CD4"], expression
    if design == "one_patient_per_group":
        reasons = {r["contrast"]: r["reason"] for r in expression["not_estimable"]}
        assert DF in reasons["response@month0"]
        assert "no residual degrees of freedom" in reasons["time3@responder"]

    html = (work / "report" / "index.html").read_text()
    if expected:
        assert "Contrasts this design cannot estimate" in html
        assert next(iter(expected.values())).replace("'", "&#x27;") in html
    if "response@month0" in summary["not_estimable"]:
        assert "the baseline contrast is not estimable: " in printed
        assert "The baseline contrast is not estimable" in html
    if design == "tiny_batch":
        assert f"batch(es) {HOSTILE} have fewer than 50 kept cells and do not rank genes" in (
            printed
        )
        # samplesheet values are escaped in the report (the input path is listed there)
        assert "<img src=x" not in html and "<script>alert(" not in html
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;.h5ad" in html
    if design == "baseline_only":  # cell types absent from every sample of one group
        counts = pd.read_csv(work / "abundance" / "counts.csv")
        counts = counts[(counts["level"] == "b_subset") & (counts["cell_type"] != "unassigned")]
        by_group = counts.groupby(["cell_type", "response"])["count"].sum().unstack()
        absent = by_group[(by_group == 0).any(axis=1) & (by_group > 0).any(axis=1)].index
        assert len(absent) > 0
        for cell_type in absent:
            row = tests[(tests["cell_type"] == cell_type) & (tests["denominator"] == "B")
                        & (tests["method"] == "glmm")]  # fmt: skip
            assert len(row) == 1 and row["estimate"].isna().all(), row
            assert any(w.startswith(f"{cell_type} within B (glmm): all or none of the cells")
                       for w in summary["warnings"])  # fmt: skip

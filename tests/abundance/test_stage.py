"""The abundance stage on a workdir: its outputs per docs/contracts.md, the manifest, skipping
when unchanged, and clear errors that leave nothing written.

The workdir holds a cohort.zarr whose obs are per-cell labels drawn from the count-table
simulator (the stages before annotate are tested elsewhere; `tests/test_cli.py` runs them
all together)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from distributed import Client

from pipeline.config import RunConfig, SimulationConfig, parse_config
from pipeline.errors import ImmunoprofileError
from pipeline.labels import B_SUBSETS, LINEAGES
from pipeline.registry import get_stage
from pipeline.simulate._tables import simulate_count_table
from pipeline.stages import StageContext, is_current, run_stage
from pipeline.workdir import Workdir

DESIGN_COUNTS = ["sample_id", "patient_id", "timepoint_months", "response", "batch", "level",
                 "cell_type", "count", "total"]  # fmt: skip
DESIGN_TESTS = ["cell_type", "denominator", "contrast", "estimate", "ci_low", "ci_high",
                "pvalue", "qvalue", "method"]  # fmt: skip


def _cells(counts: pd.DataFrame, unassigned_every: int = 50) -> pd.DataFrame:
    """One row per cell with the labels the table was drawn with (a few unassigned)."""
    lineage = counts[counts["level"] == "lineage"]
    cells = lineage.loc[lineage.index.repeat(lineage["count"])].reset_index(drop=True)
    cells = cells.rename(columns={"cell_type": "lineage"}).drop(columns=["level", "count", "total"])
    cells["b_subset"] = "unassigned"
    subsets = counts[counts["level"] == "b_subset"]
    for sid, part in subsets.groupby("sample_id"):
        rows = cells.index[(cells["sample_id"] == sid) & (cells["lineage"] == "B")]
        cells.loc[rows, "b_subset"] = np.repeat(part["cell_type"].to_numpy(), part["count"])
    cells.loc[cells.index[::unassigned_every], ["lineage", "b_subset"]] = "unassigned"
    cells["qc_pass"] = True
    cells.loc[cells.index[1::97], "qc_pass"] = False
    return cells


def _probabilities(cells: pd.DataFrame, level: str) -> np.ndarray:
    """The label probabilities the annotate stage would store for labels called with
    certainty: one-hot rows, NaN for cells without a label at the level."""
    vocabulary = [*(LINEAGES if level == "lineage" else B_SUBSETS), "unassigned"]
    codes = pd.Categorical(cells[level], categories=vocabulary).codes
    out = np.full((len(cells), len(vocabulary)), np.nan, dtype=np.float32)
    rows = np.flatnonzero(cells["qc_pass"].to_numpy() & (codes >= 0))
    if level == "b_subset":
        rows = rows[cells["lineage"].to_numpy()[rows] == "B"]
    out[rows] = 0.0
    out[rows, codes[rows]] = 1.0
    return out


def _workdir(
    tmp_path: Path, counts: pd.DataFrame, *, b_prob: np.ndarray | None = None, **config
) -> RunConfig:
    cfg = parse_config({"workdir": str(tmp_path / "work"), **config})
    Path(cfg.workdir).mkdir(parents=True)
    (Path(cfg.workdir) / "ingest.json").write_text("{}")
    cells = _cells(counts)
    obs = cells.astype({c: "category" for c in ("sample_id", "patient_id", "response", "batch",
                                                "lineage", "b_subset")})  # fmt: skip
    obs.index = obs.index.astype(str)
    # cohort.zarr as the qc stage writes it (whole), with the labels already in obs, and
    # the label probabilities as the annotate stage writes them
    workdir = Workdir(cfg.workdir)
    StageContext(get_stage("qc"), cfg, workdir).write_cohort(ad.AnnData(obs=obs))
    b_prob = _probabilities(cells, "b_subset") if b_prob is None else b_prob
    labels = obs[["lineage", "b_subset"]]  # annotate's update replaces its own outputs
    StageContext(get_stage("annotate"), cfg, workdir).update_cohort(obs=labels, elems={
        "obsm/lineage_probabilities": _probabilities(cells, "lineage"),
        "obsm/b_subset_probabilities": b_prob,
    })  # fmt: skip
    return cfg


@pytest.fixture(scope="module")
def counts() -> pd.DataFrame:
    return simulate_count_table(SimulationConfig(seed=21, n_patients=20, cells_per_sample=800))


def test_stage_writes_design_outputs(tmp_path: Path, counts: pd.DataFrame, client: Client) -> None:
    cfg = _workdir(tmp_path, counts)
    report = run_stage("abundance", cfg, client)
    folder = Workdir(cfg.workdir).abundance.root
    table = pd.read_csv(folder / "counts.csv")
    assert list(table.columns) == DESIGN_COUNTS
    # totals: QC-passed cells for lineages, B cells for subsets; counts add up to totals
    cells = _cells(counts)
    kept = cells[cells["qc_pass"]]
    sid = table["sample_id"].iloc[0]
    lineage = table[(table["level"] == "lineage") & (table["sample_id"] == sid)]
    assert lineage["total"].iloc[0] == (kept["sample_id"] == sid).sum() == lineage["count"].sum()
    b = table[(table["level"] == "b_subset") & (table["sample_id"] == sid)]
    n_b = ((kept["sample_id"] == sid) & (kept["lineage"] == "B")).sum()
    assert b["total"].iloc[0] == n_b == b["count"].sum()
    tests = pd.read_csv(folder / "tests.csv")
    assert list(tests.columns) == DESIGN_TESTS
    assert "unassigned" not in set(tests["cell_type"])
    assert {"response@month0", "time3@non_responder", "response:time6"} <= set(tests["contrast"])
    ds = xr.open_zarr(folder / "counts.zarr").load()
    assert ds["b_subset_count"].sum() == table.loc[table["level"] == "b_subset", "count"].sum()
    assert set(ds["response"].values) == {"responder", "non_responder"}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["excluded_from_response_contrasts"]["patients"] == 0
    assert {r["denominator"] for r in summary["concordance"]} == {"B", "PBMC"}
    assert {"forest_B.png", "trajectories_b_subset_B.png", "composition_lineage.png"} <= set(
        summary["plots"]
    )
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, sha in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha
    assert "abundance: 60 samples" in report
    # DN2 is planted higher in non-responders at baseline: the one-sentence finding
    assert any("DN2" in f and "higher in non-responders" in f for f in summary["findings"])

    assert is_current(cfg, "abundance")
    changed = cfg.model_copy(
        update={"abundance": cfg.abundance.model_copy(update={"time": "continuous"})}
    )
    assert not is_current(changed, "abundance")


def test_unknown_response_is_counted_in_the_report(
    tmp_path: Path, counts: pd.DataFrame, client: Client
) -> None:
    unknown = counts.copy()
    patients = sorted(unknown["patient_id"].unique())[:2]
    unknown.loc[unknown["patient_id"].isin(patients), "response"] = "unknown"
    cfg = _workdir(tmp_path, unknown, abundance={"methods": ["glmm"]})
    report = run_stage("abundance", cfg, client)
    assert "2 patients with unknown response left out of the response contrasts" in report
    summary = json.loads(Workdir(cfg.workdir).abundance.summary.read_text())
    assert summary["excluded_from_response_contrasts"] == {"patients": 2, "samples": 6}


def test_one_response_group_gives_its_changes_and_says_why_the_rest_cannot_be(
    tmp_path: Path, counts: pd.DataFrame, client: Client
) -> None:
    """Non-responders only (e.g. the first patients of a study): the changes within the
    group are estimated; every contrast that needs responders is NaN, with the reason in
    summary.json (the report shows it)."""
    only_nr = counts.assign(response="non_responder")
    cfg = _workdir(tmp_path, only_nr)
    message = run_stage("abundance", cfg, client)
    assert "the baseline contrast is not estimable: no patient has response 'responder'" in (
        message
    )
    files = Workdir(cfg.workdir).abundance
    summary = json.loads(files.summary.read_text())
    tests = pd.read_csv(files.tests)
    lost = summary["not_estimable"]
    assert set(lost) == set(tests["contrast"]) - {"time3@non_responder", "time6@non_responder"}
    assert set(lost.values()) == {"no patient has response 'responder'"}
    assert tests[tests["contrast"].isin(list(lost))]["estimate"].isna().all()
    within = tests[~tests["contrast"].isin(list(lost))]
    assert len(within) > 0 and np.isfinite(within["estimate"]).all()


def test_response_values_outside_the_vocabulary_fail_clearly_and_write_nothing(
    tmp_path: Path, counts: pd.DataFrame, client: Client
) -> None:
    cfg = _workdir(tmp_path, counts.assign(response="partial"))
    with pytest.raises(ImmunoprofileError, match=r"column 'response' has values \['partial'\]"):
        run_stage("abundance", cfg, client)
    assert not Workdir(cfg.workdir).abundance.root.exists()
    assert not any(p.name.startswith(".abundance") for p in Path(cfg.workdir).iterdir())


def test_label_draws_widen_intervals_only_where_labels_are_uncertain(
    tmp_path: Path, counts: pd.DataFrame, client: Client
) -> None:
    """Half of the DN1 and DN2 cells are called with 0.6 / 0.4 between the two: with
    label draws (the default) their intervals widen against the hard-label analysis
    (label_uncertainty.csv), the certain subsets' stay as they are, and summary.json says
    which labels were used; `labels: hard` gives the hard-label tests and says so."""
    cells = _cells(counts)
    b_prob = _probabilities(cells, "b_subset")
    dn1, dn2 = B_SUBSETS.index("DN1"), B_SUBSETS.index("DN2")
    for own, other in ((dn1, dn2), (dn2, dn1)):
        rows = np.flatnonzero(b_prob[:, own] == 1)[::2]
        b_prob[rows, own], b_prob[rows, other] = 0.6, 0.4
    cfg = _workdir(tmp_path / "draws", counts, b_prob=b_prob, abundance={"methods": ["glmm"]})
    message = run_stage("abundance", cfg, client)
    assert "10 label draws pooled by Rubin's rules" in message
    files = Workdir(cfg.workdir).abundance
    summary = json.loads(files.summary.read_text())
    assert summary["labels"]["method"] == "draws" and summary["labels"]["label_draws"] == 10
    assert 0 < summary["labels"]["relabelled_share"]["b_subset"] < 0.05
    assert summary["labels"]["relabelled_share"]["lineage"] == 0
    side = pd.read_csv(files.label_uncertainty)
    uncertain = side[side["cell_type"].isin(["DN1", "DN2"])]
    assert (uncertain["fmi"] > 0.01).all() and uncertain["width_ratio"].median() > 1.02
    # the other subsets' cells (and the B cells' total) are the same in every draw
    certain = side[~side["cell_type"].isin(["DN1", "DN2"])]
    assert certain["fmi"].max() < 1e-9
    assert np.allclose(certain["width_ratio"], 1.0)
    tests = pd.read_csv(files.tests)
    assert list(tests.columns) == DESIGN_TESTS and tests["qvalue"].notna().any()

    hard = _workdir(tmp_path / "hard", counts, b_prob=b_prob,
                    abundance={"methods": ["glmm"], "labels": "hard"})  # fmt: skip
    assert "hard labels" in run_stage("abundance", hard, client)
    hard_files = Workdir(hard.workdir).abundance
    assert json.loads(hard_files.summary.read_text())["labels"] == {"method": "hard"}
    assert not hard_files.label_uncertainty.exists()
    hard_tests = pd.read_csv(hard_files.tests)
    merged = side.merge(hard_tests, on=["cell_type", "denominator", "contrast", "method"])
    assert np.allclose(merged["estimate_hard"], merged["estimate_y"], equal_nan=True)

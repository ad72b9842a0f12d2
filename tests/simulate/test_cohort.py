"""The simulated cohort on disk: readable by scanpy, per the samplesheet contract, seeded."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from distributed import Client

from pipeline.errors import ImmunoprofileError
from pipeline.simulate import SimulationResult, simulate_cohort
from tests.conftest import small_config

CONTRACT = ["sample_id", "patient_id", "timepoint_months", "response", "batch", "path"]


def _truth(out: Path, sample_id: str) -> pd.DataFrame:
    return pd.read_csv(out / "truth" / "cells" / f"{sample_id}.csv.gz", keep_default_na=False)


def test_samplesheet_follows_the_contract(small_cohort: SimulationResult) -> None:
    sheet = pd.read_csv(small_cohort.samplesheet)
    assert list(sheet.columns[:6]) == CONTRACT
    assert {"sex", "age", "sledai"} <= set(sheet.columns)
    assert sheet["sample_id"].is_unique
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", s) for s in sheet["sample_id"])
    assert set(sheet["response"]) <= {"responder", "non_responder", "unknown"}
    assert sheet.groupby("patient_id")["response"].nunique().eq(1).all()
    assert (sheet["timepoint_months"] >= 0).all()
    for path in sheet["path"]:
        assert not Path(path).is_absolute()
        assert (small_cohort.samplesheet.parent / path).exists()
    late = pd.read_csv(small_cohort.late_samplesheet)
    assert set(late["patient_id"]).isdisjoint(sheet["patient_id"])
    assert late["batch"].nunique() == 1 and late["batch"].iloc[0] not in set(sheet["batch"])


def test_h5_inputs_are_read_by_scanpy(small_cohort: SimulationResult) -> None:
    out = small_cohort.out
    sheet = pd.read_csv(small_cohort.samplesheet)
    row = sheet.iloc[0]
    adata = sc.read_10x_h5(out / row["path"])
    truth = _truth(out, row["sample_id"])
    assert adata.n_obs == len(truth) and adata.n_vars == 6000
    assert list(adata.obs_names) == list(truth["barcode"])
    assert adata.var["gene_ids"].str.startswith("ENSSIMG").all()
    assert np.array_equal(np.asarray(adata.X.sum(axis=1)).ravel(), truth["n_counts"].to_numpy())
    with h5py.File(out / row["path"]) as f:
        assert f["matrix/data"].dtype == np.int32


def test_mtx_inputs_are_read_by_scanpy(tmp_path: Path, client: Client) -> None:
    cfg = small_config(n_patients=2, extra_patients=0, timepoints_months=[0, 6], format="mtx")
    result = simulate_cohort(cfg, out=tmp_path, client=client)
    sheet = pd.read_csv(result.samplesheet)
    assert len(sheet) == 4
    row = sheet.iloc[0]
    folder = tmp_path / row["path"]
    assert {p.name for p in folder.iterdir()} == {
        "matrix.mtx.gz",
        "features.tsv.gz",
        "barcodes.tsv.gz",
    }
    adata = sc.read_10x_mtx(folder, var_names="gene_ids")
    truth = _truth(tmp_path, row["sample_id"])
    assert list(adata.obs_names) == list(truth["barcode"])
    assert np.array_equal(np.asarray(adata.X.sum(axis=1)).ravel(), truth["n_counts"].to_numpy())
    symbols = sc.read_10x_mtx(folder).var_names
    assert "MS4A1" in symbols and "MT-CO1" in symbols


def test_realized_proportions_match_the_requested_ones(small_cohort: SimulationResult) -> None:
    """Counts are multinomial draws from the true probabilities: z-scores stay small."""
    props = pd.read_csv(small_cohort.out / "truth" / "proportions.csv")
    lineage = props[props["level"] == "lineage"]
    k, n, p = lineage["count"], lineage["total"], lineage["probability"]
    z = (k - n * p) / np.sqrt(n * p * (1 - p))
    assert np.abs(z).max() < 4.5
    assert abs(z.mean()) < 0.3
    pooled = lineage.groupby("cell_type")[["count", "total"]].sum()
    mean_p = lineage.groupby("cell_type")["probability"].mean()
    assert np.allclose(pooled["count"] / pooled["total"], mean_p, atol=0.02)


def test_per_cell_truth_labels_follow_the_label_contract(small_cohort: SimulationResult) -> None:
    sheet = pd.read_csv(small_cohort.samplesheet)
    truth = pd.concat(_truth(small_cohort.out, s) for s in sheet["sample_id"])
    lineages = {"T_CD4", "T_CD8", "NK", "mono_CD14", "mono_CD16", "cDC", "pDC", "B", "platelet"}
    subsets = {
        "naive",
        "transitional",
        "unswitched_memory",
        "switched_memory",
        "DN1",
        "DN2",
        "plasmablast",
    }
    assert set(truth["lineage"]) == lineages
    assert set(truth.loc[truth["lineage"] == "B", "b_subset"]) == subsets
    assert (truth.loc[truth["lineage"] != "B", "b_subset"] == "").all()
    assert set(truth["kind"]) == {"singlet", "doublet", "low_quality"}
    assert truth["barcode"].str.fullmatch(r"[ACGT]{16}-1").all()


def test_truth_records_effects_contrasts_and_parameters(small_cohort: SimulationResult) -> None:
    truth = small_cohort.out / "truth"
    effects = pd.read_csv(truth / "effects.csv")
    assert {"DN2", "naive"} <= set(effects["cell_type"])
    contrasts = pd.read_csv(truth / "contrasts.csv")
    dn2 = contrasts.query(
        "cell_type == 'DN2' and denominator == 'B' and contrast == 'response@month0'"
    )
    assert float(dn2["true_log_odds"].iloc[0]) > 0.5
    meta = (truth / "simulation.json").read_text()
    assert '"seed": 11' in meta


def test_same_seed_gives_identical_files_and_rerun_skips(tmp_path: Path, client: Client) -> None:
    cfg = small_config(n_patients=2, extra_patients=0, timepoints_months=[0, 3])
    a = simulate_cohort(cfg, out=tmp_path / "a", client=client)
    simulate_cohort(cfg, out=tmp_path / "b", client=client)
    for row in pd.read_csv(a.samplesheet).itertuples():
        with h5py.File(tmp_path / "a" / row.path) as fa, h5py.File(tmp_path / "b" / row.path) as fb:
            for name in ("data", "indices", "indptr", "barcodes"):
                assert np.array_equal(fa["matrix"][name][:], fb["matrix"][name][:])
    assert (tmp_path / "a/truth/proportions.csv").read_bytes() == (
        tmp_path / "b/truth/proportions.csv"
    ).read_bytes()
    other = simulate_cohort(small_config(n_patients=2, extra_patients=0, timepoints_months=[0, 3], seed=12),
                            out=tmp_path / "c", client=client)  # fmt: skip
    assert other.n_cells != a.n_cells or not np.array_equal(
        pd.read_csv(tmp_path / "c/truth/proportions.csv")["count"],
        pd.read_csv(tmp_path / "a/truth/proportions.csv")["count"],
    )
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "inputs").iterdir()}
    again = simulate_cohort(cfg, out=tmp_path / "a", client=client)
    assert again.n_skipped == again.n_samples
    assert before == {p: p.stat().st_mtime_ns for p in (tmp_path / "a" / "inputs").iterdir()}
    leftovers = [p for p in (tmp_path / "a").rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


def test_a_foreign_output_folder_is_not_overwritten(tmp_path: Path, client: Client) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(ImmunoprofileError, match=str(tmp_path)):
        simulate_cohort(small_config(n_patients=2), out=tmp_path, client=client)
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_a_sub_state_shifts_its_share_of_the_type_and_raises_its_genes(
    tmp_path: Path, client: Client
) -> None:
    state = {"name": "activated", "cell_type": "naive", "fraction": 0.2, "n_genes": 30,
             "log2_fold": 2.0, "group": "non_responder", "log_ratio": {0: 2.0}}  # fmt: skip
    cfg = small_config(n_patients=4, extra_patients=0, timepoints_months=[0, 3],
                       cells_per_sample=2500, n_genes=3000, sub_states=[state])  # fmt: skip
    result = simulate_cohort(cfg, out=tmp_path, client=client)
    sheet = pd.read_csv(result.samplesheet)
    share, b_share = {}, {}
    for row in sheet.itertuples():
        truth = pd.read_csv(tmp_path / "truth" / "cells" / f"{row.sample_id}.csv.gz",
                            keep_default_na=False)  # fmt: skip
        naive = truth[truth["b_subset"] == "naive"]
        assert set(truth.loc[truth["b_subset"] != "naive", "sub_state"]) == {""}
        key = (row.response, row.timepoint_months)
        share.setdefault(key, []).append((naive["sub_state"] == "activated").mean())
        b_share.setdefault(key, []).append(len(naive) / len(truth))
    planted = np.mean(share[("non_responder", 0)])
    assert planted > 0.45  # logit(0.2) + 2 -> ~0.65, with patient and sample variation
    for key in [("responder", 0), ("responder", 3), ("non_responder", 3)]:
        assert np.mean(share[key]) < 0.35
    # the naive cells' own share is not shifted by the sub-state
    assert abs(np.mean(b_share[("non_responder", 0)]) - np.mean(b_share[("responder", 0)])) < 0.015
    # the sub-state's cells carry its genes: more counts of them than the type's other cells
    sample = sheet[(sheet["response"] == "non_responder") & (sheet["timepoint_months"] == 0)].iloc[
        0
    ]
    adata = sc.read_10x_h5(tmp_path / sample["path"])
    truth = pd.read_csv(tmp_path / "truth" / "cells" / f"{sample['sample_id']}.csv.gz",
                        keep_default_na=False)  # fmt: skip
    in_state = (truth["sub_state"] == "activated").to_numpy()
    rest = ((truth["b_subset"] == "naive") & ~in_state).to_numpy()
    x = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    per_gene = (x[in_state].mean(axis=0) + 0.01) / (x[rest].mean(axis=0) + 0.01)
    assert (per_gene > 2.5).sum() >= 15  # most of its 30 genes, ~4-fold

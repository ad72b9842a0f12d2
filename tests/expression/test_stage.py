"""The expression stage on the small cohort analysed by `immunoprofile run` (B cells and
naive B cells tested, as the shared config asks)."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipeline.abundance import bh_qvalues, contrast_names
from pipeline.cohort import open_cohort
from pipeline.expression._pseudobulk import sums_dtype
from pipeline.simulate import SimulationResult

from ..conftest import CommandRun

DE_CONTRACT = ["level", "cell_type", "gene", "contrast", "log2fc", "lfc_se", "pvalue", "qvalue",
               "base_mean", "n_samples", "method"]  # fmt: skip


@pytest.fixture(scope="module")
def pseudobulk(analysed_small: CommandRun) -> ad.AnnData:
    return ad.read_zarr(analysed_small.workdir / "expression" / "pseudobulk.zarr")


@pytest.fixture(scope="module")
def de(analysed_small: CommandRun) -> pd.DataFrame:
    return pd.read_csv(analysed_small.workdir / "expression" / "de.csv")


def test_pseudobulk_is_the_sum_of_each_groups_raw_counts(
    analysed_small: CommandRun, small_cohort: SimulationResult, pseudobulk: ad.AnnData
) -> None:
    """X (written from the sums the stage keeps on disk while it runs; their scratch
    folder gone after it) holds each group's summed raw counts."""
    workdir = analysed_small.workdir
    assert not list(workdir.glob(".expression-sums*"))
    obs = ad.read_zarr(workdir / "cohort.zarr").obs
    x = sp.csr_matrix(open_cohort(workdir).X.compute())
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    expected = {}
    for level in ("lineage", "b_subset"):
        labels = obs[level].astype(str).to_numpy()
        for (sample, label), rows in (
            pd.DataFrame({"s": obs["sample_id"].astype(str).to_numpy(), "t": labels})[
                keep & ~np.isin(labels, ["", "unassigned", "nan"])
            ]
            .groupby(["s", "t"])
            .groups.items()
        ):
            expected[f"{sample}:{level}:{label}"] = (
                len(rows),
                np.asarray(x[rows].sum(axis=0)).ravel(),
            )
    assert set(pseudobulk.obs_names) == set(expected)
    for name in pseudobulk.obs_names:
        n, total = expected[name]
        assert pseudobulk.obs.loc[name, "n_cells"] == n
        np.testing.assert_array_equal(np.asarray(pseudobulk[name].X).ravel(), total)
    assert list(pseudobulk.var_names) == list(open_cohort(workdir).var_names)
    assert pseudobulk.X.dtype == np.int32  # every sample's total count fits
    cols = {"sample_id", "level", "cell_type", "n_cells", "patient_id", "timepoint_months",
            "response", "batch", "in_models"}  # fmt: skip
    assert cols <= set(pseudobulk.obs.columns)
    assert pseudobulk.obs["in_models"].equals(pseudobulk.obs["n_cells"] >= 10)
    # the samplesheet's further columns, each sample's own values
    sheet = pd.read_csv(small_cohort.samplesheet).set_index("sample_id")
    extra = ["sex", "age", "sledai"]
    assert set(extra) <= set(sheet.columns)
    got = pseudobulk.obs.set_index(pseudobulk.obs["sample_id"].astype(str))[extra]
    for column in extra:
        assert got[column].astype(sheet[column].dtype).equals(sheet.loc[got.index, column]), column


def test_de_table_follows_the_contract(de: pd.DataFrame, analysed_small: CommandRun) -> None:
    assert list(de.columns) == DE_CONTRACT
    assert set(de["cell_type"]) == {"B", "naive"}
    assert set(de["contrast"]) <= set(contrast_names([0, 3, 6]))
    assert set(de["method"]) == {"deseq2_across_patients", "deseq2_patients_blocked"}
    for _, part in de.groupby(["cell_type", "contrast"]):
        np.testing.assert_allclose(part["qvalue"], bh_qvalues(part["pvalue"].to_numpy()))
        assert part["gene"].is_unique
    summary = json.loads((analysed_small.workdir / "expression" / "summary.json").read_text())
    assert summary["cell_types_tested"] == ["lineage/B", "b_subset/naive"]
    assert summary["genes_tested"]["lineage/B"] == de.query("cell_type == 'B'")["gene"].nunique()


def test_planted_changes_in_naive_b_cells_are_found(
    de: pd.DataFrame, small_cohort: SimulationResult
) -> None:
    """25 genes fall by log2 1 in responders' naive B cells at months 3 and 6 (3 responders,
    ~20 naive B cells per sample): their estimates are near -1 and they reach p < 0.05
    far more often than the other genes."""
    truth = pd.read_csv(small_cohort.out / "truth" / "expression_contrasts.csv")
    planted = set(truth.query("cell_type == 'naive'")["gene"])
    naive = de.query("cell_type == 'naive' and contrast == 'time6@responder'")
    hit = naive[naive["gene"].isin(planted)]
    rest = naive[~naive["gene"].isin(planted)]
    assert len(hit) >= 15
    assert -2.0 < hit["log2fc"].median() < -0.5
    assert (hit["pvalue"] < 0.05).mean() > 5 * (rest["pvalue"] < 0.05).mean()


def test_pseudobulk_dtype_holds_every_sum() -> None:
    """int32 only when no sample's total count (the bound of its groups' sums) overflows it."""
    limit = int(np.iinfo(np.int32).max)
    assert sums_dtype([5_000_000, limit]) is np.int32
    assert sums_dtype([5_000_000, limit + 1]) is np.int64
    assert sums_dtype([5_000_000, None]) is np.int64  # a store without a recorded total
    assert sums_dtype([]) is np.int64

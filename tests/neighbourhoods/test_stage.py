"""The neighbourhoods stage on the small cohort analysed by `immunoprofile run`."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pipeline import load_config
from pipeline.labels import B_SUBSETS, LINEAGES
from pipeline.neighbourhoods import TEST_COLUMNS, majority_labels, make_neighbourhoods, spatial_fdr
from pipeline.neighbourhoods import _run as nrun

from ..conftest import CommandRun, _main


@pytest.fixture(scope="module")
def tests_csv(analysed_small: CommandRun) -> pd.DataFrame:
    return pd.read_csv(analysed_small.workdir / "neighbourhoods" / "tests.csv")


@pytest.fixture(scope="module")
def nhoods(analysed_small: CommandRun) -> ad.AnnData:
    return ad.read_zarr(analysed_small.workdir / "neighbourhoods" / "nhoods.zarr")


@pytest.fixture(scope="module")
def cohort_obs(analysed_small: CommandRun) -> pd.DataFrame:
    return ad.read_zarr(analysed_small.workdir / "cohort.zarr").obs


def test_tests_follow_the_contract_one_row_per_neighbourhood_and_contrast(
    analysed_small: CommandRun, tests_csv: pd.DataFrame, nhoods: ad.AnnData
) -> None:
    assert analysed_small.run[0] == 0, analysed_small.run[2]
    assert "neighbourhoods: " in analysed_small.run[1]
    assert list(tests_csv.columns) == list(TEST_COLUMNS)
    summary = json.loads((analysed_small.workdir / "neighbourhoods" / "summary.json").read_text())
    assert summary["n_nhoods"] == nhoods.n_obs > 50
    assert len(tests_csv) == nhoods.n_obs * len(summary["contrasts"])
    assert set(tests_csv["contrast"]) == set(summary["contrasts"])
    assert "response@month0" in summary["contrasts"]
    # the processing batch (rotating over timepoints here) is adjusted for
    batches = sorted(nhoods.var["batch"].unique())
    assert len(batches) == 3
    assert summary["covariates"] == [f"batch{b}" for b in batches[1:]]
    assert summary["covariate_not_adjusted"] is None
    assert (tests_csv["method"] == "glmm").all()
    tested = tests_csv.dropna(subset=["pvalue"])
    assert len(tested) > 0.5 * len(tests_csv)
    # an untested baseline row: its fit did not converge, or one group has none of its
    # cells at baseline (an infinite log-odds)
    fits = pd.read_csv(analysed_small.workdir / "neighbourhoods" / "fits.csv").set_index("nhood")
    base = tests_csv[tests_csv["contrast"] == "response@month0"].set_index("nhood")
    month0 = (nhoods.var["timepoint_months"] == 0).to_numpy()
    for group in ("responder", "non_responder"):
        cells = np.asarray(nhoods.X)[:, month0 & (nhoods.var["response"] == group).to_numpy()]
        base[f"none_{group}"] = cells.sum(axis=1)[base.index.to_numpy()] == 0
    explained = (
        ~fits.loc[base.index, "converged"].astype(bool)
        | base["none_responder"]
        | base["none_non_responder"]
    )
    np.testing.assert_array_equal(base["pvalue"].isna(), explained)
    assert (tested["ci_low"] <= tested["estimate"]).all()
    assert (tested["estimate"] <= tested["ci_high"]).all()
    for contrast, part in tests_csv.groupby("contrast"):
        weights = nhoods.obs.set_index("nhood").loc[part["nhood"], "weight"].to_numpy()
        np.testing.assert_allclose(
            part["spatial_fdr"], spatial_fdr(part["pvalue"].to_numpy(), weights), equal_nan=True
        )
        called = int((part["spatial_fdr"] < summary["alpha"]).sum())
        assert summary["called"].get(contrast, 0) == called


def test_counts_are_the_members_per_sample_and_index_cells_passed_qc(
    nhoods: ad.AnnData, cohort_obs: pd.DataFrame
) -> None:
    membership = nhoods.uns["membership"].tocsc()
    assert membership.shape == (len(cohort_obs), nhoods.n_obs)
    k = nhoods.uns["k"]
    np.testing.assert_array_equal(np.diff(membership.indptr), k)
    index = nhoods.obs["index_cell"].to_numpy()
    assert cohort_obs["qc_pass"].to_numpy()[index].all()
    assert (membership[index, np.arange(nhoods.n_obs)] == 1).all()
    members_qc = cohort_obs["qc_pass"].to_numpy()[membership.indices]
    assert members_qc.all()
    sample = cohort_obs["sample_id"].astype(str).to_numpy()
    expected = np.zeros(nhoods.shape, dtype=int)
    for j in range(nhoods.n_obs):
        cells = membership.indices[membership.indptr[j] : membership.indptr[j + 1]]
        ids, n = np.unique(sample[cells], return_counts=True)
        expected[j, nhoods.var_names.get_indexer(ids)] = n
    np.testing.assert_array_equal(np.asarray(nhoods.X), expected)
    passed = cohort_obs[cohort_obs["qc_pass"]]["sample_id"].astype(str).value_counts()
    np.testing.assert_array_equal(nhoods.var["n_cells"], passed.reindex(nhoods.var_names))


def _in_memory(config, workdir, cohort_obs: pd.DataFrame, k: int):
    """The QC-passed rows and `make_neighbourhoods` of them, the embedding and the graph
    read whole, with ``config``'s neighbourhoods and graph settings."""
    cfg = load_config(config)
    cohort = ad.read_zarr(workdir / "cohort.zarr")
    rows = np.flatnonzero(cohort_obs["qc_pass"].to_numpy(dtype=bool))
    x = np.asarray(cohort.obsm[cfg.graph.use_rep])[rows]
    graph = cohort.obsp["distances"].tocsr()[rows][:, rows]
    n = cfg.neighbourhoods
    hoods = make_neighbourhoods(x, graph, k, prop=n.prop, seed=n.seed,
                                exact_knn_below=cfg.graph.exact_knn_below,
                                knn_seed=cfg.graph.seed, max_index_cells=n.max_index_cells)  # fmt: skip
    return rows, hoods


def test_the_workers_find_the_neighbourhoods_of_the_in_memory_kernel(
    analysed_small: CommandRun, nhoods: ad.AnnData, cohort_obs: pd.DataFrame
) -> None:
    """The stage refines, searches and writes on the workers, shard by shard: the index
    cells and members are those `make_neighbourhoods` finds with the embedding and graph
    in memory."""
    rows, hoods = _in_memory(analysed_small.config, analysed_small.workdir, cohort_obs,
                             int(nhoods.uns["k"]))  # fmt: skip
    np.testing.assert_array_equal(nhoods.obs["index_cell"], rows[hoods.index_cells])
    membership = nhoods.uns["membership"].tocsc()
    members = membership.indices.reshape(nhoods.n_obs, -1)
    np.testing.assert_array_equal(members, np.sort(rows[hoods.members], axis=1))
    np.testing.assert_allclose(nhoods.obs["kth_distance"], hoods.kth_distance, rtol=1e-6)


def test_majority_labels_are_those_of_the_members(
    nhoods: ad.AnnData, cohort_obs: pd.DataFrame
) -> None:
    membership = nhoods.uns["membership"].tocsc()
    members = membership.indices.reshape(nhoods.n_obs, -1)
    for level, vocabulary in (("lineage", LINEAGES), ("b_subset", B_SUBSETS)):
        codes = pd.Categorical(cohort_obs[level].astype(object), categories=list(vocabulary))
        best, share = majority_labels(
            members, np.asarray(codes.codes, dtype=np.int64), len(vocabulary)
        )
        names = np.array([*vocabulary, ""], dtype=object)[best]
        np.testing.assert_array_equal(nhoods.obs[level].astype(object).fillna("").to_numpy(), names)
        np.testing.assert_allclose(nhoods.obs[f"{level}_fraction"], share)
    b = nhoods.obs[nhoods.obs["lineage"] == "B"]
    assert len(b) > 0 and (b["b_subset"] != "").all()


def test_the_stage_is_seeded_and_a_rerun_skips_it(
    analysed_small: CommandRun, tests_csv: pd.DataFrame, nhoods: ad.AnnData, tmp_path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    workdir = tmp_path / "w"
    shutil.copytree(analysed_small.workdir, workdir)
    args = [*analysed_small.args[:-1], str(workdir)]
    code, out, err = _main([*args, "--until", "neighbourhoods"])
    assert code == 0, err
    assert "neighbourhoods: unchanged inputs and parameters, skipped" in out
    # forced, with the search cut into shards of 500 cells and blocks of 7 neighbourhoods
    # (the membership written block by block): the same results
    monkeypatch.setattr(nrun, "SHARD_CELLS", 500)
    monkeypatch.setattr(nrun, "BLOCK_ENTRIES", 7 * int(nhoods.uns["k"]))
    code, out, err = _main([*args, "--until", "neighbourhoods", "--force", "neighbourhoods"])
    assert code == 0, err
    again = pd.read_csv(workdir / "neighbourhoods" / "tests.csv")
    pd.testing.assert_frame_equal(again, tests_csv)
    rerun = ad.read_zarr(workdir / "neighbourhoods" / "nhoods.zarr")
    assert (rerun.uns["membership"] != nhoods.uns["membership"]).nnz == 0
    np.testing.assert_array_equal(rerun.X, nhoods.X)
    assert not (workdir / "neighbourhoods" / "members.tmp.zarr").exists()


def test_a_cap_on_the_index_cells_bounds_the_neighbourhoods(
    analysed_small: CommandRun, cohort_obs: pd.DataFrame, tmp_path
) -> None:
    """``max_index_cells`` (for pooled cohorts): the workers draw at most that many
    candidates, and the neighbourhoods are those of the in-memory kernel with the cap."""
    workdir = tmp_path / "w"
    shutil.copytree(analysed_small.workdir, workdir)
    config = tmp_path / "c.yaml"
    config.write_text(analysed_small.config.read_text() + "neighbourhoods: {max_index_cells: 40}\n")
    args = ["run", str(config), *analysed_small.args[2:-1], str(workdir)]
    code, out, err = _main([*args, "--until", "neighbourhoods"])
    assert code == 0, err
    assert "neighbourhoods: unchanged" not in out  # the parameter is in the stage's digest
    capped = ad.read_zarr(workdir / "neighbourhoods" / "nhoods.zarr")
    summary = json.loads((workdir / "neighbourhoods" / "summary.json").read_text())
    assert summary["max_index_cells"] == 40 and summary["n_nhoods"] == capped.n_obs
    assert 10 <= capped.n_obs <= 40  # refined sampling merges some of the 40 candidates
    rows, hoods = _in_memory(config, workdir, cohort_obs, int(capped.uns["k"]))
    np.testing.assert_array_equal(capped.obs["index_cell"], rows[hoods.index_cells])
    tests = pd.read_csv(workdir / "neighbourhoods" / "tests.csv")
    assert tests["nhood"].nunique() == capped.n_obs


def test_the_report_shows_the_neighbourhoods(analysed_small: CommandRun) -> None:
    html = (analysed_small.workdir / "report" / "index.html").read_text()
    section = html.split('<section id="neighbourhoods">')[1].split("</section>")[0]
    summary = json.loads((analysed_small.workdir / "neighbourhoods" / "summary.json").read_text())
    assert f"{summary['n_nhoods']:,} neighbourhoods of {summary['k']} cells" in section
    assert section.count("<img") == 2  # the beeswarm and the UMAP
    findings = html.split('<section id="findings">')[1].split("</section>")[0]
    assert f"{summary['called']['response@month0']} of {summary['n_nhoods']:,}" in findings

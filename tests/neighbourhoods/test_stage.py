"""The neighbourhoods stage on the small cohort analysed by `immunoprofile run`."""

from __future__ import annotations

import json
import shutil

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pipeline import load_config
from pipeline.graph import neighbours_of
from pipeline.labels import B_SUBSETS, LINEAGES
from pipeline.neighbourhoods import TEST_COLUMNS, majority_labels, make_neighbourhoods, spatial_fdr
from pipeline.neighbourhoods import _lineage as lineage_module
from pipeline.neighbourhoods import _run as nrun
from pipeline.neighbourhoods._lineage import lineage_embedding, refined_positions

from ..conftest import CommandRun, _main


@pytest.fixture(scope="module")
def tests_csv(analysed_small: CommandRun) -> pd.DataFrame:
    return pd.read_csv(analysed_small.workdir / "neighbourhoods" / "tests.csv")


@pytest.fixture(scope="module")
def nhoods(analysed_small: CommandRun) -> ad.AnnData:
    return ad.read_zarr(analysed_small.workdir / "neighbourhoods" / "nhoods.zarr")


def _family(nhoods: ad.AnnData, denominator: str) -> tuple[np.ndarray, np.ndarray]:
    """One family's columns of nhoods.zarr and its member lists (neighbourhoods x k)."""
    cols = np.flatnonzero(nhoods.obs["denominator"].astype(str).to_numpy() == denominator)
    membership = nhoods.uns["membership"].tocsc()[:, cols]
    k = int(nhoods.obs["size"].iloc[cols[0]])
    return cols, membership.indices.reshape(cols.size, k)


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
    family = nhoods.obs["denominator"].astype(str)
    assert summary["n_nhoods"] == (family == "PBMC").sum() > 50
    assert list(summary["lineages"]) == ["B"]  # the default: B cells' own neighbourhoods
    assert summary["lineages"]["B"]["n_nhoods"] == (family == "B").sum() > 10
    assert summary["lineages"]["B"]["integrated_by"] == "patient_id"
    assert list(pd.unique(family)) == ["PBMC", "B"]  # numbered one family after the other
    np.testing.assert_array_equal(nhoods.obs["nhood"], np.arange(nhoods.n_obs))
    assert len(tests_csv) == nhoods.n_obs * len(summary["contrasts"])
    np.testing.assert_array_equal(
        tests_csv.drop_duplicates("nhood").set_index("nhood")["denominator"].sort_index(),
        family.to_numpy(),
    )
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
    # the spatial FDR within one family and contrast
    for (denominator, contrast), part in tests_csv.groupby(["denominator", "contrast"]):
        weights = nhoods.obs.set_index("nhood").loc[part["nhood"], "weight"].to_numpy()
        np.testing.assert_allclose(
            part["spatial_fdr"], spatial_fdr(part["pvalue"].to_numpy(), weights), equal_nan=True
        )
        called = int((part["spatial_fdr"] < summary["alpha"]).sum())
        numbers = summary["called"] if denominator == "PBMC" else (
            summary["lineages"][denominator]["called"])  # fmt: skip
        assert numbers.get(contrast, 0) == called


def test_counts_are_the_members_per_sample_and_index_cells_passed_qc(
    nhoods: ad.AnnData, cohort_obs: pd.DataFrame
) -> None:
    membership = nhoods.uns["membership"].tocsc()
    assert membership.shape == (len(cohort_obs), nhoods.n_obs)
    np.testing.assert_array_equal(np.diff(membership.indptr), nhoods.obs["size"])
    pbmc = (nhoods.obs["denominator"] == "PBMC").to_numpy()
    assert (nhoods.obs["size"][pbmc] == nhoods.uns["k"]).all()
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
    passed = cohort_obs[cohort_obs["qc_pass"]]
    sizes = passed["sample_id"].astype(str).value_counts()
    np.testing.assert_array_equal(nhoods.var["n_cells"], sizes.reindex(nhoods.var_names))
    # the B family: B cells only, out of each sample's QC-passed B cells
    _, members = _family(nhoods, "B")
    assert (cohort_obs["lineage"].astype(str).to_numpy()[members] == "B").all()
    b = passed[passed["lineage"].astype(str) == "B"]["sample_id"].astype(str).value_counts()
    np.testing.assert_array_equal(nhoods.var["n_cells_B"], b.reindex(nhoods.var_names).fillna(0))


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
    cols, members = _family(nhoods, "PBMC")
    np.testing.assert_array_equal(nhoods.obs["index_cell"].iloc[cols], rows[hoods.index_cells])
    np.testing.assert_array_equal(members, np.sort(rows[hoods.members], axis=1))
    np.testing.assert_allclose(nhoods.obs["kth_distance"].iloc[cols], hoods.kth_distance,
                               rtol=1e-6)  # fmt: skip


def test_the_b_family_is_cut_from_the_b_cells_integrated_over_patients(
    analysed_small: CommandRun, nhoods: ad.AnnData, cohort_obs: pd.DataFrame
) -> None:
    """The B cells' own neighbourhoods: Harmony over the patients on the B cells' PCs,
    refined sampling on their own kNN graph, each index cell's k nearest B cells; the
    same as the kernels run here in memory."""
    cfg = load_config(analysed_small.config)
    cohort = ad.read_zarr(analysed_small.workdir / "cohort.zarr")
    keep = cohort_obs["qc_pass"].to_numpy(dtype=bool)
    rows = np.flatnonzero(keep & (cohort_obs["lineage"].astype(str).to_numpy() == "B"))
    harmony = lineage_embedding(
        np.asarray(cohort.obsm["X_pca"])[rows], cohort_obs["patient_id"].astype(str).to_numpy()[rows],
        max_cells=cfg.neighbourhoods.lineage_harmony_max_cells, theta=cfg.integrate.harmony_theta,
        max_iter=cfg.integrate.harmony_max_iter, seed=cfg.neighbourhoods.seed,
    )  # fmt: skip
    x = harmony.embedding
    summary = json.loads((analysed_small.workdir / "neighbourhoods" / "summary.json").read_text())
    assert summary["lineages"]["B"]["harmony_fitted_cells"] == harmony.n_fitted == rows.size
    cols, members = _family(nhoods, "B")
    n_samples = nhoods.n_vars
    k = nrun.lineage_neighbourhood_size(cfg, n_samples, rows.size)
    assert members.shape[1] == k
    g, n = cfg.graph, cfg.neighbourhoods
    index = refined_positions(x, g.n_neighbors, prop=n.prop, seed=n.seed, most=n.max_index_cells,
                              exact_knn_below=g.exact_knn_below, knn_seed=g.seed)  # fmt: skip
    np.testing.assert_array_equal(nhoods.obs["index_cell"].iloc[cols], rows[index])
    nn = neighbours_of(x, index, k, exact_knn_below=g.exact_knn_below, seed=g.seed)
    np.testing.assert_array_equal(members, np.sort(rows[nn.indices], axis=1))
    np.testing.assert_allclose(nhoods.obs["kth_distance"].iloc[cols], nn.distances[:, -1],
                               rtol=1e-5)  # fmt: skip
    # integrated over the patients: a B neighbourhood draws on more patients than one of
    # the graph's embedding with the same index cells and k would
    raw = np.asarray(cohort.obsm[cfg.graph.use_rep])[rows]
    raw_nn = neighbours_of(raw, index, k, exact_knn_below=g.exact_knn_below, seed=g.seed)
    patient = cohort_obs["patient_id"].astype(str).to_numpy()[rows]

    def spread(ids: np.ndarray) -> float:  # mean over neighbourhoods of the largest patient share
        return float(np.mean([pd.Series(patient[r]).value_counts(normalize=True).iloc[0]
                              for r in ids]))  # fmt: skip

    assert spread(nn.indices) < spread(raw_nn.indices)


def test_majority_labels_are_those_of_the_members(
    nhoods: ad.AnnData, cohort_obs: pd.DataFrame
) -> None:
    for family in ("PBMC", "B"):
        cols, members = _family(nhoods, family)
        obs = nhoods.obs.iloc[cols]
        for level, vocabulary in (("lineage", LINEAGES), ("b_subset", B_SUBSETS)):
            codes = pd.Categorical(cohort_obs[level].astype(object), categories=list(vocabulary))
            best, share = majority_labels(
                members, np.asarray(codes.codes, dtype=np.int64), len(vocabulary)
            )
            names = np.array([*vocabulary, ""], dtype=object)[best]
            np.testing.assert_array_equal(obs[level].astype(object).fillna("").to_numpy(), names)
            np.testing.assert_allclose(obs[f"{level}_fraction"], share)
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
    b_size = int(nhoods.obs.loc[nhoods.obs["denominator"] == "B", "size"].iloc[0])
    monkeypatch.setattr(lineage_module, "BLOCK_ENTRIES", 5 * b_size)
    monkeypatch.setattr(lineage_module, "REFINE_CELLS", 9)
    code, out, err = _main([*args, "--until", "neighbourhoods", "--force", "neighbourhoods"])
    assert code == 0, err
    again = pd.read_csv(workdir / "neighbourhoods" / "tests.csv")
    pd.testing.assert_frame_equal(again, tests_csv)
    rerun = ad.read_zarr(workdir / "neighbourhoods" / "nhoods.zarr")
    assert (rerun.uns["membership"] != nhoods.uns["membership"]).nnz == 0
    np.testing.assert_array_equal(rerun.X, nhoods.X)
    assert not list((workdir / "neighbourhoods").glob("members*.tmp.zarr"))


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
    assert summary["max_index_cells"] == 40
    assert summary["n_nhoods"] == (capped.obs["denominator"] == "PBMC").sum()
    pbmc = int((capped.obs["denominator"] == "PBMC").sum())
    assert 10 <= pbmc <= 40  # refined sampling merges some of the 40 candidates
    rows, hoods = _in_memory(config, workdir, cohort_obs, int(capped.uns["k"]))
    cols, _ = _family(capped, "PBMC")
    np.testing.assert_array_equal(capped.obs["index_cell"].iloc[cols], rows[hoods.index_cells])
    assert summary["lineages"]["B"]["n_nhoods"] <= 40  # the cap holds for each family
    tests = pd.read_csv(workdir / "neighbourhoods" / "tests.csv")
    assert tests["nhood"].nunique() == capped.n_obs


def test_the_report_shows_the_neighbourhoods(analysed_small: CommandRun) -> None:
    html = (analysed_small.workdir / "report" / "index.html").read_text()
    section = html.split('<section id="neighbourhoods">')[1].split("</section>")[0]
    summary = json.loads((analysed_small.workdir / "neighbourhoods" / "summary.json").read_text())
    assert f"{summary['n_nhoods']:,} neighbourhoods of {summary['k']} cells" in section
    b = summary["lineages"]["B"]
    assert f"{b['n_nhoods']:,} neighbourhoods of {b['k']} B cells" in section
    assert section.count("<img") == 4  # per family: the beeswarm and the UMAP
    findings = html.split('<section id="findings">')[1].split("</section>")[0]
    assert f"{summary['called']['response@month0']} of {summary['n_nhoods']:,}" in findings
    assert (
        f"{b['called']['response@month0']} of {b['n_nhoods']:,} neighbourhoods of the B" in findings
    )

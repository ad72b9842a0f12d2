"""The neighbourhoods' kernels against direct computations on small data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipeline.abundance import bh_qvalues, contrast_table, fit_binomial_glmm, model_design
from pipeline.graph import (
    ivf_centroids,
    ivf_training_rows,
    n_lists_for,
    nearest_neighbors,
    neighbours_of,
    self_first,
)
from pipeline.graph._blocks import (
    coarse_block,
    replace_rows,
    search_shard,
    short_rows,
)
from pipeline.neighbourhoods import (
    draw_cells,
    estimable_contrasts,
    fit_neighbourhoods,
    majority_labels,
    membership_matrix,
    refined_index_cells,
    sample_counts,
    spatial_fdr,
)


def test_spatial_fdr_with_equal_weights_is_benjamini_hochberg() -> None:
    p = np.random.default_rng(0).uniform(size=200) ** 2
    p[[3, 50]] = np.nan
    np.testing.assert_allclose(spatial_fdr(p, np.ones_like(p)), bh_qvalues(p), equal_nan=True)


def test_spatial_fdr_weights_each_test_by_its_weight() -> None:
    # written out from Milo's definition: sum(w) * p_(i) / cumsum(w)_(i), then the running
    # minimum from the largest p down
    p = np.array([0.04, 0.01, 0.03, 0.5])
    w = np.array([1.0, 3.0, 1.0, 5.0])
    order_w = np.array([3.0, 1.0, 1.0, 5.0])  # weights in p's ascending order
    raw = 10.0 * np.array([0.01, 0.03, 0.04, 0.5]) / np.cumsum(order_w)
    expected_sorted = np.minimum.accumulate(raw[::-1])[::-1]
    expected = np.empty(4)
    expected[[1, 2, 0, 3]] = np.minimum(expected_sorted, 1)
    np.testing.assert_allclose(spatial_fdr(p, w), expected)
    # a neighbourhood in a dense region (small weight) adds little to the others' FDR
    assert spatial_fdr(p, w)[1] < bh_qvalues(p)[1]


def test_candidate_index_cells_are_prop_of_the_cells_up_to_the_cap() -> None:
    """``prop`` of the cells, seeded; ``max_index_cells`` caps only a pooled cohort's draw."""
    drawn = draw_cells(100_000, 0.05, seed=3)
    assert drawn.size == 5_000 and np.unique(drawn).size == 5_000
    assert (np.diff(drawn) > 0).all() and drawn[-1] < 100_000
    np.testing.assert_array_equal(draw_cells(100_000, 0.05, 3, most=5_000), drawn)
    np.testing.assert_array_equal(draw_cells(100_000, 0.05, 3, most=10**6), drawn)
    capped = draw_cells(100_000, 0.05, 3, most=1_234)
    assert capped.size == 1_234 and np.unique(capped).size == 1_234
    np.testing.assert_array_equal(capped, draw_cells(100_000, 0.05, 3, most=1_234))
    assert draw_cells(10, 0.01, 0).size == 1  # at least one


def test_refined_sampling_picks_the_member_nearest_to_the_median() -> None:
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0, 1, (300, 5)), rng.normal(6, 1, (300, 5))]).astype(np.float32)
    nn = nearest_neighbors(x, 10)
    graph = sp.csr_matrix(  # the graph stage's obsp/distances: each row's neighbours, self excluded
        (nn.distances[:, 1:].ravel(), nn.indices[:, 1:].ravel(), np.arange(0, 600 * 9 + 1, 9)),
        shape=(600, 600),
    )
    sampled = np.array([0, 5, 400, 599])
    got = refined_index_cells(x, graph, sampled)
    expected = set()
    for r in sampled:
        members = nn.indices[r]
        centre = np.median(x[members], axis=0)
        expected.add(int(members[np.argmin(((x[members] - centre) ** 2).sum(axis=1))]))
    assert got.tolist() == sorted(expected)


@pytest.mark.parametrize("exact_below", [10_000, 100])  # exact and inverted-file search
@pytest.mark.parametrize("shard", [700, 9])  # uneven shards; shards smaller than k
def test_a_search_shard_by_shard_finds_the_neighbours_of_one_index(
    exact_below: int, shard: int
) -> None:
    """The workers search the cells a shard at a time (the inverted lists trained once, on
    the cells `knn_index` trains on; each query's probes found once): the same
    neighbours as one index."""
    x = np.random.default_rng(6).normal(size=(3000, 8)).astype(np.float32)
    rows = np.arange(0, 3000, 37)
    whole = neighbours_of(x, rows, 12, exact_knn_below=exact_below, seed=3)
    centroids = None
    if not whole.exact:
        centroids = ivf_centroids(x[ivf_training_rows(3000, 3)], n_lists_for(3000), 3)
    queries = np.ascontiguousarray(x[rows])
    probes = coarse_block(queries, centroids)
    found = None
    for a in range(0, 3000, shard):
        points = np.ascontiguousarray(x[a : a + shard])
        found = search_shard(
            queries, probes, points, coarse_block(points, centroids), a, centroids, 12, found
        )
    assert found is not None
    if short_rows(found).size:  # as neighbours_of: exactly, over every shard
        assert centroids is not None
        missing = short_rows(found)
        exact = None
        for a in range(0, 3000, shard):
            points = np.ascontiguousarray(x[a : a + shard])
            exact = search_shard(queries[missing], None, points, None, a, None, 12, exact)
        assert exact is not None
        found = replace_rows(found, missing, exact)
    ids, distances = found[0].copy(), np.sqrt(np.maximum(found[1], 0))
    self_first(ids, distances, own=rows)
    np.testing.assert_array_equal(ids[:, 0], rows)
    np.testing.assert_array_equal(np.sort(ids, 1), np.sort(whole.indices, 1))
    np.testing.assert_allclose(distances, whole.distances, rtol=1e-5, atol=1e-5)


def test_counts_and_membership_match_a_dense_computation() -> None:
    rng = np.random.default_rng(4)
    members = np.array([rng.choice(50, 7, replace=False) for _ in range(9)])
    codes = rng.integers(0, 4, 50)
    dense = np.zeros((50, 9), dtype=int)
    for j, m in enumerate(members):
        dense[m, j] = 1
    membership = membership_matrix(members, 50)
    assert sp.issparse(membership) and membership.shape == (50, 9)
    np.testing.assert_array_equal(membership.toarray(), dense)
    onehot = np.eye(4, dtype=int)[codes]
    np.testing.assert_array_equal(sample_counts(members, codes, 4), dense.T @ onehot)


def test_majority_labels_ignore_unlabelled_cells_but_count_them_in_the_share() -> None:
    members = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])
    codes = np.array([1, 1, 0, -1, -1, -1, -1, -1])
    best, share = majority_labels(members, codes, 2)
    assert best.tolist() == [1, -1]
    np.testing.assert_allclose(share, [0.5, 0.0])


def _samples(n_patients: int = 8) -> pd.DataFrame:
    """Half responders, half not, each at months 0 and 3."""
    patients = [f"p{i}" for i in range(n_patients)]
    half = n_patients // 2
    return pd.DataFrame({
        "sample_id": [f"{p}_{t}" for p in patients for t in (0, 3)],
        "patient_id": [p for p in patients for _ in (0, 3)],
        "timepoint_months": [t for _ in patients for t in (0, 3)],
        "response": [("responder" if i < half else "non_responder")
                     for i in range(n_patients) for _ in (0, 3)],
    })  # fmt: skip


def _design():
    return model_design(_samples())


def test_each_neighbourhood_is_the_projects_glmm_on_its_counts() -> None:
    design = _design()
    rng = np.random.default_rng(5)
    totals = rng.integers(800, 1200, 16).astype(float)
    counts = rng.binomial(totals.astype(int)[None, :].repeat(3, 0), 0.02).astype(float)
    got = fit_neighbourhoods(counts, totals, design)
    contrasts = estimable_contrasts(design)
    for i in range(3):
        fit = fit_binomial_glmm(counts[i], totals, design.x, design.patient)
        table = contrast_table(fit.beta, fit.vcov, design.contrasts, design.df)
        table = table.set_index("contrast").loc[contrasts]
        np.testing.assert_allclose(got.estimate[i], table["estimate"], rtol=1e-6)
        np.testing.assert_allclose(got.pvalue[i], table["pvalue"], rtol=1e-6)
    assert got.fits["converged"].all()


def test_a_design_cell_without_cells_makes_its_contrasts_not_estimable() -> None:
    design = _design()
    totals = np.full(16, 1000.0)
    counts = np.full((1, 16), 20.0)
    nr_month3 = ((design.samples["response"] == "non_responder")
                 & (design.samples["timepoint_months"] == 3)).to_numpy()  # fmt: skip
    counts[0, nr_month3] = 0
    got = fit_neighbourhoods(counts, totals, design)
    contrasts = estimable_contrasts(design)
    blank = {c for c, v in zip(contrasts, got.estimate[0], strict=True) if np.isnan(v)}
    assert blank == {"response@month3", "time3@non_responder", "response:time3"}
    assert np.isfinite(got.pvalue[0][contrasts.index("response@month0")])


def test_a_planted_baseline_difference_is_called_and_the_rest_is_not() -> None:
    rng = np.random.default_rng(6)
    samples = _samples(20)
    design = model_design(samples)
    totals = rng.integers(1500, 2500, 40).astype(float)
    nonresponder = (samples["response"] == "non_responder").to_numpy()
    patient = design.patient
    n_hoods, planted = 40, np.arange(10)
    logits = np.log(0.02) + rng.normal(0, 0.3, (n_hoods, 20))[:, patient]
    logits += rng.normal(0, 0.15, (n_hoods, 40))
    logits[planted] += 1.2 * nonresponder
    counts = rng.binomial(totals.astype(int), 1 / (1 + np.exp(-logits))).astype(float)
    fits = fit_neighbourhoods(counts, totals, design)
    j = estimable_contrasts(design).index("response@month0")
    called = spatial_fdr(fits.pvalue[:, j], np.ones(n_hoods)) < 0.1
    assert called[planted].sum() >= 9
    assert called[10:].sum() <= 1
    assert (fits.estimate[planted, j] > 0.6).all()


def test_a_large_lineage_is_integrated_from_a_subsample_of_its_cells() -> None:
    """Above ``max_cells`` a lineage's Harmony is fitted on a subsample stratified by
    patient and every other cell corrected by the fitted model: each cell gets an
    embedding, and the patients' shift is taken out as in a fit on all cells."""
    from pipeline.neighbourhoods._lineage import lineage_embedding

    rng = np.random.default_rng(5)
    patient = np.repeat(["P1", "P2"], 2000)
    pcs = rng.normal(size=(4000, 10))
    pcs[patient == "P2", 0] += 4.0  # a patient's shift
    part = lineage_embedding(pcs, patient, max_cells=1000, theta=2.0, max_iter=10, seed=0)
    whole = lineage_embedding(pcs, patient, max_cells=None, theta=2.0, max_iter=10, seed=0)
    assert part.n_fitted == 1000 and whole.n_fitted == 4000
    assert part.embedding.shape == (4000, 10) and np.isfinite(part.embedding).all()
    gaps = [r.embedding[patient == "P2", 0].mean() - r.embedding[patient == "P1", 0].mean()
            for r in (part, whole)]  # fmt: skip
    assert max(abs(g) for g in gaps) < 2.0  # from 4
    assert abs(gaps[0] - gaps[1]) < 0.25

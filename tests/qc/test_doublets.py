"""Our scrublet equals scanpy's `pp.scrublet` on the same counts and seed."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
from distributed import Client

from pipeline.qc import scrublet_scores
from pipeline.simulate import SimulationResult, simulate_cohort
from tests.conftest import small_config

# scanpy's expected rate, no centring, every simulated doublet scored
ALL_SCORED = {"expected_rate": 0.05, "mean_center": False, "sim_scored_fraction": 1.0}


@pytest.fixture(scope="module")
def counts(tmp_path_factory: pytest.TempPathFactory, client: Client) -> sp.csr_matrix:
    """One simulated sample of ~2,500 cells (with the simulator's 6% doublets)."""
    cfg = small_config(
        seed=3, n_patients=2, extra_patients=0, timepoints_months=[0], cells_per_sample=2500,
        n_genes=3000,
    )  # fmt: skip
    result: SimulationResult = simulate_cohort(
        cfg, out=tmp_path_factory.mktemp("dbl"), client=client
    )
    sheet = pd.read_csv(result.samplesheet)
    path = Path(result.samplesheet).parent / sheet["path"].iloc[0]
    return sp.csr_matrix(sc.read_10x_h5(path).X, dtype=np.float32)


@pytest.mark.parametrize("mean_center", [False, True])
def test_scores_and_calls_equal_scanpy(counts: sp.csr_matrix, mean_center: bool) -> None:
    ref = ad.AnnData(counts.copy())
    sc.pp.scrublet(
        ref, expected_doublet_rate=0.06, random_state=0, use_approx_neighbors=False,
        mean_center=mean_center,
    )  # fmt: skip
    ours = scrublet_scores(
        counts, expected_rate=0.06, seed=0, mean_center=mean_center, sim_scored_fraction=1.0
    )
    theirs = ref.obs["doublet_score"].to_numpy()
    # the same simulated pairs, PCs (up to sign) and exact neighbours: scores equal except
    # where float rounding reorders a tie at the k-th neighbour
    same = np.isclose(ours.score, theirs, rtol=1e-6)
    assert same.mean() >= 0.99
    assert np.corrcoef(ours.score, theirs)[0, 1] >= 0.999
    # the automatic threshold (minimum of a smoothed histogram) may move by a bin
    agree = ours.called == ref.obs["predicted_doublet"].to_numpy(dtype=bool)
    assert agree.mean() >= 0.98
    assert ours.called.sum() > 0


def test_too_few_genes_give_nan_and_seeds_reproduce(counts: sp.csr_matrix) -> None:
    x = counts.tolil()
    x[0, :] = 0
    x[0, 0] = 1
    a = scrublet_scores(x.tocsr(), seed=1, **ALL_SCORED)
    b = scrublet_scores(x.tocsr(), seed=1, **ALL_SCORED)
    assert np.isnan(a.score[0]) and not a.called[0]
    np.testing.assert_array_equal(a.score, b.score)
    assert np.isfinite(a.score[1:]).all()


def test_scoring_a_share_of_the_simulated_doublets_keeps_the_calls(counts: sp.csr_matrix) -> None:
    full = scrublet_scores(
        counts, expected_rate=0.06, seed=0, mean_center=False, sim_scored_fraction=1.0
    )
    part = scrublet_scores(
        counts, expected_rate=0.06, seed=0, mean_center=False, sim_scored_fraction=0.3
    )
    np.testing.assert_array_equal(part.score, full.score)  # observed cells: the same search
    assert (part.called == full.called).mean() >= 0.99
    assert abs(part.threshold - full.threshold) < 0.05


def test_scoring_selected_rows_equals_scoring_their_submatrix(counts: sp.csr_matrix) -> None:
    rows = np.flatnonzero(np.random.default_rng(3).random(counts.shape[0]) < 0.8)
    on_rows = scrublet_scores(counts, rows, seed=2, **ALL_SCORED)
    on_copy = scrublet_scores(counts[rows], seed=2, **ALL_SCORED)
    np.testing.assert_array_equal(on_rows.score, on_copy.score)
    np.testing.assert_array_equal(on_rows.called, on_copy.called)
    assert on_rows.threshold == on_copy.threshold


def test_scaled_gram_equals_the_product_of_the_scaled_matrix() -> None:
    """The Gram matrix of diag(r) X diag(c), summed over dense float32 blocks, equals the
    float64 product of the scaled matrix, also across blocks (more rows than one block)."""
    from pipeline.qc._doublets import GRAM_BLOCK, scaled_gram

    rng = np.random.default_rng(5)
    x = sp.random(GRAM_BLOCK * 2 + 37, 60, density=0.1, random_state=6, format="csr")
    x.data = rng.poisson(3.0, x.nnz).astype(np.float32) + 1
    r, c = rng.uniform(0.5, 2.0, x.shape[0]), rng.uniform(0.1, 10.0, x.shape[1])
    y = sp.diags(r) @ x.astype(np.float64) @ sp.diags(c)
    gram, sums = scaled_gram(x, r, c)
    np.testing.assert_allclose(gram, (y.T @ y).toarray(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sums, np.asarray(y.sum(axis=0)).ravel(), rtol=1e-5)

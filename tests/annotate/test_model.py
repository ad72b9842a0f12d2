"""The marker-constrained NB mixture on data with known labels."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.annotate import (
    Consensus,
    MarkerModel,
    fit_marker_model,
    graph_consensus,
    posteriors,
    product_consensus,
)
from pipeline.annotate._model import label_probabilities, sample_label_probabilities


def _simulate(n: int, seed: int) -> tuple:
    """Four programs over six features; program 3 is defined by absence only (like DN1:
    it expresses feature 0, which programs 1 and 2 share, and nothing of theirs)."""
    rng = np.random.default_rng(seed)
    marker = np.array(
        [
            [1, 0, 0, 0, 0, 1],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 0, 1, 0, 0],
            [1, 0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    high = np.array(
        [[20, 0, 0, 0, 0, 15], [12, 10, 8, 0, 0, 0], [12, 10, 0, 8, 0, 0], [15, 0, 0, 0, 0, 0]]
    )
    rates = np.where(marker, high, 0.05)
    truth = rng.choice(4, size=n, p=[0.4, 0.3, 0.2, 0.1])
    size = rng.lognormal(np.log(0.35), 0.3, size=n)
    mean = size[:, None] * rates[truth]
    shape = 5.0
    counts = rng.poisson(rng.gamma(shape, mean / shape))
    return sp.csr_matrix(counts.astype(np.float32)), size, truth, marker, rates, shape


def test_em_recovers_labels_including_an_absence_defined_program() -> None:
    x, size, truth, marker, rates, shape = _simulate(4000, seed=1)
    model = fit_marker_model(
        x, size, programs=("a", "b", "c", "d"), features=tuple("uvwxyz"), marker=marker
    )
    assert model.converged
    called = posteriors(x, size, model).argmax(axis=1)
    # as good as the classifier that knows the true parameters
    oracle = MarkerModel(
        model.programs, model.features, marker, rates, np.full(6, shape),
        np.log([0.4, 0.3, 0.2, 0.1]), 0, True,
    )  # fmt: skip
    best = (posteriors(x, size, oracle).argmax(axis=1) == truth).mean()
    assert best > 0.9
    assert (called == truth).mean() >= best - 0.01
    absent = truth == 3
    assert (called[absent] == 3).mean() >= (
        posteriors(x, size, oracle).argmax(axis=1)[absent] == 3
    ).mean() - 0.03
    # unlisted features sit at one shared background rate per feature
    assert np.allclose(
        model.rate[~marker], np.broadcast_to(model.rate.min(axis=0), marker.shape)[~marker]
    )
    assert (model.rate[marker] >= model.rate.min(axis=0)[np.nonzero(marker)[1]]).all()


def test_a_free_feature_keeps_an_absence_defined_program_that_expresses_it() -> None:
    """Program d also expresses feature v at program b's level (as DN1 cells keep switched
    memory's genes other than CD27). Modelled as absent from d, v pulls d's cells into b
    and the program collapses; left free for d, they are found as well as by the oracle."""
    rng = np.random.default_rng(5)
    x, size, truth, marker, rates, shape = _simulate(4000, seed=5)
    d = truth == 3
    extra = rng.poisson(rng.gamma(shape, size[d] * rates[1, 1] / shape))
    x = sp.lil_matrix(x)
    x[np.flatnonzero(d), 1] = extra[:, None].astype(np.float32)
    x = sp.csr_matrix(x)
    names, feats = ("a", "b", "c", "d"), tuple("uvwxyz")
    free = np.zeros_like(marker)
    free[3, 1] = True
    strict = fit_marker_model(x, size, programs=names, features=feats, marker=marker)
    loose = fit_marker_model(x, size, programs=names, features=feats, marker=marker, free=free)
    true_rates = rates.copy()
    true_rates[3, 1] = rates[1, 1]
    oracle = MarkerModel(names, feats, marker, true_rates, np.full(6, shape),
                         np.log([0.4, 0.3, 0.2, 0.1]), 0, True)  # fmt: skip
    recall = {
        name: (posteriors(x, size, m).argmax(axis=1)[d] == 3).mean()
        for name, m in (("strict", strict), ("free", loose), ("oracle", oracle))
    }
    assert recall["oracle"] > 0.85, recall
    assert recall["strict"] < 0.5, recall
    assert recall["free"] >= recall["oracle"] - 0.03, recall
    assert loose.rate[3, 1] == pytest.approx(rates[1, 1], rel=0.15)
    # a free feature neither sets the background nor is held to it
    assert loose.rate[0, 1] == pytest.approx(loose.rate[~marker[:, 1] & ~free[:, 1], 1].min())


def test_overdispersion_is_not_set_by_the_highest_expressing_program() -> None:
    """Feature u is far more variable in program a (shape 0.5, like plasmablasts' CD27)
    than in the three others (shape 5), which express it less: the feature's shape is
    theirs, not the one a pool of the moments would give (dominated by a's counts)."""
    rng = np.random.default_rng(7)
    x, size, truth, marker, rates, shape = _simulate(4000, seed=7)
    a = truth == 0
    x = sp.lil_matrix(x)
    x[np.flatnonzero(a), 0] = rng.poisson(rng.gamma(0.5, size[a] * rates[0, 0] / 0.5))[:, None]
    model = fit_marker_model(sp.csr_matrix(x), size, programs=("a", "b", "c", "d"),
                             features=tuple("uvwxyz"), marker=marker)  # fmt: skip
    assert model.theta[0] == pytest.approx(shape, rel=0.4), model.theta


def test_neighbours_vote_with_their_evidence_when_the_shares_are_given() -> None:
    """A small program (share 0.1) whose cells lean to it only weakly: their posteriors
    favour the large program (share 0.9), and a mix of posteriors keeps them there; with
    the shares taken out of the neighbours' votes they are found."""
    prior = np.array([0.9, 0.1])
    evidence = np.array([1.0, 4.0])  # likelihood ratio 4 for the small program
    p = prior * evidence / (prior * evidence).sum()  # [0.75, 0.25]
    prob = np.tile(p, (4, 1)).astype(np.float32)
    graph = sp.csr_matrix(np.ones((4, 4)) - np.eye(4))
    assert (graph_consensus(prob, graph, 0.5).argmax(axis=1) == 0).all()
    mixed = graph_consensus(prob, graph, 0.5, np.log(prior))
    np.testing.assert_allclose(mixed[0], 0.5 * p + 0.5 * np.array([0.2, 0.8]), rtol=1e-6)
    assert (mixed.argmax(axis=1) == 1).all()


def test_product_consensus_is_own_posterior_times_tempered_neighbour_evidence() -> None:
    """own * (neighbours' mean evidence) ** exponent, renormalized; the neighbours' shares
    taken out of their votes; isolated cells and exponent 0 leave the posteriors as
    they are."""
    prior = np.array([0.6, 0.3, 0.1])
    prob = np.array(
        [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]], dtype=np.float32
    )
    graph = sp.csr_matrix(np.array([[0, 1, 2, 0], [1, 0, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]]))
    mixed = product_consensus(prob, graph, 2.5, np.log(prior))
    evidence = prob / prior
    evidence /= evidence.sum(axis=1, keepdims=True)
    neighbours = (1 * evidence[1] + 2 * evidence[2]) / 3
    expected = prob[0] * neighbours**2.5
    np.testing.assert_allclose(mixed[0], expected / expected.sum(), rtol=1e-5)
    np.testing.assert_allclose(mixed[3], prob[3])
    np.testing.assert_allclose(product_consensus(prob, graph, 0.0, np.log(prior)), prob)
    assert mixed.dtype == np.float32


def test_unanimous_neighbours_decide_a_weak_cell_and_split_ones_do_not() -> None:
    """A cell whose own posterior leans 0.8 : 0.2 to program a, among neighbours whose
    evidence agrees on b (0.3 : 0.7): the product follows the neighbours, where a linear
    mix at weight 0.5 cannot (0.55 : 0.45). Among neighbours split 0.5 : 0.5 the product
    keeps the cell's own posterior exactly."""
    prior = np.log(np.array([0.5, 0.5]))
    graph = sp.csr_matrix(np.array([[0, 1, 1], [1, 0, 0], [1, 0, 0]]))
    unanimous = np.array([[0.8, 0.2], [0.3, 0.7], [0.3, 0.7]], dtype=np.float32)
    assert product_consensus(unanimous, graph, 2.5, prior)[0].argmax() == 1
    assert graph_consensus(unanimous, graph, 0.5, prior)[0].argmax() == 0
    split = np.array([[0.8, 0.2], [0.1, 0.9], [0.9, 0.1]], dtype=np.float32)
    np.testing.assert_allclose(product_consensus(split, graph, 2.5, prior)[0], [0.8, 0.2])


def test_consensus_kinds_and_their_requirements() -> None:
    prob = np.array([[0.8, 0.2], [0.3, 0.7]], dtype=np.float32)
    graph = sp.csr_matrix(np.array([[0, 1], [1, 0]]))
    log_prior = np.log(np.array([0.5, 0.5]))
    np.testing.assert_allclose(
        Consensus("product", 2.5, evidence=True).apply(prob, graph, log_prior),
        product_consensus(prob, graph, 2.5, log_prior),
    )
    np.testing.assert_allclose(
        Consensus("linear", 0.5).apply(prob, graph, log_prior), graph_consensus(prob, graph, 0.5)
    )
    assert not Consensus("product", 0.0, evidence=True).active
    with pytest.raises(ValueError, match="evidence"):
        Consensus("product", 2.5)
    with pytest.raises(ValueError, match="log_prior"):
        Consensus("linear", 0.5, evidence=True).apply(prob, graph, None)


def test_posteriors_do_not_depend_on_how_cells_are_chunked() -> None:
    x, size, _, marker, _, _ = _simulate(1000, seed=2)
    model = fit_marker_model(
        x, size, programs=("a", "b", "c", "d"), features=tuple("uvwxyz"), marker=marker
    )
    whole = posteriors(x, size, model)
    parts = np.vstack(
        [posteriors(x[i : i + 137], size[i : i + 137], model) for i in range(0, 1000, 137)]
    )
    np.testing.assert_array_equal(whole, parts)


def test_graph_consensus_mixes_neighbours_and_keeps_isolated_cells() -> None:
    prob = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.2, 0.8]], dtype=np.float32)
    graph = sp.csr_matrix(np.array([[0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]))
    mixed = graph_consensus(prob, graph, 0.5)
    np.testing.assert_allclose(mixed[0], [0.5, 0.5])
    np.testing.assert_allclose(mixed[1], [0.5, 0.5])
    np.testing.assert_allclose(mixed[3], prob[3])
    np.testing.assert_allclose(graph_consensus(prob, graph, 0.0), prob)


def test_graph_restricted_to_cells_equals_scipy_indexing() -> None:
    """The stage's one-copy restriction of the kNN graph to a level's cells equals
    ``graph[cells][:, cells]``, with edges to other cells (B subsets) and without them
    (lineage: the kept cells hold every edge)."""
    from pipeline.annotate._stage import _restrict

    rng = np.random.default_rng(0)
    g = sp.random(300, 300, density=0.05, random_state=0, format="csr", dtype=np.float32)
    g = sp.csr_matrix(g + g.T)
    kept = np.sort(rng.choice(300, 200, replace=False))
    inner = g[kept][:, kept].tocoo()
    only_kept = sp.csr_matrix(
        (inner.data, (kept[inner.row], kept[inner.col])), shape=g.shape, dtype=np.float32
    )
    for graph, cells in ((g, np.sort(rng.choice(300, 120, replace=False))), (only_kept, kept)):
        got, want = _restrict(graph, cells), graph[cells][:, cells]
        assert got.shape == want.shape and got.nnz == want.nnz
        assert abs(got - want).max() == 0
    assert _restrict(None, kept) is None


def test_label_probabilities_follow_each_samples_composition() -> None:
    """Two programs told apart weakly (likelihood ratio 3:1 either way); sample A is 50%
    program 0, sample B 10%. Under the cohort's shares (30%) the expected shares of the
    two samples are pulled together; under each sample's own composition (EM) they are
    the samples' true shares, and mass on an unsupported program goes to unassigned."""
    rng = np.random.default_rng(0)
    n = 20000
    sample = np.repeat(["A", "B"], n)
    truth = np.concatenate([rng.random(n) < 0.5, rng.random(n) < 0.1])
    right = rng.random(2 * n) < 0.75  # the evidence points the right way 3 times in 4
    favours0 = np.where(right, truth, ~truth)
    likelihood = np.where(favours0[:, None], [0.75, 0.25], [0.25, 0.75])
    log_prior = np.log(np.array([0.3, 0.7]))
    prob = likelihood * np.exp(log_prior)
    prob /= prob.sum(axis=1, keepdims=True)
    labels = ("x", "y")
    pooled = label_probabilities(prob, labels, labels)
    per_sample = sample_label_probabilities(
        prob, log_prior, sample, program_labels=labels, vocabulary=labels,
        supported=np.array([True, True]),
    )  # fmt: skip
    assert per_sample.shape == (2 * n, 3) and np.allclose(per_sample.sum(axis=1), 1, atol=1e-5)
    for name, share in (("A", 0.5), ("B", 0.1)):
        rows = sample == name
        assert per_sample[rows, 0].mean() == pytest.approx(share, abs=0.02)
    gap_pooled = pooled[sample == "A", 0].mean() - pooled[sample == "B", 0].mean()
    gap = per_sample[sample == "A", 0].mean() - per_sample[sample == "B", 0].mean()
    assert gap == pytest.approx(0.4, abs=0.03) and gap_pooled < 0.3
    unsupported = sample_label_probabilities(
        prob, log_prior, sample, program_labels=labels, vocabulary=labels,
        supported=np.array([True, False]),
    )  # fmt: skip
    assert np.allclose(unsupported[:, 1], 0) and np.allclose(
        unsupported[:, 2], per_sample[:, 1], atol=1e-5
    )


def test_a_samples_label_probabilities_depend_on_its_own_cells_only() -> None:
    """Each sample's shares are estimated from its own cells (the EM runs one sample at
    a time, until its own shares settle): a sample's cells get the same probabilities
    with or without the others, in whatever order the cells come. Sample B's cells are
    told apart weakly, so its EM takes many more steps than A's."""
    rng = np.random.default_rng(1)
    n = 3000
    sample = rng.choice(np.array(["A", "B", "C"], dtype=object), size=n)
    truth = rng.integers(0, 3, size=n)
    likelihood = np.ones((n, 3))
    likelihood[np.arange(n), truth] = np.where(sample == "B", 1.3, 20.0)
    prob = (likelihood / likelihood.sum(axis=1, keepdims=True)).astype(np.float32)
    log_prior = np.log(np.array([0.2, 0.3, 0.5]))
    kwargs = {
        "program_labels": ("x", "y", "z"),
        "vocabulary": ("x", "y", "z"),
        "supported": np.array([True, True, True]),
    }
    together = sample_label_probabilities(prob, log_prior, sample, **kwargs)
    for name in ("A", "B"):
        alone = sample == name
        by_itself = sample_label_probabilities(prob[alone], log_prior, sample[alone], **kwargs)
        np.testing.assert_array_equal(together[alone], by_itself)
    assert together.dtype == np.float32 and np.allclose(together.sum(axis=1), 1, atol=1e-5)

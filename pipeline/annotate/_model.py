"""Marker-based cell-type assignment: a negative-binomial mixture constrained by markers.

The model follows CellAssign (Zhang et al., Nat Methods 2019) in its simplest form. Cell
i of program p has feature counts x_if ~ NB(mean s_i * r_pf, shape theta_f), where s_i is
the cell's library size (total counts / 10,000). A program that lists feature f as a
marker has its own rate r_pf >= b_f; every program that does not list f shares the
background rate b_f. A program may also leave a feature *free* (its sources do not say
whether it expresses it): its rate is then fitted from its own cells, unconstrained, and
it neither sets the background nor is held to it. Rates, backgrounds, shapes and program
shares are fitted by EM;
the posterior over programs is the per-cell evidence, and its maximum the confidence.

Because a program only differs from the others in the features it lists, absence is
evidence too: a switched-memory cell's CD27 counts are improbable under DN1, whose CD27
rate is tied to the background of the CD27-negative programs.

Pure numpy/scipy: no I/O, no Dask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import singledispatch
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..labels import UNASSIGNED

RATE_FLOOR = 1e-3  # counts per 10,000 UMI
PHI_BOUNDS = (1e-3, 10.0)  # NB overdispersion 1/theta


@dataclass(frozen=True)
class MarkerModel:
    programs: tuple[str, ...]
    features: tuple[str, ...]
    marker: np.ndarray  # programs x features, bool
    rate: np.ndarray  # programs x features, per 10,000 UMI
    theta: np.ndarray  # features (NB shape)
    log_prior: np.ndarray  # programs
    n_iter: int
    converged: bool
    free: np.ndarray | None = None  # programs x features, bool: fitted unconstrained

    def to_record(self) -> dict[str, Any]:
        """The fitted parameters as stored in cohort.zarr's ``uns["annotate"][level]
        ["model"]`` (add-batch labels new cells with them: `from_record`)."""
        return {
            "programs": np.array(self.programs, dtype=str),
            "features": np.array(self.features, dtype=str),
            "rate_per_10k": self.rate,
            "theta": self.theta,
            "prior": np.exp(self.log_prior),
        }

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], marker: np.ndarray, free: np.ndarray | None = None
    ) -> MarkerModel:
        """The model `to_record` stored; ``marker`` and ``free`` (programs x features) come
        from the marker file, which the record does not copy."""
        prior = np.asarray(record["prior"], dtype=np.float64)
        return cls(
            programs=tuple(str(p) for p in np.asarray(record["programs"])),
            features=tuple(str(f) for f in np.asarray(record["features"])),
            marker=marker,
            rate=np.asarray(record["rate_per_10k"], dtype=np.float64),
            theta=np.asarray(record["theta"], dtype=np.float64),
            log_prior=np.log(np.maximum(prior, 1e-300)),
            n_iter=0,
            converged=True,
            free=free,
        )


def _dense(x: np.ndarray | sp.spmatrix) -> np.ndarray:
    if sp.issparse(x):
        return np.asarray(x.toarray(), dtype=np.float64)  # type: ignore[union-attr]
    return np.asarray(x, dtype=np.float64)


def log_likelihoods(
    x: np.ndarray | sp.spmatrix, size: np.ndarray, model: MarkerModel, block: int = 4096
) -> np.ndarray:
    """cells x programs: log prior + the program-dependent part of the NB log-likelihood."""
    out = np.empty((x.shape[0], len(model.programs)))
    log_rate = np.log(model.rate)
    theta = model.theta
    for start in range(0, x.shape[0], block):
        xb = _dense(x[start : start + block])
        sb = np.asarray(size[start : start + block], dtype=np.float64)
        mean = sb[:, None, None] * model.rate[None]  # cells x programs x features
        log_theta_mean = np.log(theta[None, None] + mean)
        ll = -theta * (log_theta_mean - np.log(theta))  # theta * log(theta / (theta + m))
        ll += xb[:, None, :] * (np.log(sb)[:, None, None] + log_rate[None] - log_theta_mean)
        out[start : start + block] = ll.sum(axis=2) + model.log_prior
    return out


def posteriors(x: np.ndarray | sp.spmatrix, size: np.ndarray, model: MarkerModel) -> np.ndarray:
    """cells x programs posterior probabilities (float32)."""
    ll = log_likelihoods(x, size, model)
    ll -= ll.max(axis=1, keepdims=True)
    p = np.exp(ll)
    p /= p.sum(axis=1, keepdims=True)
    return p.astype(np.float32)


def _initial_rates(x: np.ndarray, size: np.ndarray, marker: np.ndarray) -> np.ndarray:
    """Start: listed features at their expressing level (the 95th percentile of x/s, or the
    mean of the expressing cells when fewer than 5% express), the rest at the lower half's
    mean."""
    per = x / size[:, None]
    high = np.percentile(per, 95, axis=0)
    for f in np.flatnonzero(high <= 0):
        positive = per[:, f][per[:, f] > 0]
        high[f] = positive.mean() if positive.size else RATE_FLOOR
    low = np.array(
        [np.mean(np.sort(per[:, f])[: max(1, len(per) // 2)]) for f in range(x.shape[1])]
    )
    low = np.maximum(np.minimum(low, high / 10), RATE_FLOOR)
    return np.where(marker, high[None], low[None])


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def _m_step(
    x: np.ndarray,
    size: np.ndarray,
    resp: np.ndarray,
    marker: np.ndarray,
    free: np.ndarray,
    block: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    weight = resp.sum(axis=0)  # programs
    counts = resp.T @ x  # programs x features
    exposure = resp.T @ size  # programs
    own = counts / np.maximum(exposure, 1e-12)[:, None]
    off = ~marker & ~free
    background_counts = (off * counts).sum(axis=0)
    background_exposure = (off * exposure[:, None]).sum(axis=0)
    has_background = background_exposure > 0
    background = np.where(
        has_background,
        background_counts / np.where(has_background, background_exposure, 1.0),
        np.where(marker, own, np.inf).min(axis=0),
    )
    background = np.maximum(background, RATE_FLOOR)
    rate = np.where(marker, np.maximum(own, background[None]), background[None])
    rate = np.maximum(np.where(free, own, rate), RATE_FLOOR)
    prior = np.maximum(weight / weight.sum(), 1e-6)
    # NB overdispersion per feature by moments: estimated per program that lists the
    # feature, then the cell-weighted median over them. A pool of the moments would be
    # set by the highest-expressing program (plasmablasts' variable CD27 made CD27 look
    # three times as overdispersed as it is in memory B cells, which blurred the low
    # counts that tell switched memory from DN1).
    excess = np.zeros(rate.shape)
    scale = np.zeros(rate.shape)
    for start in range(0, x.shape[0], block):
        xb, rb = x[start : start + block], resp[start : start + block]
        mean = size[start : start + block, None, None] * rate[None]
        excess += (((xb[:, None, :] - mean) ** 2 - mean) * rb[:, :, None]).sum(axis=0)
        scale += (rb[:, :, None] * mean**2).sum(axis=0)
    per_program = excess / np.maximum(scale, 1e-12)
    pooled = excess.sum(axis=0) / np.maximum(scale.sum(axis=0), 1e-12)
    phi = np.array([
        _weighted_median(per_program[listed, f], weight[listed]) if weight[listed].sum() > 0
        else pooled[f]
        for f, listed in enumerate(marker.T)
    ])  # fmt: skip
    phi = np.clip(phi, *PHI_BOUNDS)
    return rate, 1.0 / phi, np.log(prior)


def fit_marker_model(
    x: np.ndarray | sp.spmatrix,
    size: np.ndarray,
    *,
    programs: tuple[str, ...],
    features: tuple[str, ...],
    marker: np.ndarray,
    free: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> MarkerModel:
    """Fit the constrained NB mixture by EM on ``x`` (cells x features counts).

    ``marker`` and ``free`` (programs x features, bool; ``free`` None: none) say which
    features each program lists and which it leaves unconstrained. Stops when no cell's
    posterior changes by more than ``tol`` between iterations.
    """
    marker = np.asarray(marker, dtype=bool)
    free = np.zeros_like(marker) if free is None else np.asarray(free, dtype=bool) & ~marker
    for name, m in (("marker", marker), ("free", free)):
        if m.shape != (len(programs), len(features)):
            msg = f"{name} matrix is {m.shape}, expected {(len(programs), len(features))}"
            raise ValueError(msg)
    if x.shape[0] == 0:
        msg = "no cells to fit the marker model on"
        raise ValueError(msg)
    xd = _dense(x)
    size = np.asarray(size, dtype=np.float64)
    rate = _initial_rates(xd, size, marker | free)  # free features start as if listed
    theta = np.full(len(features), 2.0)
    log_prior = np.full(len(programs), -np.log(len(programs)))
    resp = None
    converged = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):
        model = MarkerModel(programs, features, marker, rate, theta, log_prior, n_iter, False, free)
        new = posteriors(xd, size, model).astype(np.float64)
        if resp is not None and np.abs(new - resp).max() < tol:
            resp = new
            converged = True
            break
        resp = new
        rate, theta, log_prior = _m_step(xd, size, resp, marker, free)
    return MarkerModel(programs, features, marker, rate, theta, log_prior, n_iter, converged, free)


def marker_support(model: MarkerModel, fold: float = 2.0) -> np.ndarray:
    """Per program: the share of its listed features whose fitted rate is at least
    ``fold`` times the background of the programs that neither list them nor leave them
    free."""
    free = np.zeros_like(model.marker) if model.free is None else model.free
    off = np.where(model.marker | free, np.inf, model.rate).min(axis=0)
    no_background = ~np.isfinite(off)
    ratio = model.rate / np.where(no_background, 1.0, off)[None]
    elevated = (ratio >= fold) | no_background[None]
    listed = model.marker.sum(axis=1)
    return (elevated & model.marker).sum(axis=1) / np.maximum(listed, 1)


EVIDENCE_FLOOR = 1e-6  # neighbours' evidence for a program, before the exponent


def _evidence(prob: np.ndarray, log_prior: np.ndarray) -> np.ndarray:
    """Posteriors with the programs' shares taken out, renormalized: the evidence."""
    vote = prob / np.exp(log_prior - log_prior.max())[None]
    vote /= vote.sum(axis=1, keepdims=True)  # in place: one cells x programs array, not two
    return vote


def _neighbour_mean(vote: np.ndarray, graph: Any) -> tuple[np.ndarray, np.ndarray]:
    return neighbour_mean(graph, vote)


@singledispatch
def neighbour_mean(graph: Any, vote: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The graph-weighted mean of the neighbours' ``vote`` rows, and each cell's degree,
    for an in-memory sparse ``graph`` (cells x cells); other graph types register theirs
    (`pipeline.annotate._graphrows.MemberGraph`: rows read by the workers)."""
    g = sp.csr_matrix(graph)  # in its own dtype: a float64 copy was 0.26 GiB at 855k cells
    if not np.issubdtype(g.dtype, np.floating):  # edge counts: the votes stay fractions
        g = g.astype(np.float64)
    degree = np.asarray(g.sum(axis=1, dtype=np.float64)).ravel()
    mean = g @ vote.astype(g.dtype, copy=False) / np.where(degree > 0, degree, 1.0)[:, None]
    return mean, degree


def graph_consensus(
    prob: np.ndarray, graph: sp.spmatrix, weight: float, log_prior: np.ndarray | None = None
) -> np.ndarray:
    """Mix each cell's probabilities linearly with its graph neighbours' weighted mean:
    ``(1 - weight) * own + weight * neighbours``.

    ``graph`` is cells x cells (e.g. the kNN connectivities restricted to these cells);
    a cell without neighbours keeps its own probabilities. With ``log_prior`` (the
    programs' log shares) the neighbours vote with their evidence alone, their posteriors
    divided by the shares: otherwise the shares count once in the cell's own posterior
    and again through every neighbour, and where a small program's cells carry weak
    evidence (DN1 beside switched memory, told apart by CD27 alone) the mix pushes them
    into the large one.
    """
    if weight == 0:
        return prob
    vote = prob if log_prior is None else _evidence(prob, log_prior)
    neighbours, degree = _neighbour_mean(vote, graph)
    del vote
    return linear_mix(prob, neighbours, degree, weight)


def linear_mix(
    prob: np.ndarray, neighbours: np.ndarray, degree: np.ndarray, weight: float
) -> np.ndarray:
    """`graph_consensus`'s mix of the cells' ``prob`` with their ``neighbours``' mean vote
    (overwritten) and ``degree`` (0: no neighbours, the cell keeps its own)."""
    # (1 - weight) * prob + weight * neighbours with the same arithmetic (each product in
    # its own dtype, their sum in float64), in place: two cells x programs arrays at a
    # time, not five (0.3 GB each at 3.5M cells and 11 programs)
    neighbours *= weight
    mixed = np.multiply(prob, 1 - weight)
    mixed += neighbours
    del neighbours
    mixed[degree == 0] = prob[degree == 0]
    return mixed.astype(np.float32)


def product_consensus(
    prob: np.ndarray, graph: sp.spmatrix, exponent: float, log_prior: np.ndarray
) -> np.ndarray:
    """Each cell's posterior times its graph neighbours' mean evidence to the power
    ``exponent``, renormalized: the neighbourhood as a tempered local prior.

    The neighbours vote with their evidence (posteriors with the shares in ``log_prior``
    taken out, as in `graph_consensus`); their mean is floored at `EVIDENCE_FLOOR`. A
    linear mix can move a cell only as far as ``weight`` allows, however unanimous its
    neighbours: where a cell's own evidence is a fraction of a marker count (DN1 against
    switched memory by CD27 at 0.4 of its strength) the neighbourhood, which sees the
    genes beyond the markers, is the better witness, and a product lets it decide
    exactly when the neighbours agree; where they are split it changes little. Measured
    on the simulator's 14 scenarios (docs/benchmarks.md): DN1 F1 on the memory-like DN1
    at 0.4 strength 0.37 (linear, weight 0.5) -> 0.61. A cell without neighbours keeps
    its own probabilities.
    """
    if exponent == 0:
        return prob
    neighbours, degree = _neighbour_mean(_evidence(prob, log_prior), graph)
    return product_mix(prob, neighbours, degree, exponent)


def product_mix(
    prob: np.ndarray, neighbours: np.ndarray, degree: np.ndarray, exponent: float
) -> np.ndarray:
    """`product_consensus`'s product of the cells' ``prob`` with their ``neighbours``'
    mean evidence (overwritten) and ``degree`` (0: no neighbours, the cell keeps its own)."""
    # in place, the same arithmetic: one cells x programs float64 array instead of four
    mixed = np.maximum(neighbours, EVIDENCE_FLOOR, out=neighbours)
    np.power(mixed, exponent, out=mixed)
    mixed *= prob
    mixed /= mixed.sum(axis=1, keepdims=True)
    mixed[degree == 0] = prob[degree == 0]
    return mixed.astype(np.float32)


@dataclass(frozen=True)
class Consensus:
    """How a level's cells are combined with their graph neighbours: ``kind`` "linear"
    (`graph_consensus`, ``strength`` the neighbours' weight) or "product"
    (`product_consensus`, ``strength`` the exponent on their evidence). ``evidence``:
    the neighbours vote with their evidence, the shares taken out (required by
    "product")."""

    kind: Literal["linear", "product"]
    strength: float
    evidence: bool = False

    def __post_init__(self) -> None:
        if self.kind == "product" and not self.evidence:
            msg = "a product consensus needs the neighbours' evidence (evidence=True)"
            raise ValueError(msg)

    @property
    def active(self) -> bool:
        return self.strength > 0

    def apply(
        self, prob: np.ndarray, graph: sp.spmatrix, log_prior: np.ndarray | None
    ) -> np.ndarray:
        if self.evidence and log_prior is None:
            msg = "the neighbours' evidence needs the programs' log shares (log_prior)"
            raise ValueError(msg)
        if self.kind == "product":
            assert log_prior is not None
            return product_consensus(prob, graph, self.strength, log_prior)
        return graph_consensus(prob, graph, self.strength, log_prior if self.evidence else None)

    def vote(self, prob: np.ndarray, log_prior: np.ndarray | None) -> np.ndarray:
        """What the cells with posteriors ``prob`` give their neighbours: `apply` is
        ``mix(prob, *neighbour_mean(graph, vote(prob, log_prior)))``, and a cell's row of
        it needs only its own graph row and the votes (the workers' chunks,
        `_cellcalls`)."""
        if not self.evidence:
            return prob
        if log_prior is None:
            msg = "the neighbours' evidence needs the programs' log shares (log_prior)"
            raise ValueError(msg)
        return _evidence(prob, log_prior)

    def mix(self, prob: np.ndarray, neighbours: np.ndarray, degree: np.ndarray) -> np.ndarray:
        """The cells' ``prob`` combined with their neighbours' mean ``vote`` and their
        ``degree`` (see `vote`)."""
        if self.kind == "product":
            return product_mix(prob, neighbours, degree, self.strength)
        return linear_mix(prob, neighbours, degree, self.strength)

    def to_record(self) -> dict[str, Any]:
        return {"kind": self.kind, "strength": self.strength, "evidence": self.evidence}


def label_probabilities(
    prob: np.ndarray, programs_labels: tuple[str, ...], labels: tuple[str, ...]
) -> np.ndarray:
    """Sum program posteriors into label posteriors (cells x labels)."""
    out = np.zeros((prob.shape[0], len(labels)), dtype=np.float32)
    for j, label in enumerate(programs_labels):
        out[:, labels.index(label)] += prob[:, j]
    return out


def call_labels(
    prob: np.ndarray,
    graph: sp.spmatrix | None,
    consensus: Consensus,
    *,
    program_labels: tuple[str, ...],
    vocabulary: tuple[str, ...],
    supported: np.ndarray,
    min_confidence: float,
    log_prior: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (object), their confidence and the chosen program of cells with program
    posteriors ``prob``, after the ``consensus`` with their graph neighbours (``graph``
    None: none; ``log_prior``: the programs' log shares, for evidence votes).

    A cell is ``unassigned`` when its label's probability is below ``min_confidence`` or
    its program is not ``supported`` by its markers (see `marker_support`).
    """
    mixed = prob if graph is None else consensus.apply(prob, graph, log_prior)
    codes, conf, best = label_codes(
        mixed, program_labels=program_labels, vocabulary=vocabulary, supported=supported,
        min_confidence=min_confidence,
    )  # fmt: skip
    return np.array((*vocabulary, UNASSIGNED), dtype=object)[codes], conf, best


def label_codes(
    mixed: np.ndarray,
    *,
    program_labels: tuple[str, ...],
    vocabulary: tuple[str, ...],
    supported: np.ndarray,
    min_confidence: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`call_labels` after the consensus, on its programs' probabilities ``mixed``: each
    cell's label as a code into ``vocabulary`` + ``unassigned`` (int8), its confidence
    and its most probable program."""
    best = mixed.argmax(axis=1)  # the most probable program
    label_prob = label_probabilities(mixed, program_labels, vocabulary)
    label_index = np.array([vocabulary.index(lab) for lab in program_labels])[best]
    conf = label_prob[np.arange(len(best)), label_index]
    codes = label_index.astype(np.int8)
    codes[(conf < min_confidence) | ~supported[best]] = len(vocabulary)
    return codes, conf, best


def sample_label_probabilities(
    prob: np.ndarray,
    log_prior: np.ndarray,
    sample: np.ndarray,
    *,
    program_labels: tuple[str, ...],
    vocabulary: tuple[str, ...],
    supported: np.ndarray,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> np.ndarray:
    """Each cell's label probabilities under its own sample's composition (float32, cells
    x ``vocabulary`` + ``unassigned``): what the abundance stage draws labels from.

    ``prob`` are the cells' program posteriors under the model's cohort-wide shares
    (``log_prior``). A sample with more DN2 than the cohort has, under those shares,
    its ambiguous cells pulled towards the cohort's composition, and expected counts
    from them shrink every between-sample difference (on the 0.4-strength simulator,
    DN2's per-sample expected share rose only 0.88 per unit of its true share after the
    graph consensus). Here each sample's program shares are re-estimated by EM from its
    cells' likelihoods (the mixture model's maximum-likelihood composition; Saerens et
    al., Neural Comput 2002), and each cell's posterior taken under its sample's shares:
    0.97 per unit on the same cohort. The graph consensus is left out: it sharpens the
    calls but mixes neighbours from other samples into a cell's probabilities. Mass on
    programs not ``supported`` by their markers goes to ``unassigned``.

    A sample's shares depend on its own cells only, so the EM runs one sample at a time
    (until its shares move less than ``tol``): its float64 working arrays are one
    sample's cells x programs, not the cohort's (0.55 GiB at 3.5M cells and 10
    programs).
    """
    codes, n_samples = _codes(sample)
    shares = np.exp(log_prior - log_prior.max())
    shares /= shares.sum()
    columns = tuple(
        lab if ok else UNASSIGNED for lab, ok in zip(program_labels, supported, strict=True)
    )
    labels = (*vocabulary, UNASSIGNED)
    out = np.zeros((len(codes), len(labels)), dtype=np.float32)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(n_samples + 1))
    for a, b in pairwise(bounds):
        rows = order[a:b]
        post = _sample_posteriors(prob[rows], shares, max_iter, tol)
        out[rows] = label_probabilities(post, columns, labels)
    return out


def _sample_posteriors(
    prob: np.ndarray, shares: np.ndarray, max_iter: int, tol: float
) -> np.ndarray:
    """One sample's cells' posteriors under its EM-estimated program shares."""
    likelihood = prob.astype(np.float64)
    likelihood /= shares[None]  # the evidence, shares taken out
    likelihood /= likelihood.sum(axis=1, keepdims=True)
    pi = shares.copy()
    post = np.empty_like(likelihood)
    for _ in range(max_iter):
        np.multiply(likelihood, pi[None], out=post)
        post /= post.sum(axis=1, keepdims=True)
        new = np.maximum(post.mean(axis=0), 1e-9)
        done = np.abs(new - pi).max() < tol
        pi = new
        if done:
            break
    return post


def _codes(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer codes of ``values`` (hashed, without a fixed-width string copy of them)."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=False)
    return codes.astype(np.int64), len(uniques)

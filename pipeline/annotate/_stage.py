"""The annotate stage: lineage, then B-cell subsets, chunk by chunk on the Dask cluster.

1. One task per chunk sums the marker features' counts of its QC-passed cells (a few
   dozen columns; the chunk's counts are read once). The results stay on the workers.
2. Per level, the marker model (`_model`) is fitted by EM on a subsample stratified by
   sample, then every chunk's posteriors are computed in its own task.
3. The driver mixes each cell's posterior with its neighbours' on the integrated kNN
   graph (consensus), labels each cell with the most probable label and calls it
   `unassigned` when that label's probability is below ``min_confidence``.
4. B-cell subsets are modelled among the cells called lineage B only, the same way, with
   the B cells' own kNN graph for the consensus (`_bgraph`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import anndata as ad
import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp
from distributed import Client, as_completed, wait

from ..cohort import cell_chunks
from ..config import AnnotateConfig
from ..labels import UNASSIGNED
from ..runtime import release_memory
from ..sampling import sorted_codes, stratified_sample
from ._bgraph import B_GRAPH_MIN_CELLS, b_cell_graph
from ._dotplot import cohort_dotplot, dot_sums, dot_table
from ._graphrows import MemberGraph, StoredGraph
from ._markers import LEVELS, FeatureMap, MarkerSet, feature_map
from ._model import (
    Consensus,
    MarkerModel,
    call_labels,
    fit_marker_model,
    marker_support,
    posteriors,
    sample_label_probabilities,
)

SIZE_UNIT = 1e4  # library sizes in units of 10,000 counts (rates are per 10k)


@dataclass(frozen=True)
class LevelCall:
    labels: np.ndarray  # object, one per cell of the cohort; None where not annotated
    confidence: np.ndarray  # float32, NaN where not annotated
    model: MarkerModel
    features: FeatureMap
    dotplot: pd.DataFrame  # label, feature, mean_log_cp10k, fraction_expressing, n_cells
    info: dict[str, Any] = field(default_factory=dict)
    # float32, cells x (the level's labels + unassigned), NaN rows where not annotated
    probabilities: np.ndarray | None = None

    def with_dotplot(self, dotplot: pd.DataFrame) -> LevelCall:
        return replace(self, dotplot=dotplot)


@dataclass(frozen=True)
class AnnotationResult:
    levels: dict[str, LevelCall]
    seconds: dict[str, float]


T = TypeVar("T")


def level_consensus(level: str, params: AnnotateConfig) -> Consensus:
    """A level's graph consensus from the annotate settings: lineages mix linearly with
    their neighbours' posteriors (``graph_weight``); B subsets combine with their
    neighbours' evidence (``b_consensus``)."""
    if level == "lineage":
        return Consensus("linear", params.graph_weight)
    if params.b_consensus == "product":
        return Consensus("product", params.b_neighbour_exponent, evidence=True)
    return Consensus("linear", params.b_graph_weight, evidence=True)


def by_level(
    members: np.ndarray,
    params: AnnotateConfig,
    call: Callable[[str, Consensus, np.ndarray], T],
    labels_of: Callable[[T, np.ndarray], np.ndarray],
) -> dict[str, T]:
    """The levels in order: lineages among ``members`` (a boolean mask), then B subsets
    among the cells called B. ``call(level, consensus, members)`` annotates a level;
    ``labels_of(result, members)`` gives its labels at the positions ``members`` indexes."""
    out: dict[str, T] = {}
    for level in LEVELS:
        out[level] = call(level, level_consensus(level, params), members)
        members = labels_of(out[level], members) == "B"
    return out


# ---- chunk tasks (run on the workers) ------------------------------------------------


def _feature_counts(block: sp.spmatrix, keep: np.ndarray, gene_to_feature: sp.csr_matrix):
    """The kept cells' summed feature counts (kept cells x features, CSR float32)."""
    x = sp.csr_matrix(block)[keep]
    return sp.csr_matrix(x @ gene_to_feature, dtype=np.float32)


def _rows_of(features: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    return features[rows]


def _take(features: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> sp.csr_matrix:
    return features[rows][:, cols]


def _posteriors(
    features: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray, size: np.ndarray, model
) -> np.ndarray:
    return posteriors(features[rows][:, cols], size, model)


def _stacked(client: Client, futures: list[Any], sizes: list[int]) -> np.ndarray:
    """The futures' arrays (``sizes`` rows each, the same columns) stacked in order, each
    copied into the result as it arrives and released: one copy of the whole in the
    driver, not the parts and their stack."""
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    where = {f.key: i for i, f in enumerate(futures)}
    out: np.ndarray | None = None
    for future in as_completed(futures):
        part = future.result()
        future.release()
        if out is None:
            out = np.empty((int(starts[-1]), *part.shape[1:]), dtype=part.dtype)
        i = where[future.key]
        out[starts[i] : starts[i + 1]] = part
    return out if out is not None else np.zeros((0, 0))


# ---- the stage ------------------------------------------------------------------------


def _restrict(graph: sp.spmatrix | None, cells: np.ndarray) -> sp.csr_matrix | None:
    """``graph[cells][:, cells]`` (``cells`` ascending) with fewer copies than scipy's
    indexing: when the other cells have no edges (the kept cells of the kNN graph) the
    values are shared and only the column numbers are new; otherwise one copy of the
    rows, with edges to other cells dropped."""
    if graph is None:
        return None
    g = sp.csr_matrix(graph)
    position = np.full(g.shape[1], -1, dtype=np.int32)
    position[cells] = np.arange(cells.size, dtype=np.int32)
    shape = (cells.size, cells.size)
    row_sizes = np.diff(g.indptr)
    outside = np.ones(g.shape[0], dtype=bool)
    outside[cells] = False
    if cells.size and not row_sizes[outside].any():
        new = position[g.indices]
        if (new >= 0).all():
            indptr = np.append(g.indptr[cells], g.indptr[cells[-1] + 1])
            return sp.csr_matrix((g.data, new, indptr - indptr[0]), shape=shape)
        del new
    g = g[cells]
    new = position[g.indices]
    inside = new >= 0
    rows = np.repeat(np.arange(cells.size), np.diff(g.indptr))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[inside], minlength=cells.size))])
    return sp.csr_matrix((g.data[inside], new[inside], indptr), shape=shape)


def _level_graph(
    level: str,
    cohort: ad.AnnData,
    *,
    client: Client,
    members: np.ndarray,
    rows: np.ndarray,
    connectivities: sp.spmatrix | StoredGraph | None,
    total_counts: np.ndarray,
    params: AnnotateConfig,
) -> tuple[sp.csr_matrix | MemberGraph | None, str]:
    """The graph a level's consensus uses among its cells ``rows`` (= np.flatnonzero of
    the mask ``members``), and its name: for B subsets the B cells' own graph
    (`b_cell_graph`) unless ``params.b_graph`` says the cohort's or there are too few."""
    if (
        level == "b_subset"
        and level_consensus(level, params).active
        and params.b_graph == "b_cells"
        and rows.size >= B_GRAPH_MIN_CELLS
    ):
        graph = b_cell_graph(
            cohort, client=client, members=members, total_counts=total_counts, seed=params.seed
        )
        return graph, "b_cells"
    if isinstance(connectivities, StoredGraph):
        return MemberGraph(client, connectivities, rows), "cohort"
    return _restrict(connectivities, rows), "cohort" if connectivities is not None else "none"


def annotate_cohort(
    cohort: ad.AnnData,
    *,
    client: Client,
    keep: np.ndarray,
    total_counts: np.ndarray,
    markers: MarkerSet,
    connectivities: sp.spmatrix | StoredGraph | None,
    params: AnnotateConfig | None = None,
) -> AnnotationResult:
    """Lineage and B-subset labels for the QC-passed cells of a lazily opened cohort,
    with the annotate section's ``params`` (None: its defaults).

    ``cohort`` is `open_cohort`'s view (X a Dask array of CSR chunks); ``connectivities``
    the cohort's kNN graph over all its cells (None: no graph consensus), in memory or
    a `StoredGraph`, whose rows the workers read for the consensus (`MemberGraph`).
    """
    params = params or AnnotateConfig()
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    symbols = cohort.var.get("gene_symbols", cohort.var_names)
    fmaps = {level: feature_map(markers, level, symbols) for level in LEVELS}
    widths = [len(fmaps[level].features) for level in LEVELS]
    offsets = dict(zip(LEVELS, np.cumsum([0, *widths[:-1]]), strict=True))
    gene_to_feature = sp.hstack([fmaps[level].matrix for level in LEVELS], format="csr")
    chunks = cell_chunks(cohort.X)
    keep = np.asarray(keep, dtype=bool)
    mapping = client.scatter(gene_to_feature, broadcast=True, hash=False)
    futures = client.compute(
        [dask.delayed(_feature_counts)(c.block, keep[c.rows], mapping) for c in chunks]
    )
    # per chunk: the cohort positions of its kept cells
    kept_rows = [np.flatnonzero(keep[c.rows]) + c.start for c in chunks]
    size = np.asarray(total_counts, dtype=np.float64) / SIZE_UNIT
    sample = sorted_codes(cohort.obs["sample_id"])  # grouped as the ids sort
    seconds["features"] = time.perf_counter() - t

    def level_call(level: str, consensus: Consensus, members: np.ndarray) -> LevelCall:
        t = time.perf_counter()
        fmap = fmaps[level]
        cols = np.arange(offsets[level], offsets[level] + len(fmap.features))
        # rows of each chunk's feature matrix that belong to this level's cells
        local = [np.flatnonzero(members[r]) for r in kept_rows]
        cohort_rows = np.concatenate([r[loc] for r, loc in zip(kept_rows, local, strict=True)])
        if cohort_rows.size < sum(map(len, kept_rows)):
            # a level among fewer cells (the B subsets, after the lineages): the workers
            # keep only these cells' features from here on (~0.4 GB a worker at 3.5M cells)
            for i, loc in enumerate(local):
                futures[i] = client.submit(_rows_of, futures[i], loc, pure=False)
                kept_rows[i] = kept_rows[i][loc]
            local = [np.arange(len(loc)) for loc in local]
            wait(futures)  # the whole chunks' features released: hand their heap back
            client.run(release_memory)
        mask = np.zeros(len(keep), dtype=bool)
        mask[cohort_rows] = True
        graph, graph_name = _level_graph(
            level, cohort, client=client, members=mask, rows=cohort_rows,
            connectivities=connectivities, total_counts=total_counts, params=params,
        )  # fmt: skip

        def training(fit: np.ndarray) -> sp.spmatrix:
            fit_mask = np.zeros(len(cohort_rows), dtype=bool)
            fit_mask[fit] = True
            parts, start = [], 0
            for fut, loc in zip(futures, local, strict=True):
                chosen = loc[fit_mask[start : start + len(loc)]]
                start += len(loc)
                if chosen.size:
                    parts.append(client.submit(_take, fut, chosen, cols, pure=False))
            return sp.vstack(client.gather(parts), format="csr")

        def scored(model: MarkerModel) -> np.ndarray:
            model_f = client.scatter(model, broadcast=True, hash=False)
            post = [
                client.submit(_posteriors, fut, loc, cols, size[r[loc]], model_f, pure=False)
                for fut, loc, r in zip(futures, local, kept_rows, strict=True)
            ]
            return _stacked(client, post, [len(loc) for loc in local])

        call = _call_level(
            level,
            markers=markers,
            fmap=fmap,
            rows=cohort_rows,
            n_cells=len(keep),
            sample=sample,
            size=size,
            training=training,
            scored=scored,
            graph=graph,
            consensus=consensus,
            params=params,
        )
        call.info["graph"] = graph_name
        called = call.labels[cohort_rows]
        dot = (
            cohort_dotplot(
                client, futures, local, kept_rows, cols, size, called, LEVELS[level], fmap
            )
            if len(cohort_rows)
            else pd.DataFrame()
        )
        seconds[level] = time.perf_counter() - t
        return call.with_dotplot(dot)

    levels = by_level(keep.copy(), params, level_call, lambda call, _: call.labels)
    for fut in futures:
        fut.release()
    return AnnotationResult(levels=levels, seconds=seconds)


def _call_level(
    level: str,
    *,
    markers: MarkerSet,
    fmap: FeatureMap,
    rows: np.ndarray,
    n_cells: int,
    sample: np.ndarray,
    size: np.ndarray,
    training: Callable[[np.ndarray], sp.spmatrix],
    scored: Callable[[MarkerModel], np.ndarray],
    graph: sp.spmatrix | MemberGraph | None,
    consensus: Consensus,
    params: AnnotateConfig,
) -> LevelCall:
    """Fit one level's model and label the cells at ``rows`` (cohort positions).

    A label is modelled only when at least ``min_feature_fraction`` of its features are
    in the data; a level with fewer than two such labels is left unannotated (its
    ``info`` says which labels were unusable). Cells whose most probable program is not
    supported by its markers in the fitted model (`marker_support` below
    ``min_marker_support``: the program drifted to cells of another kind, e.g. tissue
    macrophages taking the CD16-monocyte program) are `unassigned`.

    ``training(positions)`` returns the feature counts of those of ``rows``' cells;
    ``scored(model)`` every one of ``rows``' cells' program posteriors, in order.
    """
    programs = markers.levels[level]
    usable = tuple(
        p
        for p in programs
        if sum(f in fmap.features for f in p.positive)
        >= params.min_feature_fraction * len(p.positive)
    )
    unusable = sorted({p.label for p in programs} - {p.label for p in usable})
    labels_out = np.full(n_cells, None, dtype=object)
    confidence = np.full(n_cells, np.nan, dtype=np.float32)
    probabilities = np.full((n_cells, len(LEVELS[level]) + 1), np.nan, dtype=np.float32)
    info: dict[str, Any] = {
        "n_cells": len(rows),
        "missing_features": list(fmap.missing),
        "unusable_labels": unusable,
    }
    if len(rows) == 0 or len({p.label for p in usable}) < 2:
        labels_out[rows] = UNASSIGNED
        probabilities[rows] = 0.0
        probabilities[rows, -1] = 1.0
        model = _empty_model(list(usable), fmap)
        return LevelCall(labels_out, confidence, model, fmap, pd.DataFrame(), info, probabilities)
    fit = stratified_sample(sample[rows], params.fit_max_cells, params.seed)
    model = fit_marker_model(
        training(fit),
        size[rows[fit]],
        programs=tuple(p.name for p in usable),
        features=fmap.features,
        marker=fmap.marker_matrix(usable),
        free=fmap.free_matrix(usable),
        max_iter=params.max_iter,
    )
    prob = scored(model)
    own_best = prob.argmax(axis=1)
    supported = marker_support(model) >= params.min_marker_support
    called, conf, best = call_labels(
        prob, graph, consensus,
        program_labels=tuple(p.label for p in usable), vocabulary=tuple(LEVELS[level]),
        supported=supported, min_confidence=params.min_confidence,
        log_prior=model.log_prior,
    )  # fmt: skip
    labels_out[rows] = called
    confidence[rows] = conf
    probabilities[rows] = sample_label_probabilities(
        prob, model.log_prior, sample[rows], program_labels=tuple(p.label for p in usable),
        vocabulary=tuple(LEVELS[level]), supported=supported,
    )  # fmt: skip
    info.update(
        {
            "n_fitted": len(fit),
            "n_iter": model.n_iter,
            "converged": model.converged,
            "consensus": consensus.to_record() if graph is not None else None,
            "changed_by_consensus": int((own_best != best).sum()),
            "unassigned": int((called == UNASSIGNED).sum()),
            "unsupported_programs": [
                p.name for p, ok in zip(usable, supported, strict=True) if not ok
            ],
        }
    )
    return LevelCall(labels_out, confidence, model, fmap, pd.DataFrame(), info, probabilities)


def annotate_counts(
    counts: sp.spmatrix | np.ndarray,
    symbols: pd.Index | np.ndarray,
    *,
    markers: MarkerSet,
    params: AnnotateConfig | None = None,
    size: np.ndarray | None = None,
    sample: np.ndarray | None = None,
    connectivities: sp.spmatrix | None = None,
) -> AnnotationResult:
    """The same annotation for an in-memory matrix (cells x genes counts), e.g. a
    notebook's AnnData or a small public dataset.

    ``size`` defaults to each cell's total counts / 10,000; ``sample`` (for the stratified
    fitting subsample) to one sample.
    """
    params = params or AnnotateConfig()
    x = sp.csr_matrix(counts, dtype=np.float32)
    n = x.shape[0]
    size = np.asarray(x.sum(axis=1)).ravel() / SIZE_UNIT if size is None else np.asarray(size)
    sample = np.zeros(n, dtype=object) if sample is None else np.asarray(sample)

    def level_call(level: str, consensus: Consensus, members: np.ndarray) -> LevelCall:
        fmap = feature_map(markers, level, symbols)
        features = sp.csr_matrix(x @ fmap.matrix)
        rows = np.flatnonzero(members)
        sub = features[rows]

        def training_rows(fit: np.ndarray) -> sp.spmatrix:
            return sub[fit]

        def scored_rows(model: MarkerModel) -> np.ndarray:
            return posteriors(sub, size[rows], model)

        call = _call_level(
            level,
            markers=markers,
            fmap=fmap,
            rows=rows,
            n_cells=n,
            sample=sample,
            size=size,
            training=training_rows,
            scored=scored_rows,
            graph=_restrict(connectivities, rows),
            consensus=consensus,
            params=params,
        )
        dot = pd.DataFrame()
        if len(rows):
            codes = pd.Categorical(
                call.labels[rows], categories=(*LEVELS[level], UNASSIGNED)
            ).codes.astype(np.int64)
            sums = dot_sums(
                sub,
                np.arange(len(rows)),
                np.arange(sub.shape[1]),
                size[rows],
                codes,
                len(LEVELS[level]) + 1,
            )
            dot = dot_table(sums, (*LEVELS[level], UNASSIGNED), fmap)
        return call.with_dotplot(dot)

    levels = by_level(np.ones(n, dtype=bool), params, level_call, lambda call, _: call.labels)
    return AnnotationResult(levels=levels, seconds={})


def _empty_model(programs: list[Any], fmap: FeatureMap) -> MarkerModel:
    n_p, n_f = len(programs), len(fmap.features)
    return MarkerModel(
        tuple(p.name for p in programs), fmap.features, np.zeros((n_p, n_f), dtype=bool),
        np.zeros((n_p, n_f)), np.ones(n_f), np.zeros(n_p), 0, False,
    )  # fmt: skip

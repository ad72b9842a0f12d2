"""The annotate stage: lineage, then B-cell subsets, chunk by chunk on the Dask cluster.

1. One task per chunk sums the marker features' counts of its QC-passed cells (a few
   dozen columns; the chunk's counts are read once). The results stay on the workers.
2. Per level, the marker model (`_model`) is fitted by EM on a subsample stratified by
   sample, then every chunk's posteriors are computed in its own task.
3. Each cell's posterior is mixed with its neighbours' on the integrated kNN graph
   (consensus), the cell labelled with the most probable label, called `unassigned`
   when that label's probability is below ``min_confidence``, and its label
   probabilities taken under its sample's composition, on the workers (`_cellcalls`):
   the driver gets a label code and a confidence per cell.
4. B-cell subsets are modelled among the cells called lineage B only, the same way, with
   the B cells' own kNN graph for the consensus (`_bgraph`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
from distributed import Client, wait

from ..cohort import Counts, cell_chunks
from ..config import AnnotateConfig
from ..labels import UNASSIGNED
from ..runtime import release_memory
from ..sampling import sorted_codes, stratified_sample
from ._bgraph import B_GRAPH_MIN_CELLS, b_cell_graph
from ._cellcalls import CallRules, ChunkCells, call_on_workers, unassigned_probabilities
from ._dotplot import cohort_dotplot, dot_sums, dot_table
from ._graphrows import MemberGraph, StoredGraph
from ._markers import LEVELS, FeatureMap, MarkerSet, feature_map
from ._model import (
    Consensus,
    MarkerModel,
    fit_marker_model,
    label_codes,
    marker_support,
    posteriors,
    sample_label_probabilities,
)

SIZE_UNIT = 1e4  # library sizes in units of 10,000 counts (rates are per 10k)


@dataclass(frozen=True)
class LevelCall:
    # one per cell of the cohort, categories the level's labels + unassigned; NaN where
    # not annotated
    labels: pd.Categorical
    confidence: np.ndarray  # float32, NaN where not annotated
    model: MarkerModel
    features: FeatureMap
    dotplot: pd.DataFrame  # label, feature, mean_log_cp10k, fraction_expressing, n_cells
    info: dict[str, Any] = field(default_factory=dict)
    # float32, cells x (the level's labels + unassigned), NaN rows where not annotated; a
    # Dask array computed on the workers from `annotate_cohort`
    probabilities: np.ndarray | da.Array | None = None

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
    cohort: Counts,
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
        return MemberGraph(connectivities, rows), "cohort"
    return _restrict(connectivities, rows), "cohort" if connectivities is not None else "none"


def annotate_cohort(
    cohort: Counts,
    *,
    client: Client,
    keep: np.ndarray,
    total_counts: np.ndarray,
    markers: MarkerSet,
    connectivities: sp.spmatrix | StoredGraph | None,
    params: AnnotateConfig | None = None,
    parts_folder: str | None = None,
) -> AnnotationResult:
    """Lineage and B-subset labels for the QC-passed cells of a lazily opened cohort,
    with the annotate section's ``params`` (None: its defaults).

    ``parts_folder``: where the workers save the label probabilities until they are
    written (the levels' `LevelCall.probabilities` read them: keep the folder until
    then); None: the workers hold them.

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

        fitted = _fit_level(
            level, markers=markers, fmap=fmap, rows=cohort_rows, sample=sample, size=size,
            training=training, params=params,
        )  # fmt: skip
        names = (*LEVELS[level], UNASSIGNED)
        cells = [
            ChunkCells(c.stop - c.start, r[loc] - c.start, sample[r[loc]])
            for c, r, loc in zip(chunks, kept_rows, local, strict=True)
        ]
        codes = np.full(len(keep), -1, dtype=np.int8)
        confidence = np.full(len(keep), np.nan, dtype=np.float32)
        info = fitted.info
        if fitted.programs is None:
            codes[cohort_rows] = len(names) - 1
            probabilities = unassigned_probabilities(cells, len(names))
        else:
            model = fitted.model
            model_f = client.scatter(model, broadcast=True, hash=False)
            posts = [
                client.submit(_posteriors, fut, loc, cols, size[r[loc]], model_f, pure=False)
                for fut, loc, r in zip(futures, local, kept_rows, strict=True)
            ]
            supported = marker_support(model) >= params.min_marker_support
            rules = CallRules(
                consensus if graph is not None else None, model.log_prior,
                tuple(p.label for p in fitted.programs), tuple(LEVELS[level]), supported,
                params.min_confidence,
            )  # fmt: skip
            calls = call_on_workers(
                client, posts, cells, graph=graph, rules=rules, parts_folder=parts_folder,
                name=level,
            )  # fmt: skip
            del posts, model_f
            codes[cohort_rows] = calls.codes
            confidence[cohort_rows] = calls.confidence
            probabilities = calls.probabilities
            info.update(
                _calls_info(
                    fitted, graph, consensus, calls.changed_by_consensus,
                    int((calls.codes == len(names) - 1).sum()), supported,
                )
            )  # fmt: skip
            del calls
        info["graph"] = graph_name
        dot = (
            cohort_dotplot(
                client, futures, local, kept_rows, cols, size, codes[cohort_rows], names, fmap
            )
            if len(cohort_rows)
            else pd.DataFrame()
        )
        seconds[level] = time.perf_counter() - t
        return LevelCall(
            pd.Categorical.from_codes(codes, categories=list(names)), confidence, fitted.model,
            fmap, dot, info, probabilities,
        )  # fmt: skip

    levels = by_level(keep.copy(), params, level_call, lambda call, _: call.labels)
    for fut in futures:
        fut.release()
    return AnnotationResult(levels=levels, seconds=seconds)


@dataclass(frozen=True)
class FittedLevel:
    """A level's fitted model: ``programs`` the usable programs (None: fewer than two
    labels usable, the level is left unannotated), ``info`` its record so far."""

    programs: tuple[Any, ...] | None
    model: MarkerModel
    info: dict[str, Any]


def _fit_level(
    level: str,
    *,
    markers: MarkerSet,
    fmap: FeatureMap,
    rows: np.ndarray,
    sample: np.ndarray,
    size: np.ndarray,
    training: Callable[[np.ndarray], sp.spmatrix],
    params: AnnotateConfig,
) -> FittedLevel:
    """Fit one level's model to a subsample of its cells at ``rows`` (cohort positions).

    A label is modelled only when at least ``min_feature_fraction`` of its features are
    in the data; a level with fewer than two such labels is left unannotated (its
    ``info`` says which labels were unusable). ``training(positions)`` returns the
    feature counts of those of ``rows``' cells.
    """
    programs = markers.levels[level]
    usable = tuple(
        p
        for p in programs
        if sum(f in fmap.features for f in p.positive)
        >= params.min_feature_fraction * len(p.positive)
    )
    unusable = sorted({p.label for p in programs} - {p.label for p in usable})
    info: dict[str, Any] = {
        "n_cells": len(rows),
        "missing_features": list(fmap.missing),
        "unusable_labels": unusable,
    }
    if len(rows) == 0 or len({p.label for p in usable}) < 2:
        return FittedLevel(None, _empty_model(list(usable), fmap), info)
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
    info.update({"n_fitted": len(fit), "n_iter": model.n_iter, "converged": model.converged})
    return FittedLevel(usable, model, info)


def _calls_info(
    fitted: FittedLevel,
    graph: object,
    consensus: Consensus,
    changed: int,
    unassigned: int,
    supported: np.ndarray,
) -> dict[str, Any]:
    assert fitted.programs is not None
    return {
        "consensus": consensus.to_record() if graph is not None else None,
        "changed_by_consensus": changed,
        "unassigned": unassigned,
        "unsupported_programs": [
            p.name for p, ok in zip(fitted.programs, supported, strict=True) if not ok
        ],
    }


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
    graph: sp.spmatrix | None,
    consensus: Consensus,
    params: AnnotateConfig,
) -> LevelCall:
    """Fit one level's model (`_fit_level`) and label the cells at ``rows`` (cohort
    positions) in memory; ``scored(model)`` gives every one of ``rows``' cells' program
    posteriors, in order. Cells whose most probable program is not supported by its
    markers in the fitted model (`marker_support` below ``min_marker_support``: the
    program drifted to cells of another kind, e.g. tissue macrophages taking the
    CD16-monocyte program) are `unassigned`."""
    fitted = _fit_level(
        level, markers=markers, fmap=fmap, rows=rows, sample=sample, size=size,
        training=training, params=params,
    )  # fmt: skip
    names = (*LEVELS[level], UNASSIGNED)
    codes = np.full(n_cells, -1, dtype=np.int8)
    confidence = np.full(n_cells, np.nan, dtype=np.float32)
    probabilities = np.full((n_cells, len(names)), np.nan, dtype=np.float32)
    info = fitted.info
    if fitted.programs is None:
        codes[rows] = len(names) - 1
        probabilities[rows] = 0.0
        probabilities[rows, -1] = 1.0
    else:
        model = fitted.model
        program_labels = tuple(p.label for p in fitted.programs)
        prob = scored(model)
        supported = marker_support(model) >= params.min_marker_support
        mixed = prob if graph is None else consensus.apply(prob, graph, model.log_prior)
        level_codes, conf, best = label_codes(
            mixed, program_labels=program_labels, vocabulary=tuple(LEVELS[level]),
            supported=supported, min_confidence=params.min_confidence,
        )  # fmt: skip
        codes[rows], confidence[rows] = level_codes, conf
        probabilities[rows] = sample_label_probabilities(
            prob, model.log_prior, sample[rows], program_labels=program_labels,
            vocabulary=tuple(LEVELS[level]), supported=supported,
        )  # fmt: skip
        changed = int((prob.argmax(axis=1) != best).sum())
        unassigned = int((level_codes == len(names) - 1).sum())
        info.update(_calls_info(fitted, graph, consensus, changed, unassigned, supported))
    labels = pd.Categorical.from_codes(codes, categories=list(names))
    return LevelCall(labels, confidence, fitted.model, fmap, pd.DataFrame(), info, probabilities)


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
            codes = call.labels.codes[rows].astype(np.int64)
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

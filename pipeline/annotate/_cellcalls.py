"""A level's calls chunk by chunk on the workers, after its model is fitted.

Every chunk's program posteriors stay on the worker that computed them. The graph
consensus needs each cell's neighbours' votes: one task per chunk turns its posteriors
into votes, one task stacks them (the only cells x programs array of the level, made
on a worker and copied once to each worker that needs it), and one task per group of
chunks (~200,000 cells of the level in whole samples) reads its cells' graph rows,
mixes, calls each cell (a label code and its confidence) and takes the cells' label
probabilities under their own sample's composition (`sample_label_probabilities`: a
sample's EM needs all of its cells, hence the groups). The driver gets back a label
code and a confidence per cell (5 bytes) and a count; the probabilities are saved by
the tasks to a scratch folder (or held by the workers) until the stage writes them
(`LevelCalls.probabilities`, a Dask array).

Every cell's result is the one `call_labels` and `sample_label_probabilities` give on
the whole level in memory, bit for bit (tested): a cell's consensus reads only its own
graph row and the votes, and a sample's EM only its own cells, in the same order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.sparse as sp
from distributed import Client, wait

from ._graphrows import MemberGraph, StoredGraph, graph_dtype, member_rows
from ._model import Consensus, label_codes, neighbour_mean, sample_label_probabilities

BLOCK_CELLS = 200_000  # the level's cells per task, at most one group of samples more


@dataclass(frozen=True)
class CallRules:
    """How a level's fitted model calls its cells (the arguments of `call_labels` and
    `sample_label_probabilities` beyond the cells'); ``consensus`` None: none."""

    consensus: Consensus | None
    log_prior: np.ndarray
    program_labels: tuple[str, ...]
    vocabulary: tuple[str, ...]
    supported: np.ndarray
    min_confidence: float


@dataclass(frozen=True)
class StoredRows:
    """Rows ``rows`` (cohort rows, ascending) of a stored graph, read by the task."""

    source: StoredGraph
    rows: np.ndarray


@dataclass(frozen=True)
class ChunkCells:
    """A chunk's cells of the level: its number of cells, the level's cells' positions
    among them, and their sample codes."""

    n_cells: int
    members: np.ndarray
    sample: np.ndarray


@dataclass(frozen=True)
class LevelCalls:
    """A level's calls: per cell of the level (in cohort order) its label code into
    ``vocabulary`` + ``unassigned`` (int8) and confidence (float32); the number of
    cells whose most probable program the consensus changed; every cell's label
    probabilities (cohort cells x ``vocabulary`` + ``unassigned``, NaN rows outside the
    level), computed on the workers when the array is."""

    codes: np.ndarray
    confidence: np.ndarray
    changed_by_consensus: int
    probabilities: da.Array


# ---- tasks (run on the workers) -------------------------------------------------------


def _vote(post: np.ndarray, consensus: Consensus, log_prior: np.ndarray, dtype: Any) -> np.ndarray:
    return consensus.vote(post, log_prior).astype(dtype, copy=False)


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts)


def _group_calls(
    posts: list[np.ndarray],
    graph: sp.csr_matrix | StoredRows | None,
    cells: list[ChunkCells],
    vote: np.ndarray | None,
    position: np.ndarray | None,
    rules: CallRules,
    save: str | None = None,
) -> list[tuple[np.ndarray, np.ndarray, int, np.ndarray | None]]:
    """Per chunk of a group: codes, confidence, cells changed by the consensus and the
    level's cells' label probabilities under their samples' compositions (None when
    ``save``: the group's are in that .npy file instead, the chunks' rows in order).
    ``graph``: the group's cells' rows (None: no consensus)."""
    prob = np.concatenate(posts) if posts else np.zeros((0, len(rules.program_labels)))
    by_sample = sample_label_probabilities(
        prob, rules.log_prior, np.concatenate([c.sample for c in cells]),
        program_labels=rules.program_labels, vocabulary=rules.vocabulary,
        supported=rules.supported,
    )  # fmt: skip
    mixed = prob
    if rules.consensus is not None and vote is not None and graph is not None and len(prob):
        if isinstance(graph, StoredRows):
            assert position is not None
            graph = member_rows(graph.source, graph.rows, position)
        neighbours, degree = neighbour_mean(graph, vote)
        del graph
        mixed = rules.consensus.mix(prob, neighbours, degree)
        del neighbours
    codes, conf, best = label_codes(
        mixed, program_labels=rules.program_labels, vocabulary=rules.vocabulary,
        supported=rules.supported, min_confidence=rules.min_confidence,
    )  # fmt: skip
    del mixed
    changed = prob.argmax(axis=1) != best
    conf = conf.astype(np.float32)
    if save is not None:
        tmp = f"{save}.tmp.npy"
        np.save(tmp, by_sample)
        os.replace(tmp, save)
    out, start = [], 0
    for post in posts:
        n = len(post)
        part = slice(start, start + n)
        kept = None if save is not None else by_sample[part]
        out.append((codes[part], conf[part], int(changed[part].sum()), kept))
        start += n
    return out


def _summary(calls: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]]) -> list[tuple]:
    return [(codes, conf, changed) for codes, conf, changed, _ in calls]


def _chunk_probabilities(
    calls: list[tuple[np.ndarray, np.ndarray, int, np.ndarray]], j: int, cells: ChunkCells
) -> np.ndarray:
    return _expand(calls[j][3], cells)


def _saved_probabilities(path: str, start: int, cells: ChunkCells) -> np.ndarray:
    return _expand(np.load(path, mmap_mode="r")[start : start + len(cells.members)], cells)


def _expand(prob: np.ndarray, cells: ChunkCells) -> np.ndarray:
    """A chunk's rows: the level's cells' ``prob``, NaN for the others."""
    out = np.full((cells.n_cells, prob.shape[1]), np.nan, dtype=np.float32)
    out[cells.members] = prob
    return out


# ---- the driver's side ----------------------------------------------------------------


def sample_groups(cells: Sequence[ChunkCells], block_cells: int = BLOCK_CELLS) -> list[list[int]]:
    """The chunks in groups that no sample spans, each group's chunks ascending, groups
    of neighbouring chunks joined up to ``block_cells`` of the level's cells: a task reads
    its cells' graph rows in one range (the stored graph's chunks are ~4M entries: read
    per sample, every task decoded several of them and the whole indptr)."""
    parent = list(range(len(cells)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[int, int] = {}
    for i, chunk in enumerate(cells):
        for s in np.unique(chunk.sample):
            j = first.setdefault(int(s), i)
            parent[root(i)] = root(j)
    closed: dict[int, list[int]] = {}
    for i in range(len(cells)):
        closed.setdefault(root(i), []).append(i)
    groups: list[list[int]] = []
    size = block_cells
    for group in sorted(closed.values()):
        if size >= block_cells:
            groups.append([])
            size = 0
        groups[-1].extend(group)
        size += sum(len(cells[i].members) for i in group)
    return [sorted(g) for g in groups]


def call_on_workers(
    client: Client,
    posts: list[Any],
    cells: list[ChunkCells],
    *,
    graph: sp.spmatrix | MemberGraph | None,
    rules: CallRules,
    parts_folder: str | None = None,
    name: str = "level",
) -> LevelCalls:
    """A level's calls from its chunks' posteriors ``posts`` (futures, the level's cells
    of each chunk in cohort order) and its cells' ``graph`` (rows and columns: the
    level's cells in that order; None: no consensus).

    ``parts_folder``: the tasks save the label probabilities there (``name``-k.npy for
    task k) and the workers' memory holds none of them until the stage
    writes them (at 4M cells ~0.17 GiB; held, they sat in the workers through the next
    level's work); None: the workers keep them (`LevelCalls.probabilities` then holds
    the tasks' results)."""
    sizes = np.array([len(c.members) for c in cells], dtype=np.int64)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    consensus = rules.consensus if rules.consensus is not None and rules.consensus.active else None
    rules = CallRules(
        consensus, rules.log_prior, rules.program_labels, rules.vocabulary, rules.supported,
        rules.min_confidence,
    )  # fmt: skip
    groups = sample_groups(cells, BLOCK_CELLS)
    members = [np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in g]) for g in groups]
    graphs: list[sp.csr_matrix | StoredRows | None] = [None] * len(groups)
    vote = position = None
    if consensus is not None and graph is not None:
        if isinstance(graph, MemberGraph):
            graphs = [StoredRows(graph.source, graph.rows[m]) for m in members]
            where = np.full(graph.source.n_cells, -1, dtype=np.int32)
            where[graph.rows] = np.arange(graph.rows.size, dtype=np.int32)
            position = client.scatter(where, broadcast=True, hash=False)
            del where
            dtype = graph_dtype(graph.source)
        else:
            g = sp.csr_matrix(graph)
            graphs = [g[m] for m in members]
            dtype = g.dtype if np.issubdtype(g.dtype, np.floating) else np.float64
        votes = [
            client.submit(_vote, p, consensus, rules.log_prior, dtype, pure=False) for p in posts
        ]
        vote = client.submit(_stack, votes, pure=False)
        del votes
    del members
    saved = [
        None if parts_folder is None else os.path.join(parts_folder, f"{name}-{k}.npy")
        for k in range(len(groups))
    ]
    futures = [
        client.submit(
            _group_calls, [posts[i] for i in g], part, [cells[i] for i in g], vote, position,
            rules, save, pure=False,
        )
        for g, part, save in zip(groups, graphs, saved, strict=True)
    ]  # fmt: skip
    del graphs
    codes = np.empty(int(bounds[-1]), dtype=np.int8)
    confidence = np.empty(int(bounds[-1]), dtype=np.float32)
    changed = 0
    summaries = [client.submit(_summary, f, pure=False) for f in futures]
    for g, summary in zip(groups, client.gather(summaries), strict=True):
        for i, (c, conf, n) in zip(g, summary, strict=True):
            codes[bounds[i] : bounds[i + 1]] = c
            confidence[bounds[i] : bounds[i + 1]] = conf
            changed += n
    del summaries
    wait(futures)
    del vote, position  # the groups are done with them: the workers free their copies
    width = len(rules.vocabulary) + 1
    parts: list[Any] = [None] * len(cells)
    for g, future, save in zip(groups, futures, saved, strict=True):
        start = 0
        for j, i in enumerate(g):
            if save is None:
                part = dask.delayed(_chunk_probabilities, pure=True)(future, j, cells[i])
            else:
                part = dask.delayed(_saved_probabilities, pure=True)(save, start, cells[i])
                start += len(cells[i].members)
            parts[i] = da.from_delayed(part, (cells[i].n_cells, width), dtype=np.float32)
    del futures  # saved: the workers keep nothing of the level
    probabilities = (
        da.concatenate(parts, axis=0) if parts else da.zeros((0, width), dtype=np.float32)
    )
    return LevelCalls(codes, confidence, changed, probabilities)


def _fixed_probabilities(cells: ChunkCells, width: int) -> np.ndarray:
    out = np.full((cells.n_cells, width), np.nan, dtype=np.float32)
    out[cells.members] = 0.0
    out[cells.members, -1] = 1.0
    return out


def unassigned_probabilities(cells: list[ChunkCells], width: int) -> da.Array:
    """The label probabilities of a level left unannotated: its cells all `unassigned`
    (probability 1), NaN rows outside it."""
    parts = [
        da.from_delayed(
            dask.delayed(_fixed_probabilities, pure=True)(c, width), (c.n_cells, width),
            dtype=np.float32,
        )
        for c in cells
    ]  # fmt: skip
    return da.concatenate(parts, axis=0) if parts else da.zeros((0, width), dtype=np.float32)

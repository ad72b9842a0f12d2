"""The preprocess stage: normalize + log1p, seurat_v3 HVGs and PCA, out of core on Dask.

Passes over the cohort's chunks, each reducing to per-gene sums so that no process holds
more than a chunk of counts: (1) per-batch moments of raw counts (skipped when the qc
stage's per-sample moments are given), (2) per-batch moments of counts clipped at Seurat
v3's bound, (3) X'X of the log-normalized HVGs, (4) the projection of every kept cell
onto the principal axes. Above ``pca_max_cells`` kept cells, (3) is X'X of a stratified
subsample and (4) is preceded by X'X Q of every kept cell for the subsample's top
2 x n_comps axes Q (a tenth of X'X's arithmetic), whose Rayleigh-Ritz solution gives the
axes; with a scratch folder (the stage's own run), pass (2) also saves every kept cell's
counts of the candidate genes (`candidate_genes`: ~1/5 of the stored entries), so that
(3), the refinement and, for the exact PCA, (4) read those instead of the chunks when
every HVG is a candidate (else they read the chunks), and the refinement saves the cells'
coordinates X Q, from which they are projected without another pass over the counts.
Each kind of scratch file is written only if an upper bound on its size fits in half the
free space there (`SCRATCH_SHARE`); else its passes read the counts.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
from distributed import Client, futures_of, wait

from ..cohort import Counts, cell_chunks
from ..config import PreprocessConfig
from ..moments import (
    Moments,
    add_moments,
    batch_moments,
    clipped_moments,
    clipped_moments_and_rows,
)
from ..sampling import stratified_sample
from ..store import scratch_folder
from ._kernels import add_sums, gram, gram_times, project, project_coordinates
from ._models import (
    PcaLoadings,
    clip_values,
    mean_var,
    pca_from_gram,
    pca_from_products,
    seurat_v3_table,
)

# A subsample's axes are refined within the span of its top BASIS_FACTOR x n_comps axes
# (Rayleigh-Ritz on every kept cell): 2 reached |r| >= 0.99 on the first 20 PCs against
# the exact PCA at 1M cells (docs/benchmarks.md)
BASIS_FACTOR = 2
# The subsample's X'X is summed over groups of chunks of at least this many rows, a task
# each: a partial is genes x genes (32 MB for 2,000 HVGs), so a partial per chunk (98 at
# 1M cells, 390 at 4M) cost more in adding and moving them than in computing them
GRAM_GROUP_ROWS = 25_000
# The candidate genes (`candidate_genes`): per batch this many times n_top_genes of the
# largest normalized variances before clipping. Clipping lowers a gene's normalized
# variance, never raises it, so only genes that others overtake could be HVGs outside
# them; at 1M cells the HVGs were the top 2,000 unclipped ones (docs/benchmarks.md).
CANDIDATE_FACTOR = 1.25
PCA_SCRATCH = "pca-scratch"  # the scratch folder: the candidate rows, the cells' coordinates
# The scratch folder takes at most this share of the free space where it is (measured when
# the stage starts; the rest is left for the stage's outputs and everything else there):
# files that would not fit are not written and their passes read the counts instead
SCRATCH_SHARE = 0.5


def scratch_bytes(moments: Moments, candidates: np.ndarray, count_bytes: int, n_files: int) -> int:
    """An upper bound on the bytes of the kept cells' saved candidate rows in ``n_files``
    files: a column index and a count per stored entry (counts are integers, so a gene's
    stored entries in a batch are at most its count sum there and at most the batch's
    cells), a row pointer per cell, and each file's headers."""
    cells = sum(float(m[0, 0]) for m in moments.values())
    entries = sum(float(np.minimum(m[0, 0], m[1, candidates]).sum()) for m in moments.values())
    return int(entries * (4 + count_bytes) + (cells + n_files) * 8 + n_files * 4096)


def _no_room(what: str, needed: int, free: int, where: Path) -> str:
    return (
        f"{what} (up to {needed / 1e9:.2f} GB) would take more than {SCRATCH_SHARE:.0%} of "
        f"the {free / 1e9:.2f} GB free in {where}: read from the counts instead"
    )


def candidate_genes(moments: Moments, reg_std: np.ndarray, n_top: int) -> np.ndarray:
    """The genes whose counts the clipped pass saves (sorted indices): the union over the
    batches of the ``CANDIDATE_FACTOR x n_top`` genes of largest unclipped normalized
    variance (seurat_v3's variance over the regularized one, as in `seurat_v3_table`
    without a clip)."""
    n_genes = reg_std.shape[1]
    top = min(n_genes, int(np.ceil(CANDIDATE_FACTOR * n_top)))
    chosen = np.zeros(n_genes, dtype=bool)
    for b, m in moments.items():
        norm = mean_var(m)[2] / reg_std[b] ** 2
        chosen[np.argsort(-norm, kind="stable")[:top]] = True
    return np.flatnonzero(chosen)


def _clipped_and_saved(
    block: Any,
    batch: np.ndarray,
    keep: np.ndarray,
    clip: np.ndarray,
    genes: np.ndarray,
    path: str | None,
) -> Moments:
    """`clipped_moments` of one chunk; with ``path``, its kept cells' raw counts of
    ``genes`` (the candidates) saved there, so that X'X and the refinement read them,
    not the chunk."""
    if path is None:
        return clipped_moments(block, batch, keep, clip)
    moments, rows = clipped_moments_and_rows(block, batch, keep, clip, genes)
    sp.save_npz(path, rows, compressed=False)
    return moments


def _saved_gram(
    paths: list[str],
    genes: np.ndarray,
    totals: list[np.ndarray],
    fits: list[np.ndarray],
    target_sum: float,
) -> tuple[float, np.ndarray, np.ndarray]:
    """`gram` of the rows in ``fits`` of the candidate rows `_clipped_and_saved` saved at
    ``paths`` (``genes``: the HVGs' columns there; ``totals``: the saved cells' counts),
    summed."""
    out = None
    for path, total, fit in zip(paths, totals, fits, strict=True):
        part = gram(sp.load_npz(path), fit, genes, total, target_sum)
        out = part if out is None else add_sums(out, part)
    assert out is not None
    return out


def _groups(sizes: np.ndarray, rows: int) -> list[list[int]]:
    """Consecutive indices of ``sizes`` grouped until each group has >= ``rows`` (the last
    may have fewer)."""
    groups: list[list[int]] = [[]]
    total = 0
    for i, size in enumerate(sizes):
        if total >= rows:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += int(size)
    return [g for g in groups if g]


def _refine_part(
    block: Any,
    keep: np.ndarray,
    genes: np.ndarray,
    total: np.ndarray,
    target_sum: float,
    basis: np.ndarray,
    path: str | None,
) -> tuple[float, np.ndarray, float, np.ndarray]:
    """`gram_times` of one chunk (a path: the candidate rows saved there); its kept
    cells' coordinates saved at ``path`` (the projection then needs no further pass over
    the counts)."""
    if isinstance(block, str):
        block = sp.load_npz(block)
    sums, coords = gram_times(block, keep, genes, total, target_sum, basis)
    if path is not None:
        np.save(path, coords)
    return sums


def _project_saved(
    path: str, keep: np.ndarray, mixing: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    return project_coordinates(np.load(path, mmap_mode="r"), keep, mixing, shift)


def _project_saved_rows(
    path: str,
    keep: np.ndarray,
    genes: np.ndarray,
    total: np.ndarray,
    target_sum: float,
    mean: np.ndarray,
    components: np.ndarray,
) -> np.ndarray:
    """`project` of a chunk from its kept cells' candidate rows saved at ``path``
    (``genes``: the HVGs' columns there; ``total``: the saved cells' counts): the same
    scores, bit for bit (each cell's HVG entries summed in the same order); NaN for cells
    not kept."""
    out = np.full((keep.size, components.shape[1]), np.nan, dtype=np.float32)
    rows = sp.load_npz(path)
    out[keep] = project(
        rows, np.ones(rows.shape[0], dtype=bool), genes, total, target_sum, mean, components
    )
    return out


def _on_workers(client: Client, tasks: list[Any], chunks: list[Any], n_comps: int) -> da.Array:
    """Per-chunk score tasks computed on the workers and waited for (they may read
    scratch files about to be removed): a Dask array of their results, left there."""
    blocks = client.persist(tasks)  # each holds its future: the results stay referenced
    wait(futures_of(blocks))
    return da.concatenate(
        [
            da.from_delayed(b, shape=(c.stop - c.start, n_comps), dtype=np.float32)
            for b, c in zip(blocks, chunks, strict=True)
        ]
    )


@dataclass(frozen=True)
class PreprocessResult:
    var: pd.DataFrame  # the HVG table, one row per cohort gene
    pca: da.Array  # cells x n_comps float32, on the workers (`project_cells`); NaN: not kept
    loadings: PcaLoadings
    variance: np.ndarray
    variance_ratio: np.ndarray
    seconds: dict[str, float]
    hvg_batches_left_out: tuple[str, ...] = ()  # batches too small to rank genes
    candidate_rows: bool = False  # X'X and the refinement read the saved candidate rows
    scratch_notes: tuple[str, ...] = ()  # files the scratch folder had no room for

    @property
    def components(self) -> np.ndarray:  # HVGs x n_comps
        return self.loadings.components


def _tree_sum(parts: list[Any], add: Callable[[Any, Any], Any]) -> Any:
    """Pairwise sums as a dask.delayed tree (reductions run on the workers)."""
    while len(parts) > 1:
        parts = [
            dask.delayed(add)(parts[i], parts[i + 1]) if i + 1 < len(parts) else parts[i]
            for i in range(0, len(parts), 2)
        ]
    return parts[0]


def _projection_tasks(
    cells: Counts,
    client: Client,
    keep: np.ndarray,
    total_counts: np.ndarray,
    loadings: PcaLoadings,
    target_sum: float,
) -> list[Any]:
    components = client.scatter(loadings.components, broadcast=True, hash=False)
    return [
        dask.delayed(project)(
            c.block,
            keep[c.rows],
            loadings.hvg,
            total_counts[c.rows],
            target_sum,
            loadings.centre,
            components,
        )
        for c in cell_chunks(cells.X)
    ]


def project_cells(
    cells: Counts,
    *,
    client: Client,
    keep: np.ndarray,
    total_counts: np.ndarray,
    loadings: PcaLoadings,
    target_sum: float,
) -> np.ndarray:
    """PC scores (cells x components, float32; NaN for cells not in ``keep``) of a lazy
    view's cells: log-normalized with ``target_sum``, centred and projected with
    ``loadings``, one task per chunk, gathered (for a batch's cells; the preprocess stage
    leaves the cohort's on the workers: `project_cells_on_workers`)."""
    tasks = _projection_tasks(cells, client, keep, total_counts, loadings, target_sum)
    return np.vstack(client.compute(tasks, sync=True))


def project_cells_on_workers(
    cells: Counts,
    *,
    client: Client,
    keep: np.ndarray,
    total_counts: np.ndarray,
    loadings: PcaLoadings,
    target_sum: float,
) -> da.Array:
    """`project_cells`, computed on the workers (waited for: the stage's seconds include
    it) and left there: a Dask array of their results (write it into a store with
    `pipeline.store.write_lazy_array`)."""
    tasks = _projection_tasks(cells, client, keep, total_counts, loadings, target_sum)
    return _on_workers(client, tasks, cell_chunks(cells.X), loadings.components.shape[1])


def pca_fit_cells(obs: pd.DataFrame, keep: np.ndarray, params: PreprocessConfig) -> np.ndarray:
    """The cells whose X'X fits the principal axes: every kept cell, or above
    ``params.pca_max_cells`` kept cells a subsample of them stratified by ``sample_id``
    (by the HVG batch key when obs lacks it), seeded by ``params.seed``."""
    keep = np.asarray(keep, dtype=bool)
    rows = np.flatnonzero(keep)
    if params.pca_max_cells is None or rows.size <= params.pca_max_cells:
        return keep
    key = "sample_id" if "sample_id" in obs else params.hvg_batch_key
    groups = pd.Categorical(obs[key].astype(str)).codes[rows]
    fit = np.zeros_like(keep)
    fit[rows[stratified_sample(groups, params.pca_max_cells, params.seed)]] = True
    return fit


def _hvg_table(
    cohort: Counts,
    chunks: list[Any],
    client: Client,
    keep: np.ndarray,
    params: PreprocessConfig,
    moments: Moments | None,
    rows: list[str] | None,
    room: int,
) -> tuple[pd.DataFrame, tuple[str, ...], np.ndarray, list[str] | None, int]:
    """scanpy's seurat_v3 HVG table of the kept cells, the batches too small to rank
    genes and the candidate genes; with ``rows`` (a path per chunk) the clipped pass also
    saves each chunk's kept cells' counts of the candidates there (`_clipped_and_saved`)
    if their bound (`scratch_bytes`) is at most ``room`` bytes. Also returned: ``rows``
    or None where not saved, and the bound."""
    batch_cat = pd.Categorical(cohort.obs[params.hvg_batch_key].astype(str))
    batch = batch_cat.codes.astype(np.int64)
    n_batches = len(batch_cat.categories)
    if moments is None:
        parts = [dask.delayed(batch_moments)(c.block, batch[c.rows], keep[c.rows]) for c in chunks]
        moments = client.compute(_tree_sum(parts, add_moments), sync=True)
    every_batch = moments
    small = sorted(b for b, m in moments.items() if m[0, 0] < params.hvg_min_batch_cells)
    left_out = tuple(str(batch_cat.categories[b]) for b in small)
    if len(small) == len(moments):  # no batch is large enough: the cells as one batch
        batch = np.zeros_like(batch)
        moments, n_batches, left_out = {0: _tree_sum(list(moments.values()), np.add)}, 1, ()
    else:
        moments = {b: m for b, m in moments.items() if b not in small}
    reg_std, clip = clip_values(moments, n_batches, params.hvg_span)
    candidates = candidate_genes(moments, reg_std, params.n_top_genes)
    needed = scratch_bytes(every_batch, candidates, cohort.X.dtype.itemsize, len(chunks))
    if needed > room:
        rows = None
    clip_f = client.scatter(clip, broadcast=True, hash=False)
    paths = rows if rows is not None else [None] * len(chunks)
    parts = [
        dask.delayed(_clipped_and_saved)(
            c.block, batch[c.rows], keep[c.rows], clip_f, candidates, path
        )
        for c, path in zip(chunks, paths, strict=True)
    ]
    clipped = client.compute(_tree_sum(parts, add_moments), sync=True)
    table = seurat_v3_table(moments, clipped, reg_std, cohort.var_names, params.n_top_genes)
    return table, left_out, candidates, rows, needed


def preprocess_cohort(
    cohort: Counts,
    *,
    client: Client,
    keep: np.ndarray,
    total_counts: np.ndarray,
    params: PreprocessConfig,
    moments: Moments | None = None,
    scratch: Path | None = None,
) -> PreprocessResult:
    """Highly variable genes and PCA of the cells in ``keep`` (QC-passed), out of core,
    with the preprocess section's ``params``.

    ``moments`` (batch code -> per-gene moments of the kept cells' raw counts, as the qc
    stage records them per sample) saves the first pass over the cohort. The principal
    axes are fitted on `pca_fit_cells`: on every kept cell (exact X'X), or above
    ``params.pca_max_cells`` kept cells on a stratified subsample whose axes are then
    refined on every kept cell (`pca_from_products`); every kept cell is projected onto
    them. ``scratch``: a folder every worker can write (the workdir), where the HVG pass
    saves the kept cells' counts of the candidate genes for X'X, the refinement and the
    exact PCA's projection (read instead of the counts when every HVG is a candidate:
    ``candidate_rows`` in the result) and the refinement the cells' coordinates on the
    subsample's axes for the projection (in a temporary folder, removed before
    returning); None: X'X, refinement
    and projection read the counts. Files whose bound would take more than
    ``SCRATCH_SHARE`` of the free space there are not written (their passes read the
    counts; ``scratch_notes`` in the result says which and why).
    """
    seconds: dict[str, float] = {}
    chunks = cell_chunks(cohort.X)
    fit = pca_fit_cells(cohort.obs, keep, params)
    exact = np.count_nonzero(fit) == np.count_nonzero(keep)
    notes: list[str] = []  # files the scratch folder had no room for
    free = room = 0
    if scratch is not None:
        free = shutil.disk_usage(scratch).free
        room = int(SCRATCH_SHARE * free)
        coords = 0 if exact else int(np.count_nonzero(keep)) * 4 * BASIS_FACTOR * params.n_comps
        if coords > room:  # float32 coordinates on the subsample's basis
            notes.append(_no_room("the cells' coordinates", coords, free, scratch))
            scratch = None
        room -= coords
    with ExitStack() as stack:
        folder = (
            None if scratch is None else stack.enter_context(scratch_folder(scratch, PCA_SCRATCH))
        )
        t = time.perf_counter()
        # with a scratch folder, the HVG pass saves the kept cells' candidate rows
        asked = (
            None if folder is None else [str(folder / f"rows-{i}.npz") for i in range(len(chunks))]
        )
        table, left_out, candidates, rows, needed = _hvg_table(
            cohort, chunks, client, keep, params, moments, asked, room
        )
        if asked is not None and rows is None:
            assert scratch is not None
            notes.append(_no_room("the candidate genes' counts", needed, free, scratch))
        seconds["hvg"] = time.perf_counter() - t

        t = time.perf_counter()
        hvg = np.flatnonzero(table["highly_variable"].to_numpy())
        if rows is not None and not np.isin(hvg, candidates).all():
            rows = None  # an HVG outside the candidates: X'X and refinement read the chunks
        saved = np.searchsorted(candidates, hvg)  # the HVGs' columns in the saved rows
        kept = [keep[c.rows] for c in chunks]
        if rows is None:
            parts = [
                dask.delayed(gram)(
                    c.block, fit[c.rows], hvg, total_counts[c.rows], params.target_sum
                )
                for c in chunks
            ]
        else:  # a task per group of chunks: a few genes x genes partials to add and move
            sizes = np.array([np.count_nonzero(fit[c.rows]) for c in chunks])
            parts = [
                dask.delayed(_saved_gram)(
                    [rows[i] for i in group],
                    saved,
                    [total_counts[chunks[i].rows][kept[i]] for i in group],
                    [fit[chunks[i].rows][kept[i]] for i in group],
                    params.target_sum,
                )
                for group in _groups(sizes, GRAM_GROUP_ROWS)
            ]
        n, sums, g = client.compute(_tree_sum(parts, add_sums), sync=True)
        if exact:  # X'X of every kept cell
            mean, components, variance, ratio = pca_from_gram(n, sums, g, params.n_comps)
            loadings = PcaLoadings(hvg, mean, components)
            if rows is None:
                scores = project_cells_on_workers(
                    cohort, client=client, keep=keep, total_counts=total_counts,
                    loadings=loadings, target_sum=params.target_sum,
                )  # fmt: skip
            else:  # from the saved candidate rows, read before the folder goes
                components_f = client.scatter(components, broadcast=True, hash=False)
                tasks = [
                    dask.delayed(_project_saved_rows)(
                        rows[i], keep[c.rows], saved, total_counts[c.rows][kept[i]],
                        params.target_sum, mean, components_f,
                    )
                    for i, c in enumerate(chunks)
                ]  # fmt: skip
                scores = _on_workers(client, tasks, chunks, components.shape[1])
        else:  # the subsample's axes, refined on every kept cell by one more pass
            basis = pca_from_gram(n, sums, g, min(BASIS_FACTOR * params.n_comps, hvg.size))[1]
            paths = [
                None if folder is None else str(folder / f"{i}.npy") for i in range(len(chunks))
            ]
            basis_f = client.scatter(basis, broadcast=True, hash=False)
            parts = [
                dask.delayed(_refine_part)(
                    c.block, keep[c.rows], hvg, total_counts[c.rows], params.target_sum,
                    basis_f, path,
                )
                if rows is None
                else dask.delayed(_refine_part)(  # the chunk's saved candidate rows
                    rows[i], np.ones(kept[i].sum(), dtype=bool), saved,
                    total_counts[c.rows][kept[i]], params.target_sum, basis_f, path,
                )
                for i, (c, path) in enumerate(zip(chunks, paths, strict=True))
            ]  # fmt: skip
            n, sums, squares, product = client.compute(_tree_sum(parts, add_sums), sync=True)
            mean, components, variance, ratio, mixing = pca_from_products(
                n, sums, squares, basis, product, params.n_comps
            )
            loadings = PcaLoadings(hvg, mean, components)
            if folder is None:
                scores = project_cells_on_workers(
                    cohort, client=client, keep=keep, total_counts=total_counts,
                    loadings=loadings, target_sum=params.target_sum,
                )  # fmt: skip
            else:  # from the saved coordinates, read before the folder goes
                tasks = [
                    dask.delayed(_project_saved)(path, keep[c.rows], mixing, mean @ components)
                    for c, path in zip(chunks, paths, strict=True)
                ]
                scores = _on_workers(client, tasks, chunks, mixing.shape[1])
    seconds["pca"] = time.perf_counter() - t
    # the centre of the log-normalized HVGs: new cells are projected with it (add-batch)
    table["pca_mean"] = loadings.to_record(len(table))[0]
    return PreprocessResult(
        var=table,
        pca=scores,
        loadings=loadings,
        variance=variance,
        variance_ratio=ratio,
        seconds=seconds,
        hvg_batches_left_out=left_out,
        candidate_rows=rows is not None,
        scratch_notes=tuple(notes),
    )

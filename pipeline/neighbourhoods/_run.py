"""The neighbourhoods stage in a workdir: the integrated embedding, the graph stage's kNN
graph and the labels in; neighbourhoods, their counts per sample, the models' contrasts
with spatial FDR, and plots out (``WORKDIR/neighbourhoods/``, built under a temporary
name with its manifest).

The workers refine the sampled cells, search the neighbourhoods' members shard by shard,
count them per sample, take their majority labels and write their member lists
(`_tasks`); the driver holds per-cell codes (sample, labels: a few bytes per cell) and
per-neighbourhood results, writes the membership a block of neighbourhoods at a time, and
has the models fitted on the workers a chunk at a time.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from ..abundance import AbundanceDesignError, contrast_names, estimable_design, with_covariate
from ..config import RunConfig
from ..errors import ImmunoprofileError
from ..graph import load_shards
from ..integrate import map_to_reference
from ..labels import B_SUBSETS, DESIGN_COLUMNS, LINEAGES
from ..runtime import release_memory
from ..store import read_rows
from ..workdir import Workdir
from ._kernels import Neighbourhoods, draw_cells, members_within, spatial_fdr
from ._lineage import lineage_embedding, lineage_neighbourhoods
from ._model import ChunkFits, estimable_contrasts, fit_neighbourhoods
from ._plots import beeswarm_plot
from ._tasks import (
    BLOCK_ENTRIES,
    graph_widths,
    nhood_block,
    refine_block,
)

if TYPE_CHECKING:
    from ..stages import StageContext

SHARD_CELLS = 100_000  # kept cells per block of the embedding a search step reads

OBS_COLUMNS = (*DESIGN_COLUMNS, "qc_pass", "lineage", "b_subset")
TEST_COLUMNS = ("nhood", "denominator", "index_cell", "lineage", "lineage_fraction", "b_subset",
                "b_subset_fraction", "contrast", "estimate", "ci_low", "ci_high", "pvalue",
                "spatial_fdr", "method")  # fmt: skip
CELLS_PER_SAMPLE = 5  # Milo's rule of thumb: neighbourhoods of ~5 cells per sample
PBMC = "PBMC"  # the denominator of the neighbourhoods cut from every QC-passed cell


def neighbourhoods_digest_inputs(cfg: RunConfig, workdir: Workdir) -> dict[str, Any]:
    """Its parameters, the graph's embedding and k (the neighbourhoods are searched in
    that embedding, at least that many cells each), and every batch layer (their cells
    are counted into the neighbourhoods)."""
    return {
        "params": cfg.neighbourhoods.model_dump(mode="json"),
        "graph": {"use_rep": cfg.graph.use_rep, "n_neighbors": cfg.graph.n_neighbors},
        "batches": {name: layer.digest for name, layer in workdir.batch_layers().items()},
    }


def neighbourhood_size(cfg: RunConfig, n_samples: int, n_cells: int) -> int:
    """``neighbourhoods.k``, or 5 cells per sample, at most ``max_k`` and ``max_share`` of
    the cells but at least one cell per sample and the graph's ``n_neighbors``; never
    more than the cells there are. (Below ~1 cell per sample the Wald tests turn
    conservative: docs/benchmarks.md.)"""
    n = cfg.neighbourhoods
    if n.k is not None:
        return min(n.k, n_cells)
    cap = min(n.max_k, round(n.max_share * n_cells))
    floor = max(n_samples, cfg.graph.n_neighbors)
    return min(max(min(CELLS_PER_SAMPLE * n_samples, cap), floor), n_cells)


def _codes(values: pd.Series, vocabulary: Sequence[str], dtype: Any = np.int64) -> np.ndarray:
    """Each cell's position in ``vocabulary`` (-1: missing or not in it), through the
    column's categories: no per-cell strings are made."""
    column = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")
    lookup = pd.Index(list(vocabulary)).get_indexer(column.cat.categories.astype(str))
    cell = column.cat.codes.to_numpy()
    return np.where(cell >= 0, lookup[np.maximum(cell, 0)], -1).astype(dtype)


def _samples(obs: pd.DataFrame) -> pd.DataFrame:
    """One row per sample with QC-passed cells: the design columns and ``n_cells``."""
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    kept = obs.loc[keep, list(DESIGN_COLUMNS)]
    table = kept.drop_duplicates("sample_id").astype(
        {"sample_id": str, "patient_id": str, "response": str, "batch": str}
    )
    table = table.reset_index(drop=True)
    codes = _codes(kept["sample_id"], table["sample_id"].tolist())
    sizes = np.bincount(codes[codes >= 0], minlength=len(table))
    return table.assign(n_cells=sizes.astype(np.int64))


def _tests(fits: ChunkFits | None, fitted: list[str], names: list[str],
           nhoods: pd.DataFrame) -> Iterator[pd.DataFrame]:  # fmt: skip
    """Every neighbourhood x contrast of the design's timepoints (``names``), a contrast at
    a time; those not ``fitted`` (the design cannot estimate them) NaN, as in
    abundance/tests.csv. The spatial FDR is over ``nhoods`` (one family) alone."""
    blank = np.full(len(nhoods), np.nan)
    for contrast in names:
        if fits is not None and contrast in fitted:
            j = fitted.index(contrast)
            values = {
                key: getattr(fits, key)[:, j] for key in ("estimate", "ci_low", "ci_high", "pvalue")
            }
        else:
            values = dict.fromkeys(("estimate", "ci_low", "ci_high", "pvalue"), blank)
        yield nhoods.assign(
            contrast=contrast, **values, method="glmm",
            spatial_fdr=spatial_fdr(values["pvalue"], nhoods["weight"].to_numpy()),
        ).reindex(columns=list(TEST_COLUMNS))  # fmt: skip


def _fit_all(ctx: StageContext, counts: np.ndarray, totals: np.ndarray, design) -> ChunkFits:
    client, chunk = ctx.cluster, ctx.cfg.neighbourhoods.chunk
    totals = np.asarray(totals, dtype=float)
    held = client.scatter(design, broadcast=True, hash=False)  # a key of its own per call
    futures = [
        client.submit(fit_neighbourhoods, counts[s : s + chunk], totals, held, pure=False)
        for s in range(0, counts.shape[0], chunk)
    ]
    parts = client.gather(futures)
    del futures, held
    stacked = {key: np.vstack([getattr(p, key) for p in parts])
               for key in ("estimate", "ci_low", "ci_high", "pvalue")}  # fmt: skip
    return ChunkFits(**stacked, fits=pd.concat([p.fits for p in parts], ignore_index=True))


REFINE_CELLS = 2_500  # sampled cells refined per task (~60 MB of their neighbours' points)


@dataclass(frozen=True)
class Found:
    """The neighbourhoods found by the workers (their member lists in a zarr array)."""

    index_rows: np.ndarray  # cohort rows of the index cells, ascending
    kth_distance: np.ndarray
    counts: np.ndarray  # neighbourhoods x samples
    labels: pd.DataFrame  # lineage, lineage_fraction, b_subset, b_subset_fraction
    exact: bool


def _find(ctx: StageContext, element: str, rows: np.ndarray, k: int, sample_codes: np.ndarray,
          n_samples: int, label_codes: dict[str, np.ndarray], members_path: Path) -> Found:  # fmt: skip
    """Refined sampling, the sharded neighbour search, the counts and the majority labels,
    all on the workers (`_tasks`); the member lists written to ``members_path``."""
    client, n, g = ctx.cluster, ctx.cfg.neighbourhoods, ctx.cfg.graph
    store, graph = str(ctx.workdir.cohort), "obsp/distances"
    sampled = rows[draw_cells(rows.size, n.prop, n.seed, n.max_index_cells)]
    width = int(graph_widths(store, graph, sampled).max(initial=0)) + 1
    refined = [client.submit(refine_block, store, element, graph,
                             sampled[s : s + REFINE_CELLS], width, pure=False)
               for s in range(0, sampled.size, REFINE_CELLS)]  # fmt: skip
    index_rows = np.unique(np.concatenate(client.gather(refined)))
    del refined
    client.run(release_memory)  # the refinement's heap, before the blocks are read
    positions = np.searchsorted(rows, index_rows)
    shards = load_shards(client, store, element, rows, exact_knn_below=g.exact_knn_below,
                         seed=g.seed, block_cells=SHARD_CELLS, resident=False)  # fmt: skip
    exact = shards.exact
    block = max(1, BLOCK_ENTRIES // k)
    zarr.create_array(str(members_path), shape=(index_rows.size, k), chunks=(block, k),
                      dtype="int32")  # fmt: skip
    held = client.scatter(
        {"rows": rows, "samples": sample_codes, **label_codes}, broadcast=True, hash=False
    )  # held until the tasks that use them are done
    vocabularies = {"lineage": len(LINEAGES), "b_subset": len(B_SUBSETS)}
    labels = {level: (held[level], size) for level, size in vocabularies.items()}
    starts = list(range(0, index_rows.size, block))
    wave = max(2, 2 * sum(client.nthreads().values()))
    blocks = []
    for first in range(0, len(starts), wave):  # a few blocks' results in memory at a time
        mine = starts[first : first + wave]
        queries = [client.submit(read_rows, store, element, index_rows[s : s + block])
                   for s in mine]  # fmt: skip
        found = shards.search(client, queries, k)
        del queries
        futures = [
            client.submit(nhood_block, f, s, positions[s : s + block], held["rows"],
                          held["samples"], n_samples, labels, str(members_path), pure=False)
            for f, s in zip(found, mine, strict=True)
        ]  # fmt: skip
        del found
        blocks.extend(client.gather(futures))
        del futures
    del shards, held, labels
    client.run(release_memory)  # the blocks' and the search's heap, before the fits
    columns = {}
    for level, vocabulary in (("lineage", LINEAGES), ("b_subset", B_SUBSETS)):
        best = np.concatenate([b.labels[level][0] for b in blocks])
        columns[level] = np.array([*vocabulary, ""], dtype=object)[best]
        columns[f"{level}_fraction"] = np.concatenate([b.labels[level][1] for b in blocks])
    return Found(
        index_rows=index_rows,
        kth_distance=np.concatenate([b.kth_distance for b in blocks]),
        counts=np.vstack([b.counts for b in blocks]),
        labels=pd.DataFrame(columns),
        exact=exact,
    )


@dataclass(frozen=True)
class Family:
    """One family of neighbourhoods: cut from every QC-passed cell (``PBMC``) or from a
    lineage's cells, and tested out of each sample's cells of the same kind (``totals``)."""

    denominator: str
    k: int
    n_cells: int  # the cohort's cells the neighbourhoods were cut from
    exact: bool
    index_rows: np.ndarray  # cohort rows, ascending
    kth_distance: np.ndarray
    counts: np.ndarray  # neighbourhoods x samples (batch cells included)
    labels: pd.DataFrame  # lineage, lineage_fraction, b_subset, b_subset_fraction
    totals: np.ndarray  # per sample: its cells of the denominator
    members_path: Path  # the member lists (zarr, int32 cohort rows)
    extra: tuple[np.ndarray, np.ndarray]  # batch cells: (obs rows, neighbourhoods)
    notes: dict[str, Any]

    def table(self, offset: int) -> pd.DataFrame:
        """The neighbourhoods, numbered from ``offset``, with their Milo weights."""
        weights = Neighbourhoods(self.index_rows, self.index_rows[:0], self.kth_distance,
                                 self.exact).weights  # fmt: skip
        frame = pd.DataFrame({
            "nhood": offset + np.arange(self.index_rows.size), "denominator": self.denominator,
            "index_cell": self.index_rows, "size": self.k,
            "kth_distance": self.kth_distance.astype(float), "weight": weights,
        })  # fmt: skip
        return pd.concat([frame, self.labels.reset_index(drop=True)], axis=1)


def _label_frame(labels: dict[str, tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    columns = {}
    for level, vocabulary in (("lineage", LINEAGES), ("b_subset", B_SUBSETS)):
        best, share = labels[level]
        columns[level] = np.array([*vocabulary, ""], dtype=object)[best]
        columns[f"{level}_fraction"] = share
    return pd.DataFrame(columns)


def lineage_neighbourhood_size(cfg: RunConfig, n_samples: int, n_cells: int) -> int:
    """A lineage family's neighbourhood: 5 cells per sample, at most ``lineage_max_share``
    of the lineage's cells, at least one cell per sample and the graph's
    ``n_neighbors``; never more than the cells there are."""
    cap = round(cfg.neighbourhoods.lineage_max_share * n_cells)
    floor = max(n_samples, cfg.graph.n_neighbors)
    return min(max(min(CELLS_PER_SAMPLE * n_samples, cap), floor), n_cells)


def _lineage_family(ctx: StageContext, lineage: str, obs: pd.DataFrame, keep: np.ndarray,
                    n_cohort: int, codes: np.ndarray, samples: pd.DataFrame,
                    label_codes: dict[str, np.ndarray], members_path: Path) -> Family | str:  # fmt: skip
    """The neighbourhoods of ``lineage``'s QC-passed cells of the cohort (`_lineage`; their
    size set by the cohort's samples, as the PBMC family's), with the batch layers' cells
    of the lineage counted in; or why there are none (a warning)."""
    cfg, n, g = ctx.cfg, ctx.cfg.neighbourhoods, ctx.cfg.graph
    store = str(ctx.workdir.cohort)
    mine = keep & (label_codes["lineage"] == LINEAGES.index(lineage))
    rows = np.flatnonzero(mine[:n_cohort])
    added = n_cohort + np.flatnonzero(mine[n_cohort:])
    n_samples = int(np.unique(codes[:n_cohort][keep[:n_cohort]]).size)  # the cohort's
    k = lineage_neighbourhood_size(cfg, n_samples, rows.size)
    least = 2 * max(n_samples, g.n_neighbors + 1)
    if rows.size < least:
        return (f"{lineage}: {rows.size} QC-passed cells, too few for neighbourhoods of their "
                f"own (at least {least}); not tested")  # fmt: skip
    key = n.lineage_integrate_by
    column = obs[key if key is not None else "patient_id"]  # labels of a few rows only:

    def labels_of(at: np.ndarray) -> np.ndarray:  # no per-cell strings of every cell
        return column.iloc[at].astype(str).to_numpy()

    reference, notes = None, {}
    if key is not None and pd.unique(labels_of(rows)).size > 1:
        harmony = lineage_embedding(
            read_rows(store, "obsm/X_pca", rows), labels_of(rows),
            max_cells=n.lineage_harmony_max_cells, theta=cfg.integrate.harmony_theta,
            max_iter=cfg.integrate.harmony_max_iter, seed=n.seed,
        )  # fmt: skip
        x, reference, used = harmony.embedding, harmony.reference, key
        notes["harmony_fitted_cells"] = harmony.n_fitted
        del harmony
    else:
        x = np.ascontiguousarray(read_rows(store, f"obsm/{cfg.graph.use_rep}", rows),
                                 dtype=np.float32)  # fmt: skip
        used = None
    vocabularies = {"lineage": len(LINEAGES), "b_subset": len(B_SUBSETS)}
    found = lineage_neighbourhoods(
        x, rows, k, n_neighbors=g.n_neighbors, prop=n.prop, seed=n.seed,
        most=n.max_index_cells, exact_knn_below=g.exact_knn_below, knn_seed=g.seed,
        sample_codes=codes, n_samples=len(samples),
        label_codes={level: (label_codes[level], size) for level, size in vocabularies.items()},
        members_path=members_path,
    )  # fmt: skip
    del x
    counts = found.counts
    extra = (np.empty(0, np.int64), np.empty(0, np.int64))
    if added.size:  # add-batch's cells of the lineage, placed as the cohort's were
        if reference is not None:
            points, _ = map_to_reference(ctx.read_obsm("X_pca", batches=True)[added],
                                         labels_of(added), reference)  # fmt: skip
        else:
            points = ctx.read_obsm(cfg.graph.use_rep, batches=True)[added]
        share = k * found.index_positions.size / max(rows.size, 1)
        inside, nhood = members_within(found.index_points, found.kth_distance, points,
                                       n_search=max(64, int(4 * share)))  # fmt: skip
        extra = (added[inside], nhood)
        np.add.at(counts, (nhood, codes[added[inside]]), 1)
    totals = np.bincount(codes[mine], minlength=len(samples)).astype(np.int64)
    return Family(
        denominator=lineage, k=k, n_cells=int(rows.size), exact=found.exact,
        index_rows=rows[found.index_positions], kth_distance=found.kth_distance,
        counts=counts, labels=_label_frame(found.labels), totals=totals,
        members_path=members_path, extra=extra, notes={"integrated_by": used, **notes},
    )  # fmt: skip


def _write_membership(path: Path, members_paths: Sequence[Path],
                      extra: tuple[np.ndarray, np.ndarray], n_cells: int) -> np.ndarray:  # fmt: skip
    """Write the membership (cells x neighbourhoods, CSC, 0/1: the member lists of
    ``members_paths``, one zarr array per family, their neighbourhoods numbered on from
    one to the next, and the ``extra`` (cell, neighbourhood) pairs of batch cells, whose
    rows come after all members') into the AnnData-Zarr store at ``path`` as
    ``uns/membership``, a block of neighbourhoods at a time; returns each cell's number of
    neighbourhoods among the member lists."""
    per_cell = np.zeros(n_cells, dtype=np.int64)
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    cells, nhood = extra
    offset, first = 0, True
    for members_path in members_paths:
        members = zarr.open_array(str(members_path), mode="r")
        block = members.chunks[0]
        for start in range(0, members.shape[0], block):
            part = np.asarray(members[start : start + block])
            per_cell += np.bincount(part.ravel(), minlength=n_cells)
            m, k = part.shape
            matrix = sp.csc_matrix(
                (np.ones(m * k, dtype=np.uint8), part.ravel(), np.arange(0, m * k + 1, k)),
                shape=(n_cells, m),
            )
            lo = offset + start
            mine = (nhood >= lo) & (nhood < lo + m)
            if mine.any():
                more = sp.csc_matrix(
                    (np.ones(int(mine.sum()), dtype=np.uint8), (cells[mine], nhood[mine] - lo)),
                    shape=matrix.shape,
                )
                matrix = (matrix + more).tocsc()
                matrix.sort_indices()
            if first:
                ad.io.write_elem(group["uns"], "membership", matrix)
                first = False
            else:
                ad.io.sparse_dataset(group["uns/membership"]).append(matrix)
        offset += members.shape[0]
    zarr.consolidate_metadata(str(path))
    return per_cell


def _nhood_store(path: Path, nhoods: pd.DataFrame, counts: np.ndarray, samples: pd.DataFrame,
                 members_paths: Sequence[Path], extra: tuple[np.ndarray, np.ndarray],
                 n_cells: int, k: int) -> np.ndarray:  # fmt: skip
    """nhoods.zarr: counts (X), neighbourhoods (obs, with their ``denominator`` and
    ``size``), samples (var, with each family's denominator ``n_cells_<lineage>``),
    membership and k (uns: the PBMC family's); returns `_write_membership`'s per-cell
    counts."""
    adata = ad.AnnData(
        X=counts.astype(np.int32, copy=False),
        obs=nhoods.set_index(nhoods["nhood"].astype(str).rename(None)),
        var=samples.set_index(samples["sample_id"].rename(None)),
    )
    adata.uns["k"] = int(k)
    adata.write_zarr(path)
    return _write_membership(path, members_paths, extra, n_cells)


def run_neighbourhoods(ctx: StageContext) -> str:
    """Sample the neighbourhoods, count them per sample, fit and test them, write
    ``WORKDIR/neighbourhoods/``; one summary line."""
    cfg, n = ctx.cfg, ctx.cfg.neighbourhoods
    clock, seconds = time.perf_counter(), {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    obs = ctx.read_obs(OBS_COLUMNS, batches=True)  # cohort.zarr's cells, then the batches'
    n_cohort = len(ctx.read_obs(["qc_pass"]))
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    rows = np.flatnonzero(keep[:n_cohort])  # the neighbourhoods are the cohort's
    added = n_cohort + np.flatnonzero(keep[n_cohort:])  # batch cells, counted into them
    samples = _samples(obs)
    try:
        design, not_estimable = estimable_design(samples, time=n.time)
    except AbundanceDesignError as err:
        raise ImmunoprofileError(f"neighbourhoods: {err}") from err
    names = contrast_names(sorted({float(t) for t in samples["timepoint_months"]}))
    fitted = [] if design is None else estimable_contrasts(design)
    adjustment = None
    if design is not None:  # the design's sample order
        samples = samples.set_index("sample_id").loc[design.samples["sample_id"]].reset_index()
        if n.batch_covariate:
            design, adjustment = with_covariate(design, samples["batch"], "batch")

    element = f"obsm/{cfg.graph.use_rep}"
    ctx.array(element)  # it exists (else: which stage to run)
    ctx.array("obsp/distances/indptr")  # the graph stage ran
    n_cohort_samples = obs["sample_id"].iloc[rows].nunique()
    k = neighbourhood_size(cfg, n_cohort_samples, rows.size)
    width = np.int32 if len(obs) < 2**31 else np.int64  # cohort rows, sample codes
    codes = np.where(keep, _codes(obs["sample_id"], samples["sample_id"].tolist(), width), -1)
    codes = codes.astype(width, copy=False)
    label_codes = {level: _codes(obs[level], vocabulary, np.int8)
                   for level, vocabulary in (("lineage", LINEAGES), ("b_subset", B_SUBSETS))}  # fmt: skip
    lap("read")
    families: list[Family] = []
    with ctx.stage_folder() as (out, manifest):
        members_path = out.root / "members.tmp.zarr"  # the workers' member lists
        found = _find(ctx, element, rows.astype(width), k, codes, len(samples), label_codes,
                      members_path)  # fmt: skip
        counts = found.counts  # int32
        lap("neighbourhoods")
        extra = (np.empty(0, np.int64), np.empty(0, np.int64))
        if added.size:  # add-batch's cells, in the neighbourhoods they would have been members of
            index_points = read_rows(str(ctx.workdir.cohort), element, found.index_rows)
            points = ctx.read_obsm(cfg.graph.use_rep, batches=True)[added]
            share = k * found.index_rows.size / max(rows.size, 1)  # neighbourhoods per cell
            inside, nhood = members_within(index_points, found.kth_distance, points,
                                           n_search=max(64, int(4 * share)))  # fmt: skip
            del index_points, points
            extra = (added[inside], nhood)
            np.add.at(counts, (nhood, codes[added[inside]]), 1)
        lap("counts")
        families.append(Family(
            denominator=PBMC, k=k, n_cells=int(rows.size), exact=found.exact,
            index_rows=found.index_rows, kth_distance=found.kth_distance, counts=counts,
            labels=found.labels, totals=samples["n_cells"].to_numpy(dtype=np.int64),
            members_path=members_path, extra=extra, notes={},
        ))  # fmt: skip
        del found, counts, extra
        warnings = [f"{c}: not estimable, {r}" for c, r in not_estimable.items()]
        for lineage in n.lineages:
            family = _lineage_family(ctx, lineage, obs, keep, n_cohort, codes, samples,
                                     label_codes, out.root / f"members_{lineage}.tmp.zarr")  # fmt: skip
            if isinstance(family, str):
                warnings.append(family)
            else:
                families.append(family)
        del label_codes
        release_memory()  # the lineages' Harmony and search
        lap("lineages")
        nhoods, all_counts, fits_parts, offset = [], [], [], 0
        for family in families:
            table = family.table(offset)
            fits = (_fit_all(ctx, family.counts, family.totals, design)
                    if design is not None and fitted else None)  # fmt: skip
            nhoods.append(table)
            all_counts.append(family.counts)
            fits_parts.append((family, table, fits))
            offset += len(table)
        ctx.cluster.run(release_memory)  # the fits' heap (the workers are done)
        lap("fits")
        called: dict[str, dict[str, int]] = {}
        baseline: dict[str, pd.DataFrame] = {}
        first = True
        for family, table, fits in fits_parts:
            mine = called.setdefault(family.denominator, {})
            for contrast, part in zip(names, _tests(fits, fitted, names, table), strict=True):
                part.to_csv(out.tests, index=False, mode="w" if first else "a", header=first)
                first = False
                if contrast in fitted:
                    mine[contrast] = int((part["spatial_fdr"] < n.alpha).sum())
                if contrast == "response@month0":
                    baseline[family.denominator] = part  # the report's beeswarms
            called[family.denominator] = {c: mine[c] for c in fitted}
        if adjustment is not None:
            warnings.append(adjustment)
        unconverged = {}
        fit_tables = []
        for family, table, fits in fits_parts:
            if fits is not None:
                bad = int((~fits.fits["converged"].astype(bool)).sum())
                fit_tables.append(fits.fits.assign(nhood=table["nhood"].to_numpy(),
                                                   denominator=family.denominator))  # fmt: skip
            else:  # nothing to fit: the design estimates no contrast
                bad = 0
                fit_tables.append(pd.DataFrame({
                    "sd_patient": np.nan, "sd_sample": np.nan, "converged": False,
                    "notes": "no contrast can be estimated", "nhood": table["nhood"].to_numpy(),
                    "denominator": family.denominator}))  # fmt: skip
            unconverged[family.denominator] = bad
            if bad:
                warnings.append(f"{family.denominator}: {bad} of {len(table)} neighbourhood models "
                                "did not converge and are not tested (NaN; fits.csv says which "
                                "and why)")  # fmt: skip
        pd.concat(fit_tables, ignore_index=True).to_csv(out.fits, index=False)
        del fits_parts, fit_tables
        var = samples.copy()
        for family in families[1:]:
            var[f"n_cells_{family.denominator}"] = family.totals
        extra_cells = np.concatenate([f.extra[0] for f in families])
        extra_nhoods = np.concatenate([f.extra[1] + t["nhood"].iloc[0] if len(t) else f.extra[1]
                                       for f, t in zip(families, nhoods, strict=True)])  # fmt: skip
        per_cell = _nhood_store(out.nhoods, pd.concat(nhoods, ignore_index=True),
                                np.vstack(all_counts), var, [f.members_path for f in families],
                                (extra_cells, extra_nhoods), len(obs), k)  # fmt: skip
        for family in families:
            shutil.rmtree(family.members_path)
        lap("write")
        plots = []
        for denominator, part in baseline.items():
            contrast = "response@month0"
            title = contrast if denominator == PBMC else f"{contrast}, within {denominator}"
            fig = beeswarm_plot(part, alpha=n.alpha, title=title)
            path = out.beeswarm_png(
                contrast if denominator == PBMC else f"{contrast}_{denominator}"
            )
            fig.savefig(path, dpi=110, format="png")
            plots.append(path.name)
            import matplotlib.pyplot as plt

            plt.close(fig)
        pbmc = families[0]
        summary = {
            "n_nhoods": len(nhoods[0]), "k": k, "prop": n.prop,
            "max_index_cells": n.max_index_cells, "n_samples": len(samples),
            "n_cells": int(rows.size), "n_batch_cells": int(added.size),
            "exact_neighbours": pbmc.exact,
            "median_nhoods_per_cell": float(np.median(per_cell[rows])),
            "alpha": n.alpha, "called": called[PBMC], "contrasts": names, "tested": fitted,
            "lineages": {
                f.denominator: {"n_nhoods": len(t), "k": f.k, "n_cells": f.n_cells,
                                "exact_neighbours": f.exact, "called": called[f.denominator],
                                "unconverged": unconverged[f.denominator], **f.notes}
                for f, t in zip(families[1:], nhoods[1:], strict=True)
            },
            "covariates": [] if design is None else list(design.covariates),
            "covariate_not_adjusted": adjustment,
            "not_estimable": not_estimable, "unconverged": unconverged[PBMC],
            "warnings": warnings, "plots": plots, "seconds": seconds,
        }  # fmt: skip
        out.summary.write_text(json.dumps(summary, indent=2, default=str))
        manifest.update(n_nhoods=int(sum(len(t) for t in nhoods)), k=k)
    for note in warnings:
        print(f"neighbourhoods: warning: {note}")
    lines = [
        f"neighbourhoods: {len(nhoods[0]):,} neighbourhoods of {k} cells over {len(samples)} "
        f"samples; outputs in {ctx.workdir.neighbourhoods.root}",
    ]
    for family, table in zip(families[1:], nhoods[1:], strict=True):
        lines.append(f"  {len(table):,} neighbourhoods of {family.k} {family.denominator} cells "
                     f"(out of each sample's {family.denominator} cells)")  # fmt: skip
    for denominator, numbers in called.items():
        base = numbers.get("response@month0")
        if base is not None:
            lines.append(f"  {base} neighbourhoods ({denominator}) differ at baseline at "
                         f"spatial FDR < {n.alpha}")  # fmt: skip
    return "\n".join(lines)

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
from ..graph import BLOCK_CELLS, load_shards, read_rows
from ..labels import B_SUBSETS, DESIGN_COLUMNS, LINEAGES
from ..workdir import Workdir
from ._kernels import Neighbourhoods, draw_cells, members_within, spatial_fdr
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

SHARD_CELLS = BLOCK_CELLS  # kept cells per block of the embedding on the workers

OBS_COLUMNS = (*DESIGN_COLUMNS, "qc_pass", "lineage", "b_subset")
TEST_COLUMNS = ("nhood", "index_cell", "lineage", "lineage_fraction", "b_subset",
                "b_subset_fraction", "contrast", "estimate", "ci_low", "ci_high", "pvalue",
                "spatial_fdr", "method")  # fmt: skip
CELLS_PER_SAMPLE = 5  # Milo's rule of thumb: neighbourhoods of ~5 cells per sample


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
    abundance/tests.csv."""
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


def _fit_all(ctx: StageContext, counts: np.ndarray, samples: pd.DataFrame, design) -> ChunkFits:
    client, chunk = ctx.cluster, ctx.cfg.neighbourhoods.chunk
    totals = samples["n_cells"].to_numpy(dtype=float)
    held = client.scatter(design, broadcast=True)  # held until the fits are done
    futures = [
        client.submit(fit_neighbourhoods, counts[s : s + chunk], totals, held, pure=False)
        for s in range(0, counts.shape[0], chunk)
    ]
    parts = client.gather(futures)
    del futures, held
    stacked = {key: np.vstack([getattr(p, key) for p in parts])
               for key in ("estimate", "ci_low", "ci_high", "pvalue")}  # fmt: skip
    return ChunkFits(**stacked, fits=pd.concat([p.fits for p in parts], ignore_index=True))


REFINE_CELLS = 10_000  # sampled cells refined per task


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
    positions = np.searchsorted(rows, index_rows)
    shards = load_shards(client, store, element, rows, exact_knn_below=g.exact_knn_below,
                         seed=g.seed, block_cells=SHARD_CELLS)  # fmt: skip
    exact = shards.exact
    block = max(1, BLOCK_ENTRIES // k)
    zarr.create_array(str(members_path), shape=(index_rows.size, k), chunks=(block, k),
                      dtype="int32")  # fmt: skip
    held = client.scatter(
        {"rows": rows, "samples": sample_codes, **label_codes}, broadcast=True
    )  # held until the tasks that use them are done
    vocabularies = {"lineage": len(LINEAGES), "b_subset": len(B_SUBSETS)}
    labels = {level: (held[level], size) for level, size in vocabularies.items()}
    starts = range(0, index_rows.size, block)
    queries = [client.submit(read_rows, store, element, index_rows[s : s + block]) for s in starts]
    found = shards.search(client, queries, k)
    del shards, queries
    futures = [
        client.submit(nhood_block, f, s, positions[s : s + block], held["rows"], held["samples"],
                      n_samples, labels, str(members_path), pure=False)
        for f, s in zip(found, starts, strict=True)
    ]  # fmt: skip
    del found
    blocks = client.gather(futures)
    del futures, held, labels
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


def _write_membership(path: Path, members_path: Path, extra: tuple[np.ndarray, np.ndarray],
                      n_cells: int) -> np.ndarray:  # fmt: skip
    """Write the membership (cells x neighbourhoods, CSC, 0/1: the member lists of
    ``members_path`` and the ``extra`` (cell, neighbourhood) pairs of batch cells, whose
    rows come after all members') into the AnnData-Zarr store at ``path`` as
    ``uns/membership``, a block of neighbourhoods at a time; returns each cell's number of
    neighbourhoods among the member lists."""
    members = zarr.open_array(str(members_path), mode="r")
    block = members.chunks[0]
    per_cell = np.zeros(n_cells, dtype=np.int64)
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    cells, nhood = extra
    for start in range(0, members.shape[0], block):
        part = np.asarray(members[start : start + block])
        per_cell += np.bincount(part.ravel(), minlength=n_cells)
        m, k = part.shape
        matrix = sp.csc_matrix(
            (np.ones(m * k, dtype=np.uint8), part.ravel(), np.arange(0, m * k + 1, k)),
            shape=(n_cells, m),
        )
        mine = (nhood >= start) & (nhood < start + m)
        if mine.any():
            more = sp.csc_matrix(
                (np.ones(int(mine.sum()), dtype=np.uint8), (cells[mine], nhood[mine] - start)),
                shape=matrix.shape,
            )
            matrix = (matrix + more).tocsc()
            matrix.sort_indices()
        if start == 0:
            ad.io.write_elem(group["uns"], "membership", matrix)
        else:
            ad.io.sparse_dataset(group["uns/membership"]).append(matrix)
    zarr.consolidate_metadata(str(path))
    return per_cell


def _nhood_store(path: Path, nhoods: pd.DataFrame, counts: np.ndarray, samples: pd.DataFrame,
                 members_path: Path, extra: tuple[np.ndarray, np.ndarray], n_cells: int,
                 k: int) -> np.ndarray:  # fmt: skip
    """nhoods.zarr: counts (X), neighbourhoods (obs), samples (var), membership and k
    (uns); returns `_write_membership`'s per-cell counts."""
    adata = ad.AnnData(
        X=counts.astype(np.int32, copy=False),
        obs=nhoods.set_index(nhoods["nhood"].astype(str).rename(None)),
        var=samples.set_index(samples["sample_id"].rename(None)),
    )
    adata.uns["k"] = int(k)
    adata.write_zarr(path)
    return _write_membership(path, members_path, extra, n_cells)


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
    with ctx.stage_folder() as (out, manifest):
        members_path = out.root / "members.tmp.zarr"  # the workers' member lists
        found = _find(ctx, element, rows.astype(width), k, codes, len(samples), label_codes,
                      members_path)  # fmt: skip
        del label_codes
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
        kth = found.kth_distance
        nhoods = pd.DataFrame({
            "nhood": np.arange(found.index_rows.size), "index_cell": found.index_rows,
            "size": k, "kth_distance": kth.astype(float),
            "weight": Neighbourhoods(found.index_rows, found.index_rows[:0], kth, found.exact).weights,
        })  # fmt: skip
        nhoods = pd.concat([nhoods, found.labels], axis=1)
        fits = _fit_all(ctx, counts, samples, design) if design is not None and fitted else None
        lap("fits")
        called, baseline = {}, None
        parts = zip(names, _tests(fits, fitted, names, nhoods), strict=True)
        for i, (contrast, part) in enumerate(parts):  # a contrast at a time
            part.to_csv(out.tests, index=False, mode="w" if i == 0 else "a", header=i == 0)
            if contrast in fitted:
                called[contrast] = int((part["spatial_fdr"] < n.alpha).sum())
            if contrast == "response@month0":
                baseline = part  # the report's beeswarm
        called = {c: called[c] for c in fitted}
        unconverged = 0 if fits is None else int((~fits.fits["converged"].astype(bool)).sum())
        warnings = [f"{c}: not estimable, {r}" for c, r in not_estimable.items()]
        if adjustment is not None:
            warnings.append(adjustment)
        if unconverged:
            warnings.append(f"{unconverged} of {len(nhoods)} neighbourhood models did not "
                            "converge and are not tested (NaN; fits.csv says which and why)")  # fmt: skip
        if fits is not None:
            fits.fits.assign(nhood=nhoods["nhood"]).to_csv(out.fits, index=False)
        else:  # nothing to fit: the design estimates no contrast
            pd.DataFrame({"nhood": nhoods["nhood"], "sd_patient": np.nan, "sd_sample": np.nan,
                          "converged": False, "notes": "no contrast can be estimated"}).to_csv(
                out.fits, index=False)  # fmt: skip
        per_cell = _nhood_store(out.nhoods, nhoods, counts, samples, members_path, extra,
                                len(obs), k)  # fmt: skip
        shutil.rmtree(members_path)
        lap("write")
        plots = []
        if baseline is not None:
            contrast = "response@month0"
            fig = beeswarm_plot(baseline, alpha=n.alpha, title=contrast)
            fig.savefig(out.beeswarm_png(contrast), dpi=110, format="png")
            plots.append(out.beeswarm_png(contrast).name)
            import matplotlib.pyplot as plt

            plt.close(fig)
        summary = {
            "n_nhoods": len(nhoods), "k": k, "prop": n.prop,
            "max_index_cells": n.max_index_cells, "n_samples": len(samples),
            "n_cells": int(rows.size), "n_batch_cells": int(added.size),
            "exact_neighbours": found.exact,
            "median_nhoods_per_cell": float(np.median(per_cell[rows])),
            "alpha": n.alpha, "called": called, "contrasts": names, "tested": fitted,
            "covariates": [] if design is None else list(design.covariates),
            "covariate_not_adjusted": adjustment,
            "not_estimable": not_estimable, "unconverged": unconverged,
            "warnings": warnings, "plots": plots, "seconds": seconds,
        }  # fmt: skip
        out.summary.write_text(json.dumps(summary, indent=2, default=str))
        manifest.update(n_nhoods=len(nhoods), k=k)
    for note in warnings:
        print(f"neighbourhoods: warning: {note}")
    base = called.get("response@month0")
    lines = [
        f"neighbourhoods: {len(nhoods):,} neighbourhoods of {k} cells over {len(samples)} "
        f"samples; outputs in {ctx.workdir.neighbourhoods.root}",
    ]
    if base is not None:
        lines.append(f"  {base} neighbourhoods differ at baseline at spatial FDR < {n.alpha}")
    return "\n".join(lines)

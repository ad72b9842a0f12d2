"""The qc stage: one task per sample reads its counts once and computes everything.

Per sample, in one read: the QC metrics of every cell, the sample's adaptive thresholds
(they depend on that sample alone), scrublet on the cells that pass them, and the per-gene
sum and sum of squares of the raw counts over the finally kept cells (the first pass of
seurat_v3's highly variable genes, so that preprocess need not read the cohort for it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp
from distributed import Client, Future
from pandas.api.types import union_categoricals

from ..cohort import read_sample_counts
from ..config import QCConfig
from ..moments import clipped_moments
from ..store import CHUNK_BYTES, LazyCategorical, LazyColumn
from ._doublets import scrublet_scores
from ._kernels import METRICS, gene_sets, qc_metrics
from ._thresholds import qc_flags, qc_summary, reasons

MIN_CELLS_FOR_DOUBLETS = 50  # fewer kept cells: too few to simulate doublets from
TABLE_CHUNK_BYTES = CHUNK_BYTES  # the per-cell columns are cut from chunks of this size


@dataclass(frozen=True)
class SampleQC:
    metrics: pd.DataFrame  # one row per cell of the sample, METRICS columns + log1p ones
    flags: pd.DataFrame  # one bool column per reason, "doublet" last
    doublet_score: np.ndarray
    doublet_threshold: float
    moments: np.ndarray  # (3, n_genes): kept cells at [0, 0], per-gene sum, sum of squares


@dataclass(frozen=True)
class QCResult:
    obs: pd.DataFrame  # every cell: metrics, flags, reason, doublet score and call, qc_pass
    summary: pd.DataFrame  # one row per sample
    moments: dict[str, np.ndarray]  # sample id -> (3, n_genes) raw-count moments of kept cells
    seconds: float


def gene_moments(x: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """(3, n_genes): number of selected rows at [0, 0], per-gene sum and sum of squares."""
    moments = clipped_moments(x, np.zeros(x.shape[0], dtype=np.int64), rows)
    return moments.get(0, np.zeros((3, x.shape[1])))


def qc_sample(
    counts: sp.csr_matrix, *, gene_set: np.ndarray, params: QCConfig, seed: int
) -> SampleQC:
    """Metrics, flags, doublets and kept-cell gene moments of one sample (pure); the
    rules are ``params``' (``seed`` is the sample's own)."""
    values = qc_metrics(counts, gene_set)
    metrics = pd.DataFrame(values, columns=list(METRICS))
    metrics["total_counts"] = metrics["total_counts"].round().astype(np.int64)
    metrics["n_genes_by_counts"] = metrics["n_genes_by_counts"].astype(np.int64)
    metrics["log1p_total_counts"] = np.log1p(metrics["total_counts"])
    metrics["log1p_n_genes_by_counts"] = np.log1p(metrics["n_genes_by_counts"])
    flags = qc_flags(metrics, pd.Series(np.zeros(len(metrics), dtype=np.int8)), params)
    passing = ~flags.any(axis=1).to_numpy()
    score = np.full(len(metrics), np.nan)
    called = np.zeros(len(metrics), dtype=bool)
    threshold = float("nan")
    if params.doublets and passing.sum() >= MIN_CELLS_FOR_DOUBLETS:
        found = scrublet_scores(
            counts,
            np.flatnonzero(passing),
            expected_rate=params.expected_doublet_rate,
            mean_center=params.doublet_mean_center,
            sim_scored_fraction=params.doublet_sim_scored_fraction,
            sim_ratio=params.doublet_sim_ratio,
            seed=seed,
        )
        score[passing] = found.score
        called[passing] = found.called
        threshold = found.threshold
    flags["doublet"] = called
    keep = passing & ~called
    return SampleQC(
        metrics=metrics,
        flags=flags,
        doublet_score=score,
        doublet_threshold=threshold,
        moments=gene_moments(counts, keep),
    )


def sample_qc_frame(part: SampleQC) -> pd.DataFrame:
    """One sample's per-cell QC columns in the stage's order: metrics, a flag per reason,
    doublet score and call, ``qc_reason`` (categorical, the sample's own combinations,
    sorted) and ``qc_pass``."""
    out = part.metrics.copy()
    for col in part.flags.columns:
        out[f"qc_flag_{col}"] = part.flags[col].to_numpy()
    out["doublet_score"] = part.doublet_score
    out["predicted_doublet"] = part.flags["doublet"].to_numpy()
    out["qc_reason"] = reasons(part.flags).array
    out["qc_pass"] = ~part.flags.any(axis=1).to_numpy()
    return out


@dataclass(frozen=True)
class SampleFacts:
    """What the driver needs of one sample's QC (no per-cell values)."""

    n_cells: int
    summary: pd.DataFrame  # one row (`qc_summary`), with the doublet threshold
    moments: np.ndarray
    reasons: list[str]  # the sample's combinations of flags
    dtypes: dict[str, np.dtype]  # the per-cell columns' (qc_reason: its codes')


@dataclass(frozen=True)
class SampleResult:
    frame: pd.DataFrame  # `sample_qc_frame`
    facts: SampleFacts


def _qc_sample_task(
    store: Path,
    sample_id: str,
    genes: pd.Index | None,
    gene_set: np.ndarray,
    params: QCConfig,
    seed: int,
) -> SampleResult:
    part = qc_sample(read_sample_counts(store, genes), gene_set=gene_set, params=params, seed=seed)
    frame = sample_qc_frame(part)
    summary = qc_summary(frame.assign(sample_id=sample_id))
    summary["sample_id"] = summary["sample_id"].astype(str).astype(object)
    summary["doublet_threshold"] = part.doublet_threshold
    dtypes = {c: frame[c].dtype for c in frame.columns if c != "qc_reason"}
    facts = SampleFacts(
        n_cells=len(frame),
        summary=summary,
        moments=part.moments,
        reasons=[str(r) for r in frame["qc_reason"].cat.categories],
        dtypes=dtypes,
    )
    return SampleResult(frame, facts)


def _facts(result: SampleResult) -> SampleFacts:
    return result.facts


def _records(result: SampleResult, categories: pd.Index, dtype: np.dtype) -> np.ndarray:
    """The sample's per-cell columns as one structured array (``qc_reason`` as codes of
    the cohort's ``categories``)."""
    out = np.empty(result.facts.n_cells, dtype=dtype)
    for name in dtype.names or ():
        if name == "qc_reason":
            out[name] = pd.Categorical(result.frame[name], categories=categories).codes
        else:
            out[name] = result.frame[name].to_numpy()
    return out


def _submit(
    client: Client,
    stores: dict[str, Path],
    order: list[str],
    var: pd.DataFrame,
    params: QCConfig,
    seed_offset: int,
    uniform_genes: bool,
) -> list[Future]:
    """One task per sample (sample ``i`` of ``order`` seeded ``params.seed + seed_offset +
    i``); its result stays on the worker."""
    gene_set = gene_sets(var["gene_symbols"].to_numpy())
    genes = (
        None if uniform_genes else client.scatter(pd.Index(var.index), broadcast=True, hash=False)
    )
    return [
        client.submit(
            _qc_sample_task,
            stores[sid],
            sid,
            genes,
            gene_set,
            params,
            params.seed + seed_offset + i,
            pure=False,
        )
        for i, sid in enumerate(order)
    ]


def _summary(facts: list[SampleFacts]) -> pd.DataFrame:
    summary = pd.concat([f.summary for f in facts], ignore_index=True)
    return summary.sort_values("sample_id", kind="stable", ignore_index=True)


def compute_qc(
    obs: pd.DataFrame,
    var: pd.DataFrame,
    *,
    client: Client,
    stores: dict[str, Path],
    params: QCConfig,
    seed_offset: int = 0,
    uniform_genes: bool = False,
) -> QCResult:
    """QC metrics of every cell, outlier flags per sample, and scrublet doublet calls,
    under the qc section's rules ``params``, gathered into one frame (the qc stage itself
    leaves them on the workers: `qc_columns`).

    ``obs`` and ``var`` are the cohort's (cells grouped by ``sample_id``; genes with a
    ``gene_symbols`` column); ``stores`` maps sample id to its store. One task per sample,
    sample ``i`` (in order of first appearance) seeded with ``params.seed + seed_offset +
    i`` (add-batch continues after the cohort's samples). ``uniform_genes``:
    every store holds exactly ``var``'s genes in order (as `open_cohort` records in
    ``uns``), so the tasks need not read and align each store's genes. ``qc_pass`` is
    False for flagged cells and for predicted doublets.
    """
    start = time.perf_counter()
    sample = obs["sample_id"].astype("category")  # codes: no per-cell strings
    codes = sample.cat.codes.to_numpy()
    names = sample.cat.categories.astype(str)
    firsts = np.unique(codes, return_index=True)[1]  # each sample's first cell
    order = [str(names[codes[i]]) for i in np.sort(firsts)]  # in order of first appearance
    by_code = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[by_code], np.arange(len(names) + 1))
    positions = {str(names[c]): by_code[bounds[c] : bounds[c + 1]] for c in range(len(names))}
    futures = _submit(client, stores, order, var, params, seed_offset, uniform_genes)
    parts: list[SampleResult] = client.gather(futures)
    index = np.concatenate([positions[sid] for sid in order])
    for sid, part in zip(order, parts, strict=True):
        if part.facts.n_cells != len(positions[sid]):
            msg = f"sample {sid}: {part.facts.n_cells} cells in its store, {len(positions[sid])} in obs"
            raise ValueError(msg)
    frames = [p.frame for p in parts]
    reason = union_categoricals([f["qc_reason"] for f in frames], sort_categories=True)
    out = pd.concat([f.drop(columns="qc_reason") for f in frames], ignore_index=True)
    out.insert(list(frames[0].columns).index("qc_reason"), "qc_reason", reason)
    inverse = np.empty_like(index)
    inverse[index] = np.arange(index.size)  # obs row i is row inverse[i] of out
    out = out.iloc[inverse].set_axis(obs.index)
    facts = [p.facts for p in parts]
    moments = {sid: f.moments for sid, f in zip(order, facts, strict=True)}
    return QCResult(
        obs=out, summary=_summary(facts), moments=moments, seconds=time.perf_counter() - start
    )


@dataclass(frozen=True)
class LazyQC:
    columns: dict[str, LazyColumn]  # per-cell columns, lazy (their tasks read the results)
    summary: pd.DataFrame
    moments: dict[str, np.ndarray]
    futures: list[Future]  # the per-sample results, held on the workers until written


def qc_columns(
    samples: list[str],
    var: pd.DataFrame,
    *,
    client: Client,
    stores: dict[str, Path],
    params: QCConfig,
    uniform_genes: bool = False,
) -> LazyQC:
    """`compute_qc` for the cohort's ``samples`` (its cells in that order) without
    gathering any per-cell value: each sample's results stay on the worker that computed
    them and the columns are Dask arrays reading them (to be written by the workers,
    `pipeline.store.write_lazy_anndata_store`); the driver gets each sample's summary
    row, moments and flag combinations."""
    futures = _submit(client, stores, samples, var, params, 0, uniform_genes)
    facts: list[SampleFacts] = client.gather([client.submit(_facts, f) for f in futures])
    categories = pd.Index(sorted({r for f in facts for r in f.reasons}), dtype=object)
    code_dtype = pd.Categorical([], categories=categories).codes.dtype
    dtypes = facts[0].dtypes
    # one task per sample packs its columns; the cohort's table is then cut into chunks
    # of ~TABLE_CHUNK_BYTES and each column read from those (a few tasks per column, not one
    # per sample and column: 4M cells are 528 samples x 31 columns)
    record = np.dtype([*dtypes.items(), ("qc_reason", code_dtype)])
    table = da.concatenate(
        [
            da.from_delayed(
                dask.delayed(_records)(fut, categories, record), shape=(f.n_cells,), dtype=record
            )
            for fut, f in zip(futures, facts, strict=True)
        ]
    ).rechunk(max(1, TABLE_CHUNK_BYTES // record.itemsize))
    columns: dict[str, LazyColumn] = {name: table[name] for name in dtypes}
    columns["qc_reason"] = LazyCategorical(table["qc_reason"], categories)
    order = [*[c for c in dtypes if c not in ("qc_pass",)], "qc_reason", "qc_pass"]
    columns = {c: columns[c] for c in order}
    moments = {sid: f.moments for sid, f in zip(samples, facts, strict=True)}
    return LazyQC(columns=columns, summary=_summary(facts), moments=moments, futures=futures)

"""Benchmark: scrublet's neighbour search, exact (faiss's flat index, what the qc stage
runs) against approximate indexes (faiss IVF-Flat and HNSW; scrublet's own default is an
approximate search, annoy), on a simulated cohort's samples: the search's and scrublet's
seconds per sample on one thread, the calls and scores against the exact search's, and
detection of the simulator's planted doublets (as `doublet_settings.py`).

Each variant replaces `pipeline.qc._doublets.nearest_sim_counts` for its turn; the rest
of `scrublet_scores` (the qc settings' defaults) is the stage's own.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/doublet_search.py \\
        /work/cmp/scaling/1M/data --samples 6 --json benchmarks/results/doublet_search.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import scipy.sparse as sp
from doublet_settings import detection

import pipeline.qc._doublets as doublets
from pipeline.config import QCConfig
from pipeline.ingest import read_counts

Search = Callable[..., np.ndarray]


def _stacked(obs: np.ndarray, sim: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.vstack([obs, sim]), dtype=np.float32)


def _counts(index, points, obs, k, queries) -> np.ndarray:  # type: ignore[no-untyped-def]
    asked = points if queries is None else np.ascontiguousarray(points[queries])
    _, neighbours = index.search(asked, k)
    return (neighbours >= obs.shape[0]).sum(axis=1)


def ivf(probes: int) -> Search:
    """IVF-Flat, sqrt(points) lists trained on 64 points a list, ``probes`` probed."""

    def search(obs, sim, k, queries=None):  # type: ignore[no-untyped-def]
        points = _stacked(obs, sim)
        lists = max(1, int(np.sqrt(points.shape[0])))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(points.shape[1]), points.shape[1], lists)
        rng = np.random.default_rng(0)
        index.cp.seed = 0
        index.train(points[rng.choice(len(points), min(len(points), 64 * lists), replace=False)])
        index.add(points)
        index.nprobe = probes
        return _counts(index, points, obs, k, queries)

    return search


def hnsw(links: int) -> Search:
    """HNSW, ``links`` links a point, efConstruction 40, efSearch k."""

    def search(obs, sim, k, queries=None):  # type: ignore[no-untyped-def]
        points = _stacked(obs, sim)
        index = faiss.IndexHNSWFlat(points.shape[1], links)
        index.hnsw.efConstruction = 40
        index.add(points)
        index.hnsw.efSearch = k
        return _counts(index, points, obs, k, queries)

    return search


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a simulated cohort's folder")
    parser.add_argument("--samples", type=int, default=6, help="every 11th sample, this many")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)
    exact = doublets.nearest_sim_counts
    variants: dict[str, Search] = {"exact": exact, "ivf_probe4": ivf(4), "ivf_probe8": ivf(8),
                                   "ivf_probe16": ivf(16), "hnsw_16": hnsw(16)}  # fmt: skip
    qc = QCConfig()
    settings = {"expected_rate": qc.expected_doublet_rate, "mean_center": qc.doublet_mean_center,
                "sim_scored_fraction": qc.doublet_sim_scored_fraction,
                "sim_ratio": qc.doublet_sim_ratio}  # fmt: skip
    sheet = pd.read_csv(args.data / "samplesheet.csv").iloc[::11].head(args.samples)
    rows = []
    for i, sample in enumerate(sheet.itertuples()):
        adata = read_counts(args.data / sample.path)
        counts = sp.csr_matrix(adata.X)
        truth = pd.read_csv(args.data / "truth" / "cells" / f"{sample.sample_id}.csv.gz")
        truth = truth.set_index("barcode").loc[adata.obs_names]
        if i == 0:  # compile the numba kernels outside the timings
            doublets.scrublet_scores(counts[:800], seed=0, **settings)
        base = None
        for name, search in variants.items():
            spent: list[float] = []

            def timed(*a, search=search, spent=spent, **kw):  # type: ignore[no-untyped-def]
                t = time.perf_counter()
                out = search(*a, **kw)
                spent.append(time.perf_counter() - t)
                return out

            doublets.nearest_sim_counts = timed
            t = time.perf_counter()
            result = doublets.scrublet_scores(counts, seed=i, **settings)
            seconds = time.perf_counter() - t
            doublets.nearest_sim_counts = exact
            base = base or result
            scored = np.isfinite(base.score)
            row = {"sample_id": sample.sample_id, "cells": counts.shape[0], "variant": name,
                   "seconds": round(seconds, 3), "search_s": round(spent[0], 3),
                   "same_calls": float((result.called == base.called).mean()),
                   "score_r": float(np.corrcoef(result.score[scored], base.score[scored])[0, 1]),
                   **detection(result.score, result.called, truth)}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    table = pd.DataFrame(rows)
    cols = ["seconds", "search_s", "same_calls", "score_r", "auc", "recall", "precision"]
    median = table.groupby("variant", sort=False)[cols].median()
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": str(args.data),
        "samples": len(sheet),
        "median": median.to_dict(orient="index"),
        "per_sample": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with args.json.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(median.round(4).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

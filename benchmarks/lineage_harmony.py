"""A lineage's Harmony in the neighbourhoods stage's driver (`lineage_embedding`) at a
pooled cohort's shape: wall time, the process's peak resident memory and the cells fitted.

The B lineage of the 4M benchmark cohort has ~350k QC-passed cells over 176 patients;
above `lineage_harmony_max_cells` (30,000) Harmony is fitted on a subsample stratified by
patient (`pipeline.integrate._harmony.fit_rows`). ``--max-cells none`` fits every cell,
which is what the subsample's top-up did before session 25 once each patient's share of
it fell under 500 cells (more than 60 patients). Synthetic PCs: 8 subset centres, a shift
per patient, noise; run each setting in a process of its own.

    python benchmarks/lineage_harmony.py --cells 350000 --patients 176 --max-cells 30000
    python benchmarks/lineage_harmony.py --cells 350000 --patients 176 --max-cells none
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def synthetic_pcs(cells: int, patients: int, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(8, dims))
    shifts = rng.normal(scale=1.0, size=(patients, dims))
    patient = rng.integers(patients, size=cells)
    subset = rng.integers(8, size=cells)
    pcs = np.empty((cells, dims), dtype=np.float32)  # float32 as stored, built in chunks
    for s in range(0, cells, 20_000):
        rows = slice(s, s + 20_000)
        pcs[rows] = centres[subset[rows]] + shifts[patient[rows]]
        pcs[rows] += rng.normal(size=pcs[rows].shape)
    return pcs, np.char.add("P", patient.astype(str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=350_000)
    parser.add_argument("--patients", type=int, default=176)
    parser.add_argument("--dims", type=int, default=50)
    parser.add_argument("--max-cells", default="30000", help="an integer, or none")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from pipeline.neighbourhoods._lineage import lineage_embedding

    pcs, patient = synthetic_pcs(args.cells, args.patients, args.dims, args.seed)
    max_cells = None if args.max_cells.lower() == "none" else int(args.max_cells)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    result = lineage_embedding(pcs, patient, max_cells=max_cells, theta=2.0, max_iter=10,
                               seed=args.seed)  # fmt: skip
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(json.dumps({
        "cells": args.cells, "patients": args.patients, "max_cells": max_cells,
        "n_fitted": result.n_fitted, "wall_s": round(wall, 1),
        "peak_rss_gib": round(peak, 3), "peak_before_gib": round(before, 3),
        "pcs_gib": round(pcs.nbytes / 2**30, 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()

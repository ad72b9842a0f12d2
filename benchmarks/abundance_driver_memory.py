"""Benchmark: the abundance stage's per-cell work in the driver at a cohort's size, on a
simulated obs frame as `read_obs` returns it (categorical text columns): the peak of
allocated memory (tracemalloc, which numpy and pandas report to) above the inputs, and
the seconds, of `abundance_counts` (the hard-label table) and of `draw_counts` (the label
draws from stored float32 probabilities, as the stage reads them, through
`label_probabilities`; code before it had none: `probability_matrix`). Run it against
another checkout with ``PYTHONPATH=CHECKOUT``.

    python benchmarks/abundance_driver_memory.py --cells 1000000,4000000 --draws 10
"""

from __future__ import annotations

import argparse
import gc
import json
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from pipeline.abundance import _draws, abundance_counts
from pipeline.abundance._draws import draw_counts
from pipeline.labels import B_SUBSETS, LINEAGES

CELLS_PER_SAMPLE = 7500  # the study's design: 3 timepoints per patient


def simulated_obs(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n_samples = max(1, round(n / CELLS_PER_SAMPLE))
    sample = np.sort(rng.integers(0, n_samples, size=n))
    names = np.array([f"P{i // 3:03d}_M{3 * (i % 3)}" for i in range(n_samples)], dtype=object)
    lineage = rng.choice(np.array(LINEAGES, dtype=object), size=n)
    subset = np.where(lineage == "B", rng.choice(np.array(B_SUBSETS, dtype=object), size=n), None)
    return pd.DataFrame({
        "sample_id": pd.Categorical.from_codes(sample, names),
        "patient_id": pd.Categorical(np.array([s[:4] for s in names], dtype=object)[sample]),
        "timepoint_months": (sample % 3) * 3,
        "response": pd.Categorical(np.where(sample // 3 % 2 == 0, "responder", "non_responder")),
        "batch": pd.Categorical(np.array(["b1", "b2", "b3", "b4"], dtype=object)[sample % 4]),
        "qc_pass": rng.random(n) > 0.12,
        "lineage": pd.Categorical(lineage),
        "b_subset": pd.Categorical(subset),
    })  # fmt: skip


def traced(fn: Callable[[], Any]) -> tuple[float, float]:
    gc.collect()
    tracemalloc.start()
    t = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seconds, peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="1000000,4000000")
    parser.add_argument("--draws", type=int, default=10)
    args = parser.parse_args()
    for n in (int(c) for c in args.cells.split(",")):
        obs = simulated_obs(n)
        counts_s, counts_gib = traced(lambda obs=obs: abundance_counts(obs))

        rng = np.random.default_rng(1)
        stored = {
            level: rng.dirichlet(np.ones(len(labels) + 1), size=n).astype(np.float32)
            for level, labels in (("lineage", LINEAGES), ("b_subset", B_SUBSETS))
        }
        stored["b_subset"][obs["lineage"].to_numpy() != "B"] = np.nan

        def draws(obs: pd.DataFrame = obs, stored: dict = stored) -> None:
            # the stage's way of holding them; older code: the float64 matrices
            make = getattr(_draws, "label_probabilities", _draws.probability_matrix)
            lin = make(obs["lineage"], stored["lineage"], "lineage")
            sub = make(obs["b_subset"], stored["b_subset"], "b_subset")
            for _ in draw_counts(obs, lin, sub, n_draws=args.draws, seed=0):
                pass

        draws_s, draws_gib = traced(draws)
        print(json.dumps({
            "cells": n, "samples": int(obs["sample_id"].nunique()), "draws": args.draws,
            "abundance_counts": {"seconds": round(counts_s, 2), "peak_gib": round(counts_gib, 3)},
            "draw_counts": {"seconds": round(draws_s, 2), "peak_gib": round(draws_gib, 3)},
        }))  # fmt: skip


if __name__ == "__main__":
    main()

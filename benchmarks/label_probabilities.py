"""Benchmark: `sample_label_probabilities` (annotate's per-sample label probabilities, run
in the driver) at the cohort's size: its own peak of allocated memory (tracemalloc, which
numpy reports to) above the inputs, and its seconds, on simulated posteriors.

    python benchmarks/label_probabilities.py --cells 1000000,4000000 --samples-per-million 132
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc

import numpy as np

from pipeline.annotate._model import sample_label_probabilities

PROGRAMS = 10  # the lineage level's programs in markers.yaml


def inputs(n: int, n_samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sample = np.array([f"S{i:04d}" for i in range(n_samples)], dtype=object)[
        np.sort(rng.integers(0, n_samples, size=n))
    ]
    truth = rng.integers(0, PROGRAMS, size=n)
    likelihood = rng.gamma(1.0, size=(n, PROGRAMS)).astype(np.float32)
    likelihood[np.arange(n), truth] += 3.0
    prob = likelihood / likelihood.sum(axis=1, keepdims=True)
    log_prior = np.log(np.full(PROGRAMS, 1.0 / PROGRAMS))
    return prob, log_prior, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="1000000,4000000")
    parser.add_argument("--samples-per-million", type=int, default=132)
    args = parser.parse_args()
    labels = tuple(f"p{j}" for j in range(PROGRAMS))
    for n in (int(c) for c in args.cells.split(",")):
        n_samples = max(1, round(n / 1e6 * args.samples_per_million))
        prob, log_prior, sample = inputs(n, n_samples)
        tracemalloc.start()
        t = time.perf_counter()
        out = sample_label_probabilities(
            prob, log_prior, sample, program_labels=labels, vocabulary=labels,
            supported=np.ones(PROGRAMS, dtype=bool),
        )  # fmt: skip
        seconds = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        print(json.dumps({
            "cells": n, "samples": n_samples, "programs": PROGRAMS,
            "seconds": round(seconds, 2), "peak_gib": round(peak / 2**30, 3),
            "output_gib": round(out.nbytes / 2**30, 3),
        }))  # fmt: skip


if __name__ == "__main__":
    main()

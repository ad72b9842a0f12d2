"""Benchmark: one PyDESeq2 fit of the expression stage (`fit_deseq2`, the batched solvers)
at a pooled cohort's size, the memory a worker needs for it: the peak of allocated memory
above the inputs (tracemalloc, which numpy reports to) and the growth of the process's
peak resident size, with its seconds, on `simulate_pseudobulk`'s counts of one cell type.

    python benchmarks/expression_fit_memory.py --patients 176 --genes 14000 \\
        --fit patients_blocked --json benchmarks/results/expression_fit_memory.jsonl

One fit per process (the resident peak is the process's): run it once per fit and code
version (``PYTHONPATH=<a worktree of another commit>`` measures that commit's code).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import time
import tracemalloc
import warnings
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import SimulationConfig
from pipeline.expression import cell_type_designs, fit_deseq2
from pipeline.simulate import simulate_pseudobulk

GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=176)
    parser.add_argument("--genes", type=int, default=14000)
    parser.add_argument("--fit", choices=("patients_blocked", "across_patients"),
                        default="patients_blocked")  # fmt: skip
    parser.add_argument("--json", type=Path, help="append the result as one JSON line")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cfg = SimulationConfig(seed=2026, n_patients=args.patients, n_genes=args.genes, n_batches=4)
    samples, counts = simulate_pseudobulk(cfg, cells=200)
    index = samples.set_index("sample_id").index
    genes = [f"g{i}" for i in range(args.genes)]
    fit = {f.name: f for f in cell_type_designs(samples).fits}[args.fit]
    y = counts[index.get_indexer(fit.x.index)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    start = time.perf_counter()
    fit_deseq2(y, genes, fit)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__import__("pipeline").__file__).parent)  # fmt: skip
    record = {
        "label": "expression-fit-memory",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit.stdout.strip(),
        "fit": args.fit,
        "samples": int(fit.x.shape[0]),
        "columns": int(fit.x.shape[1]),
        "genes": args.genes,
        "seconds": round(seconds, 1),
        "traced_peak_gib": round(peak / GIB, 3),
        "resident_peak_growth_gib": round((after - before) / GIB, 3),
    }
    print(json.dumps(record))
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

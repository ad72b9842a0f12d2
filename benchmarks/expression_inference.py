"""Benchmark: PyDESeq2's per-gene solvers against the batched ones (`BatchedInference`)
on a study-sized pseudobulk of one cell type.

`simulate_pseudobulk` (the cell simulator's cohort design: 44 patients x months 0, 3, 6
in 4 processing batches, 132 samples; patient-to-patient expression variation), both of
the stage's fits (across patients: `response * timepoint` + batch; patients blocked: one
column per patient + group x month + batch). Reports each repeat's wall time per solver
and fit in one process, their medians and ratio, and how far the two solvers' answers are
apart.

    python benchmarks/expression_inference.py --genes 2000 --repeats 3 \
        --json benchmarks/results/expression_inference.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from pipeline.config import SimulationConfig
from pipeline.expression import cell_type_designs, fit_deseq2
from pipeline.simulate import simulate_pseudobulk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--patients", type=int, default=44)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, help="append the result as one JSON line")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cfg = SimulationConfig(seed=2026, n_patients=args.patients, n_genes=args.genes, n_batches=4)
    samples, counts = simulate_pseudobulk(cfg, cells=200)
    genes = [f"g{i}" for i in range(args.genes)]
    index = samples.set_index("sample_id").index
    record: dict[str, object] = {"label": "expression-inference", "genes": args.genes,
                                 "samples": len(samples), "repeats": args.repeats}  # fmt: skip
    for fit in cell_type_designs(samples).fits:
        y = counts[index.get_indexer(fit.x.index)]
        times: dict[str, list[float]] = {"default": [], "batched": []}
        tables = {}
        for _ in range(args.repeats):  # alternate, so that load drifts hit both alike
            for name, batched in (("default", False), ("batched", True)):
                start = time.perf_counter()
                tables[name], _ = fit_deseq2(y, genes, fit, batched=batched)
                times[name].append(round(time.perf_counter() - start, 3))
        a, b = tables["default"], tables["batched"]
        ok = a["pvalue"].notna() & b["pvalue"].notna()
        record[fit.name] = {
            "columns": fit.x.shape[1],
            "seconds": times,
            "median_default": statistics.median(times["default"]),
            "median_batched": statistics.median(times["batched"]),
            "speedup": round(statistics.median(times["default"]) / statistics.median(times["batched"]), 2),
            "max_abs_log2fc_difference": float((a["log2fc"] - b["log2fc"]).abs().max()),
            "median_abs_log10p_difference": float(
                np.median(np.abs(np.log10(a.loc[ok, "pvalue"]) - np.log10(b.loc[ok, "pvalue"])))
            ),
        }  # fmt: skip
    print(json.dumps(record, indent=1))
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

"""Benchmark: recall and false discovery proportion of the expression models against the
planted effect size and the number of patients (`pipeline.expression.power_cohort`).

Per cohort (`simulate_planted_pseudobulk`: months 0, 3, 6 in 4 processing batches,
patient-to-patient expression variation sd 0.2, ~100 cells of the type per sample, 2,000
genes), 50 genes up by the log2 fold in non-responders at baseline (found by
`response@month0`, across patients) and 50 other genes down by it in responders at months
3 and 6 (found by `time6@responder`, patients blocked); calls at q < 0.05 (``--balanced``:
half of each change's genes the other way). Prints per patients x effect x contrast the
median recall, the mean false discovery proportion and the mean share of p < 0.05 and
p < 0.001 among the genes planted in neither change.

    python benchmarks/expression_power.py --patients 10,20,44 --folds 0.5,0.75,1,1.5 \
        --seeds 3 --json benchmarks/results/expression_power.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import pandas as pd

from pipeline.config import SimulationConfig
from pipeline.expression import power_cohort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", default="10,20,44")
    parser.add_argument("--folds", default="0.5,0.75,1,1.5")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--balanced", action="store_true",
                        help="half of each change's planted genes the other way")  # fmt: skip
    parser.add_argument("--json", type=Path, help="append the result as one JSON line")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    rows = []
    for n in map(int, args.patients.split(",")):
        for fold in map(float, args.folds.split(",")):
            for seed in range(args.seeds):
                cfg = SimulationConfig(seed=1000 + seed, n_patients=n, n_genes=args.genes,
                                       n_batches=4)  # fmt: skip
                rows.append(power_cohort(cfg, fold, balanced=args.balanced))
    result = pd.concat(rows, ignore_index=True)
    table = (result.groupby(["contrast", "n_patients", "log2_fold"])
             .agg(recall=("recall", "median"), fdp=("fdp", "mean"),
                  calls=("calls", "mean"), null_p05=("null_p05", "mean"),
                  null_p001=("null_p001", "mean"), cohorts=("seed", "size"))
             .reset_index())  # fmt: skip
    print(table.to_string(index=False))
    if args.json:
        record = {"label": "expression-power", "genes": args.genes, "planted_per_contrast": 50,
                  "balanced": args.balanced,
                  "seconds": round(time.perf_counter() - start, 1),
                  "rows": result.to_dict(orient="records")}  # fmt: skip
        with args.json.open("a") as out:
            out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

"""Benchmark: the predict stage's honesty and cost at the study's size (44 patients, the
stage's default settings), on cohorts of the abundance-table simulator.

- null cohorts (no planted effect): share of permutation p-values below 0.05, coverage
  of 0.5 by the AUC's 95% interval, mean AUC;
- planted cohorts (the simulator's DN2 baseline difference): cross-validated AUC against
  the AUC of the true DN2 share (the ceiling), and how often DN2 is the top feature;
- the cost of one nested cross-validation: the batched solver against scikit-learn's
  LogisticRegression fitting the same problems one by one.

    python benchmarks/predict_calibration.py --null 100 --planted 20 --permutations 200 \
        --json benchmarks/results/predict_calibration.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import SimulationConfig
from pipeline.config_analysis import PredictConfig
from pipeline.labels import B_SUBSETS
from pipeline.predict import auc, composition_features, fit_model
from pipeline.simulate import design_cohort, simulate_count_table


def cohort(seed: int, planted: bool) -> tuple[pd.DataFrame, np.ndarray, float]:
    cfg = SimulationConfig(seed=seed, n_patients=44, **({} if planted else {"effects": []}))
    counts = simulate_count_table(cfg)
    table = composition_features(counts, pseudocount=0.5)
    response = counts.drop_duplicates("patient_id").set_index("patient_id")["response"]
    y = (response.loc[table.index] == "non_responder").to_numpy(dtype=int)
    truth = {s.patient_id: s.b_subset_probs[B_SUBSETS.index("DN2")]
             for s in design_cohort(cfg).samples if s.timepoint_months == 0}  # fmt: skip
    return table, y, float(auc(y, np.array([truth[p] for p in table.index])))


def one(args: tuple[int, bool, int]) -> dict[str, Any]:
    seed, planted, permutations = args
    table, y, oracle = cohort(seed, planted)
    fit = fit_model(table, y, PredictConfig(permutations=permutations), client=None, name="c")
    m = fit.metrics
    return {"seed": seed, "planted": planted, "auc": m["auc"], "ci_low": m["auc_ci_low"],
            "ci_high": m["auc_ci_high"], "pvalue": m["permutation_pvalue"],
            "top": fit.coefficients["feature"].iloc[0], "oracle": oracle}  # fmt: skip


def solver_timing(repeats: int) -> dict[str, float]:
    """One nested cross-validation's problems (the defaults: 25 outer splits x 11
    penalties) fitted by the batched solver and by scikit-learn one at a time."""
    from sklearn.linear_model import LogisticRegression

    from pipeline.predict import CVSettings, fit_logistic, outer_splits, standardize

    table, y, _ = cohort(0, True)
    x = table.to_numpy()
    settings = CVSettings(c_grid=tuple(PredictConfig().penalties))
    train = outer_splits(y, settings)
    xs, _, _ = standardize(np.broadcast_to(x, (len(train), *x.shape)), train)
    grid = np.asarray(settings.c_grid)
    xb = np.repeat(xs, grid.size, axis=0)
    yb = np.repeat(np.broadcast_to(y, train.shape), grid.size, axis=0).astype(float)
    wb = np.repeat(train, grid.size, axis=0).astype(float)
    cb = np.tile(grid, len(train))
    batched, sk = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        fit_logistic(xb, yb, wb, cb)
        batched.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(len(cb)):
            rows = wb[i] > 0
            LogisticRegression(C=cb[i]).fit(xb[i][rows], yb[i][rows])
        sk.append(time.perf_counter() - t)
    return {"problems": len(cb), "batched_s": float(np.median(batched)),
            "sklearn_s": float(np.median(sk)),
            "ratio": float(np.median(sk) / np.median(batched))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--null", type=int, default=100)
    parser.add_argument("--planted", type=int, default=20)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    jobs = [(30_000 + i, False, args.permutations) for i in range(args.null)]
    jobs += [(40_000 + i, True, 0) for i in range(args.planted)]
    with ProcessPoolExecutor(args.processes) as pool:
        rows = pd.DataFrame(list(pool.map(one, jobs)))
    null, planted = rows[~rows["planted"]], rows[rows["planted"]]
    summary = {
        "null_cohorts": len(null),
        "null_share_p_below_0.05": float((null["pvalue"] < 0.05).mean()),
        "null_coverage_of_0.5": float(((null["ci_low"] <= 0.5) & (0.5 <= null["ci_high"])).mean()),
        "null_mean_auc": float(null["auc"].mean()),
        "planted_cohorts": len(planted),
        "planted_mean_auc": float(planted["auc"].mean()),
        "planted_mean_oracle_auc": float(planted["oracle"].mean()),
        "planted_dn2_top": float((planted["top"] == "b_subset:DN2").mean()),
        "solver": solver_timing(3),
        "permutations": args.permutations,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        with args.json.open("a") as out:
            out.write(json.dumps({"label": "predict-calibration", **summary,
                                  "rows": rows.to_dict(orient="records")}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

"""Benchmark: fit every abundance model and contrast for a study-sized table.

The table is the count-table simulator's 44 patients x 3 timepoints (132 samples) with
the default planted effects: 23 models (9 lineages within PBMC, 7 B subsets within B and
within PBMC) per method, 9 contrasts each. Reports the median and every repeat's wall
time per method and for both, in one process (the stage fits in the driver).

    python benchmarks/abundance_fit.py --repeats 5 --json benchmarks/results/abundance.jsonl
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

from pipeline.abundance import fit_abundance_models
from pipeline.config import SimulationConfig
from pipeline.simulate import simulate_count_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--patients", type=int, default=44)
    parser.add_argument("--json", type=Path, help="append the result as one JSON line")
    args = parser.parse_args()
    counts = simulate_count_table(SimulationConfig(seed=2024, n_patients=args.patients))
    record: dict[str, object] = {
        "label": "abundance-fit",
        "samples": int(counts["sample_id"].nunique()),
        "repeats": args.repeats,
    }
    for name, methods in (("glmm", ("glmm",)), ("propeller", ("propeller",)),
                          ("both", ("glmm", "propeller"))):  # fmt: skip
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = fit_abundance_models(counts, methods=methods)
            times.append(time.perf_counter() - start)
        record[name] = {
            "median_s": round(statistics.median(times), 3),
            "all_s": [round(t, 3) for t in times],
            "models": len(result.fits),
            "tests": len(result.tests),
        }
        print(f"{name:9s} {len(result.fits):3d} models {len(result.tests):4d} tests: median "
              f"{statistics.median(times):.2f} s of {[round(t, 2) for t in times]}")  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    record["peak_rss_gib"] = round(peak, 3)
    print(f"peak memory (this single process): {peak:.2f} GiB")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

"""Projected cost of the whole run at larger cohorts on N nodes, from two measured sizes.

Reads two lines of one `scaling.py` run (the same ``run`` id; by default its 1M and 4M
sizes) and, per stage, fits ``a * cells**e`` through the two sizes to

- the driver's CPU seconds (the run's own process, with the scheduler in it: on a
  cluster this work stays on one core of one node whatever the number of nodes), and
- the other processes' CPU seconds (the workers and their nannies: on N nodes of c cores
  it spreads over N x c cores),

then projects each stage's seconds at C cells on N nodes as ``driver(C) + others(C) / (N
x c)`` (serial driver work plus perfectly parallel worker work: no transfer between
nodes, no shared-file-system latency, no stragglers; a floor, not a promise). Memory: the
driver's peak per stage and the other processes' summed peak, each fitted ``base +
slope x cells`` (the two sizes' line); the workers' share beyond their base divides over
the nodes. Exponents outside [0, 2] (noise of a stage that barely costs anything) are
clamped.

    python benchmarks/projection.py benchmarks/results/scaling.jsonl --run RUN_ID \\
        --cells 10e6,50e6 --nodes 4,16,64 --cores 32
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

GROWTH_LIMITS = (0.0, 2.0)


@dataclass(frozen=True)
class StageFit:
    """One stage's costs at two sizes and the curves through them."""

    stage: str
    cells: tuple[float, float]
    driver_cpu: tuple[float, float]
    others_cpu: tuple[float, float]
    driver_gib: tuple[float, float]
    others_gib: tuple[float, float]

    def _power(self, values: tuple[float, float], cells: float) -> float:
        (c0, c1), (v0, v1) = self.cells, values
        if v0 <= 0 or v1 <= 0:
            return max(v0, v1) * cells / c1
        e = min(max(math.log(v1 / v0) / math.log(c1 / c0), GROWTH_LIMITS[0]), GROWTH_LIMITS[1])
        return v1 * (cells / c1) ** e

    def exponent(self, values: tuple[float, float]) -> float:
        (c0, c1), (v0, v1) = self.cells, values
        if v0 <= 0 or v1 <= 0:
            return float("nan")
        return math.log(v1 / v0) / math.log(c1 / c0)

    def _line(self, values: tuple[float, float], cells: float) -> float:
        (c0, c1), (v0, v1) = self.cells, values
        slope = max((v1 - v0) / (c1 - c0), 0.0)
        return v1 + slope * (cells - c1)

    def seconds(self, cells: float, nodes: int, cores: int) -> tuple[float, float]:
        """(driver seconds, workers' seconds) at ``cells`` on ``nodes`` x ``cores``."""
        return self._power(self.driver_cpu, cells), self._power(self.others_cpu, cells) / (
            nodes * cores
        )

    def driver_memory(self, cells: float) -> float:
        return self._line(self.driver_gib, cells)

    def workers_per_cell_memory(self, cells: float) -> float:
        """The workers' summed peak beyond what they held at the smaller size's base:
        ``slope x cells``, spread over the nodes."""
        (c0, c1), (v0, v1) = self.cells, self.others_gib
        return max((v1 - v0) / (c1 - c0), 0.0) * cells


def load_fits(path: Path, run: str | None, sizes: tuple[str, str]) -> tuple[list[StageFit], dict]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if run is None:  # the last run that has both sizes
        runs = [r["run"] for r in lines if r["size"] == sizes[1]]
        run = next(
            (
                x
                for x in reversed(runs)
                if any(r["run"] == x and r["size"] == sizes[0] for r in lines)
            ),
            None,
        )
    by_size = {r["size"]: r for r in lines if r.get("run") == run}
    missing = [s for s in sizes if s not in by_size]
    if missing:
        raise SystemExit(f"{path}: run {run} has no line for size(s) {missing}")
    small, large = (by_size[s]["pipeline"] for s in sizes)
    for name, p in zip(sizes, (small, large), strict=True):
        if not all("driver_cpu_s" in s for s in p["stages"]):
            raise SystemExit(f"{path}: run {run}, size {name}: no driver_cpu_s per stage "
                             "(recorded since commit c1598c3)")  # fmt: skip
    stages = [s["stage"] for s in small["stages"]]
    fits = []
    for stage in stages:
        a = next(s for s in small["stages"] if s["stage"] == stage)
        b = next(s for s in large["stages"] if s["stage"] == stage)
        fits.append(
            StageFit(
                stage=stage,
                cells=(float(small["cells"]), float(large["cells"])),
                driver_cpu=(a["driver_cpu_s"], b["driver_cpu_s"]),
                others_cpu=(a["cpu_s"] - a["driver_cpu_s"], b["cpu_s"] - b["driver_cpu_s"]),
                driver_gib=(a["driver_peak_rss_gib"], b["driver_peak_rss_gib"]),
                others_gib=(a["others_peak_rss_gib"], b["others_peak_rss_gib"]),
            )
        )
    meta = {"run": run, "commit": by_size[sizes[1]]["commit"],
            "cells": [small["cells"], large["cells"]]}  # fmt: skip
    return fits, meta


def table(fits: list[StageFit], cells: list[float], nodes: list[int], cores: int) -> str:
    def millions(c: float) -> str:
        return f"{c / 1e6:g}M"

    head = ["stage", "driver CPU s (growth)", "workers CPU s (growth)"]
    for c in cells:
        head += [f"{millions(c)}: driver s + workers s on {n} nodes" for n in nodes]
        head += [f"{millions(c)}: driver GiB / workers' per-cell GiB"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    totals: dict[tuple[float, int], float] = {}
    for f in fits:
        row = [
            f.stage,
            f"{f.driver_cpu[0]:.0f} -> {f.driver_cpu[1]:.0f} ({f.exponent(f.driver_cpu):.2f})",
            f"{f.others_cpu[0]:.0f} -> {f.others_cpu[1]:.0f} ({f.exponent(f.others_cpu):.2f})",
        ]
        for c in cells:
            for n in nodes:
                d, w = f.seconds(c, n, cores)
                totals[(c, n)] = totals.get((c, n), 0.0) + d + w
                row.append(f"{d:.0f} + {w:.0f}")
            row.append(f"{f.driver_memory(c):.1f} / {f.workers_per_cell_memory(c):.1f}")
        rows.append("| " + " | ".join(row) + " |")
    total = ["**whole run**", "", ""]
    for c in cells:
        total += [f"**{totals[(c, n)] / 60:.0f} min**" for n in nodes]
        total.append(f"{max(f.driver_memory(c) for f in fits):.1f} / "
                     f"{max(f.workers_per_cell_memory(c) for f in fits):.1f}")  # fmt: skip
    rows.append("| " + " | ".join(total) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="scaling.py's JSON lines")
    parser.add_argument("--run", help="the run id (default: the last with both sizes)")
    parser.add_argument("--sizes", default="1M,4M", help="the two measured sizes")
    parser.add_argument("--cells", default="10e6,50e6", help="cohort sizes to project")
    parser.add_argument("--nodes", default="4,16,64")
    parser.add_argument("--cores", type=int, default=32, help="cores per node")
    args = parser.parse_args(argv)
    small, large = args.sizes.split(",")
    fits, meta = load_fits(args.results, args.run, (small, large))
    cells = [float(c) for c in args.cells.split(",")]
    nodes = [int(n) for n in args.nodes.split(",")]
    print(f"run {meta['run']} (commit {meta['commit']}), measured at {meta['cells'][0]:,} and "
          f"{meta['cells'][1]:,} cells; {args.cores} cores per node\n")  # fmt: skip
    print(table(fits, cells, nodes, args.cores))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

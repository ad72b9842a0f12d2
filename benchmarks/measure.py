"""Run a command and measure its wall time, CPU time and peak memory over all processes.

Peak memory is the largest sum of resident set sizes over the command's whole process
tree (driver, scheduler, nannies, workers), sampled every 0.1 s.

    python benchmarks/measure.py --label simulate-1M --json out.json -- immunoprofile ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil


def measure(command: list[str], interval: float = 0.1) -> dict[str, float | int | list[str]]:
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    root = psutil.Process(proc.pid)
    peak_rss = 0
    peak_procs = 0
    cpu_seen: dict[int, float] = {}
    per_process: dict[int, int] = {}
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = 0
        for p in tree:
            try:
                rss = p.memory_info().rss
                total += rss
                per_process[p.pid] = max(per_process.get(p.pid, 0), rss)
                t = p.cpu_times()
                cpu_seen[p.pid] = t.user + t.system
            except psutil.NoSuchProcess:
                continue
        peak_rss = max(peak_rss, total)
        peak_procs = max(peak_procs, len(tree))
        time.sleep(interval)
    wall = time.perf_counter() - start
    return {
        "command": command,
        "returncode": proc.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(sum(cpu_seen.values()), 1),
        "peak_rss_gib": round(peak_rss / 2**30, 3),
        "max_processes": peak_procs,
        # largest resident size reached by each process (driver first, then by pid)
        "peak_rss_per_process_gib": [round(v / 2**30, 3) for _, v in sorted(per_process.items())],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--json", type=Path, help="append the result to this JSON-lines file")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    result = {"label": args.label, **measure(command)}
    line = json.dumps(result)
    print(line, file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as fh:
            fh.write(line + "\n")
    return int(result["returncode"] != 0)


if __name__ == "__main__":
    raise SystemExit(main())

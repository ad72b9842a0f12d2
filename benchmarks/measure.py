"""Run a command and measure its wall time, CPU time and peak memory over all processes.

Peak memory is the largest sum of resident set sizes over the command's whole process
tree (driver, scheduler, nannies, workers), sampled every 0.1 s. CPU time is the sum of
user + system time of every process of the tree, as last seen alive.

    python benchmarks/measure.py --label simulate-1M --json out.json -- immunoprofile ...

`measure(..., timeline=True)` also returns the samples, ``[unix time, total RSS bytes,
CPU seconds so far, driver RSS bytes, largest other process's RSS bytes, the driver's
CPU seconds so far]``, so that a run can be cut into stages;
``memory_cap_gib`` kills the whole tree when the sum of resident sizes passes the cap
(the result then says ``"killed": "memory cap"``), ``timeout_s`` likewise.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

GIB = 2**30


def _kill_tree(root: psutil.Process) -> None:
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            continue


def measure(
    command: list[str],
    interval: float = 0.1,
    *,
    timeline: bool = False,
    memory_cap_gib: float | None = None,
    timeout_s: float | None = None,
    stdout: Any = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=stdout, env={**os.environ, **(env or {})})
    root = psutil.Process(proc.pid)
    peak_rss = 0
    peak_procs = 0
    cpu_seen: dict[int, float] = {}
    per_process: dict[int, int] = {}
    samples: list[list[float]] = []
    killed = None
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        total = 0
        driver = 0
        largest_other = 0
        for p in tree:
            try:
                rss = p.memory_info().rss
                total += rss
                per_process[p.pid] = max(per_process.get(p.pid, 0), rss)
                t = p.cpu_times()
                cpu_seen[p.pid] = t.user + t.system
                if p.pid == root.pid:
                    driver = rss
                else:
                    largest_other = max(largest_other, rss)
            except psutil.NoSuchProcess:
                continue
        peak_rss = max(peak_rss, total)
        peak_procs = max(peak_procs, len(tree))
        if timeline:
            cpu = round(sum(cpu_seen.values()), 2)
            driver_cpu = round(cpu_seen.get(root.pid, 0.0), 2)
            samples.append([round(time.time(), 3), total, cpu, driver, largest_other, driver_cpu])
        if memory_cap_gib is not None and total > memory_cap_gib * GIB:
            killed = "memory cap"
        elif timeout_s is not None and time.perf_counter() - start > timeout_s:
            killed = "timeout"
        if killed:
            _kill_tree(root)
            proc.wait()
            break
        time.sleep(interval)
    wall = time.perf_counter() - start
    result: dict[str, Any] = {
        "command": command,
        "returncode": proc.returncode,
        "wall_s": round(wall, 2),
        "cpu_s": round(sum(cpu_seen.values()), 1),
        "peak_rss_gib": round(peak_rss / GIB, 3),
        "max_processes": peak_procs,
        # largest resident size reached by each process (driver first, then by pid)
        "peak_rss_per_process_gib": [round(v / GIB, 3) for _, v in sorted(per_process.items())],
        # user + system CPU seconds of each process, in the same order
        "cpu_s_per_process": [round(cpu_seen.get(pid, 0.0), 1) for pid in sorted(per_process)],
    }
    if killed:
        result["killed"] = killed
    if timeline:
        result["timeline"] = samples
    return result


def pipeline_commit() -> str:
    """The commit of the `pipeline` package that is measured (a worktree's, with
    PYTHONPATH), not of the working directory; "" outside a repository."""
    import importlib.util

    spec = importlib.util.find_spec("pipeline")
    where = Path(spec.origin).parent if spec is not None and spec.origin else None
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=where)  # fmt: skip
    return out.stdout.strip()


def append_record(record: dict[str, Any], path: Path | None) -> None:
    """Print ``record`` as a JSON line, and append it to ``path`` (None: print only)."""
    print(json.dumps(record), flush=True)
    if path is not None:
        with path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label", required=True)
    parser.add_argument("--json", type=Path, help="append the result to this JSON-lines file")
    parser.add_argument("--memory-cap-gib", type=float, help="kill the command above this")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    result = {"label": args.label, **measure(command, memory_cap_gib=args.memory_cap_gib)}
    line = json.dumps(result)
    print(line, file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as fh:
            fh.write(line + "\n")
    return int(result["returncode"] != 0)


if __name__ == "__main__":
    raise SystemExit(main())

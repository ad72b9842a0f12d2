"""Where a stage's worker time goes: run ``immunoprofile run CONFIG --force STAGE --until
STAGE`` in this process with one of the stage's functions (one that gets the Dask client as
``client=``) wrapped in distributed's task stream, then print each task function's
count and summed seconds of compute and of transfer (core-seconds over the workers), and
the wrapped call's wall time.

    python benchmarks/task_time.py cfg_off.yaml preprocess \\
        pipeline.preprocess._run:preprocess_cohort
"""

from __future__ import annotations

import argparse
import collections
import importlib
import re
import time
from typing import Any

from distributed import get_task_stream

from pipeline.cli import main as cli_main

UUID = re.compile(r"-[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$|-[0-9a-f]{32}$")


def task_name(key: Any) -> str:
    """A task key without its token: ``_refine_part-<uuid>`` -> ``_refine_part``."""
    name = str(key[0] if isinstance(key, tuple) else key)
    return UUID.sub("", name)


def summary(records: list[dict[str, Any]]) -> list[tuple[str, str, int, float]]:
    """(task name, action, count, seconds) from a task stream, largest seconds first."""
    totals: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for task in records:
        for part in task["startstops"]:
            entry = totals[(task_name(task["key"]), part["action"])]
            entry[0] += 1
            entry[1] += part["stop"] - part["start"]
    rows = [(name, action, int(n), s) for (name, action), (n, s) in totals.items()]
    return sorted(rows, key=lambda row: -row[3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("stage")
    parser.add_argument("function", help="module:function, called with client=...")
    args = parser.parse_args()
    module_name, name = args.function.split(":")
    module = importlib.import_module(module_name)
    original = getattr(module, name)

    def wrapped(*a: Any, client: Any, **kw: Any) -> Any:
        with get_task_stream(client=client) as stream:
            start = time.perf_counter()
            out = original(*a, client=client, **kw)
            wall = time.perf_counter() - start
        print(f"{name}: {wall:.1f} s")
        for task, action, count, seconds in summary(stream.data):
            print(f"  {task:40s} {action:9s} {count:6d} tasks {seconds:8.2f} s")
        return out

    setattr(module, name, wrapped)
    cli_main(["run", args.config, "--force", args.stage, "--until", args.stage])


if __name__ == "__main__":
    main()

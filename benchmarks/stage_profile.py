"""Where a stage's memory goes: run ``immunoprofile run CONFIG --until STAGE`` in this
process (the stage's folder removed first, so that it runs) while a thread samples the
resident memory of this process (the driver) and of its children (scheduler, workers)
every 0.05 s, and marks when chosen functions of the stage's modules start and return.
Prints the peaks and, at every mark, the driver's and the two largest children's memory.

    python benchmarks/stage_profile.py /work/cmp/scaling/1M/config.yaml expression \\
        pipeline.expression._run:pseudobulk_counts,_programs,pseudobulk_anndata
    python benchmarks/stage_profile.py /work/cmp/scaling/1M/config.yaml graph --force \\
        pipeline.graph._sharded:_neighbours,_lazy_csr,_rounds,umap_layout
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

GIB = 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("stage")
    parser.add_argument("marks", nargs="+", help="module:function,function,... to mark")
    parser.add_argument("--force", action="store_true",
                        help="run the stage even when current (a stage that writes into "
                        "cohort.zarr has no folder to remove)")  # fmt: skip
    args = parser.parse_args()
    work = Path(yaml.safe_load(Path(args.config).read_text())["workdir"])
    shutil.rmtree(work / args.stage, ignore_errors=True)
    me = psutil.Process()
    samples: list[tuple[float, int, list[int]]] = []
    events: list[tuple[float, str]] = []
    start = time.perf_counter()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            children = []
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    children.append(child.memory_info().rss)
            samples.append((time.perf_counter() - start, me.memory_info().rss,
                            sorted(children, reverse=True)[:2]))  # fmt: skip
            time.sleep(0.05)

    for marks in args.marks:
        module_name, names = marks.split(":")
        module = importlib.import_module(module_name)
        for name in names.split(","):
            original = getattr(module, name)

            def marked(*a: Any, _f: Any = original, _n: str = name, **k: Any) -> Any:
                events.append((time.perf_counter() - start, f"{_n} >"))
                try:
                    return _f(*a, **k)
                finally:
                    events.append((time.perf_counter() - start, f"{_n} <"))

            setattr(module, name, marked)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    from pipeline.cli import main as cli

    force = ["--force", args.stage] if args.force else []
    code = cli(["run", args.config, "--until", args.stage, *force])
    stop.set()
    thread.join()
    driver = max(samples, key=lambda s: s[1])
    total = max(samples, key=lambda s: s[1] + sum(s[2]))
    print(f"exit {code}; driver peak {driver[1] / GIB:.3f} GiB at {driver[0]:.1f} s; "
          f"all processes {(total[1] + sum(total[2])) / GIB:.3f} GiB at {total[0]:.1f} s")  # fmt: skip
    for t, what in events:
        s = max((x for x in samples if x[0] <= t), key=lambda x: x[0], default=samples[0])
        print(f"{t:8.1f} s  {what:36s} driver {s[1] / GIB:.3f}  workers "
              f"{', '.join(f'{c / GIB:.3f}' for c in s[2])}")  # fmt: skip


if __name__ == "__main__":
    main()

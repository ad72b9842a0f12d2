"""The driver process's CPU time for one command: ``immunoprofile ARGS`` run in this
process (with a local cluster the Dask scheduler runs here too, so this is the driver's
and the scheduler's work together), between two ``getrusage(RUSAGE_SELF)``; the workers'
CPU is not in it. Prints the CPU and wall seconds.

    python benchmarks/driver_cpu.py run /work/cmp/s21/cfg_off.yaml --force qc --until qc
"""

from __future__ import annotations

import resource
import sys
import time


def main() -> None:
    from pipeline.cli import main as immunoprofile

    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_SELF)
    code = immunoprofile(sys.argv[1:])
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    wall = time.perf_counter() - start
    print(f"driver CPU {cpu:.1f} s, wall {wall:.1f} s, exit {code}", flush=True)
    sys.exit(code)


if __name__ == "__main__":
    main()

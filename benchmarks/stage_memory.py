"""Benchmark: every stage from ``--first`` on, each in a process of its own
(``immunoprofile run CONFIG --until STAGE``, the one before it current), under
`benchmarks.measure`: the driver's own peak (the process that runs the stage, with the
LocalCluster's scheduler in it) and each worker's, without the heaps earlier stages leave
in a driver that runs them all. One JSON line per stage (``--json``) and a table.

    python benchmarks/stage_memory.py /work/cmp/scaling/1M/config.yaml --label 1M \\
        --json benchmarks/results/stage_memory.jsonl

The first stage is forced (``--force``); each later one runs because the stage before it
was just rewritten. The workdir's results are recomputed (the same, the stages being
seeded).

``--one-process``: the stages from ``--first`` to ``--last`` in one run instead (``run
--until LAST --force FIRST``), as a whole run carries each stage's heap and workers into
the next; the run's samples are cut into stages by ``logs/stages.jsonl``, one line per
stage (the largest other process is a worker).

    python benchmarks/stage_memory.py /work/cmp/scaling/1M/config.yaml --first graph \
        --last annotate --one-process --label 1M-graph-annotate
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from measure import append_record, measure, pipeline_commit

STAGES = ("qc", "preprocess", "integrate", "graph", "annotate", "abundance",
          "neighbourhoods", "expression", "predict", "report")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--label", required=True)
    parser.add_argument("--first", default="qc", choices=STAGES)
    parser.add_argument("--last", default="report", choices=STAGES)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one-process", action="store_true", help="the stages in one run")
    args = parser.parse_args()
    todo = STAGES[STAGES.index(args.first) : STAGES.index(args.last) + 1]
    if args.one_process:
        one_process(args, todo)
        return
    rows = []
    for i, stage in enumerate(todo):
        command = [sys.executable, "-m", "pipeline", "run", str(args.config), "--until", stage]
        if i == 0:
            command += ["--force", stage]
        result = measure(command, stdout=subprocess.DEVNULL)
        if result["returncode"] != 0:
            sys.exit(f"{stage}: exit {result['returncode']}")
        per = result["peak_rss_per_process_gib"]
        row = {
            "label": args.label, "stage": stage, "commit": pipeline_commit(),
            "wall_s": result["wall_s"], "cpu_s": result["cpu_s"],
            "driver_cpu_s": result["cpu_s_per_process"][0],
            "peak_rss_gib": result["peak_rss_gib"], "driver_gib": per[0],
            "workers_gib": sorted(per[1:], reverse=True)[:2],
        }  # fmt: skip
        rows.append(row)
        append_record(row, args.json)
    print("| stage | wall s | all processes GiB | driver GiB | workers GiB |")
    print("|---|---|---|---|---|")
    for r in rows:
        workers = " + ".join(f"{w:.2f}" for w in r["workers_gib"])
        print(f"| {r['stage']} | {r['wall_s']:.0f} | {r['peak_rss_gib']:.2f} | "
              f"{r['driver_gib']:.2f} | {workers} |")  # fmt: skip


def one_process(args: argparse.Namespace, todo: tuple[str, ...]) -> None:
    from scaling import stage_rows

    from pipeline.config import load_config

    command = [sys.executable, "-m", "pipeline", "run", str(args.config), "--until", todo[-1],
               "--force", todo[0]]  # fmt: skip
    result = measure(command, timeline=True, stdout=subprocess.DEVNULL)
    if result["returncode"] != 0:
        sys.exit(f"exit {result['returncode']}")
    timeline = result["timeline"]
    lines = (load_config(args.config).workdir / "logs" / "stages.jsonl").read_text().splitlines()
    log = [e for e in map(json.loads, lines) if e["started_unix"] >= timeline[0][0]]
    for row in stage_rows(timeline, [e for e in log if e["stage"] in todo], 0, result["wall_s"]):
        record = {"label": args.label, "one_process": True, "commit": pipeline_commit(),
                  "run_wall_s": result["wall_s"], "run_peak_rss_gib": result["peak_rss_gib"],
                  **{k: v for k, v in row.items() if k not in ("cells_per_s", "share")}}  # fmt: skip
        append_record(record, args.json)


if __name__ == "__main__":
    main()

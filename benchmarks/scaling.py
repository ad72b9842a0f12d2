"""Scaling benchmark: the whole pipeline, samplesheet to report, at several cohort sizes.

For each size: simulate the cohort (10x HDF5, the project's simulator; kept and reused
while its parameters are unchanged), run `immunoprofile run` from an empty workdir while
sampling the whole process tree (driver, scheduler, nannies, workers) every 0.1 s, cut
the samples into stages by ``logs/stages.jsonl``, then run the scanpy in-memory baseline
(`scanpy_baseline.py --samplesheet ... --full`) on the same inputs, killed if it passes
the memory cap. One JSON line per size goes to ``--json``; `scaling_report.py` turns the
lines into tables and a plot; each size's samples (time, RSS of all processes, of the
driver, of the largest other) go to ``ROOT/SIZE/timeline.json``. ``--force STAGE``
keeps the workdirs and measures a run from that stage on (the earlier stages skipped as
current).

    python benchmarks/scaling.py --sizes 50k,250k,1M --root /tmp/scaling \
        --json benchmarks/results/scaling.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from bisect import bisect_right
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml

from pipeline.workdir import Workdir

sys.path.insert(0, str(Path(__file__).parent))
from measure import GIB, measure

HERE = Path(__file__).resolve().parent
# The study's design (44 patients x 3 timepoints, 4 processing batches, 20,000 genes,
# 10x HDF5) with fewer patients or cells; "tiny" keeps the runner tested (tests/).
SIMULATE = {"seed": 2024, "timepoints_months": [0, 3, 6], "n_genes": 20000,
            "n_batches": 4, "format": "h5"}  # fmt: skip
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"simulate": {"n_patients": 4, "cells_per_sample": 250, "n_genes": 3000,
                          "n_batches": 2},
             "run": {"preprocess": {"n_top_genes": 500, "n_comps": 20},
                     "expression": {"cell_types": ["B"]}}},
    "50k": {"simulate": {"n_patients": 4, "cells_per_sample": 4200}},
    "250k": {"simulate": {"n_patients": 11, "cells_per_sample": 7500}},
    "1M": {"simulate": {"n_patients": 44, "cells_per_sample": 7500}},
    # the study's 132 samples with a quarter of the cells each: against 1M, only the
    # number of cells differs (memory flat in cells, issue #23)
    "250k_132": {"simulate": {"n_patients": 44, "cells_per_sample": 1900}},
    # pooled cohorts beyond the study: 176 patients x 3 timepoints x 7,500 cells (#28)
    "4M": {"simulate": {"n_patients": 176, "cells_per_sample": 7500}},
}  # fmt: skip


def write_config(size: str, folder: Path) -> Path:
    spec = SIZES[size]
    config = {
        "workdir": str(folder / "work"),
        "samplesheet": str(folder / "data" / "samplesheet.csv"),
        "cluster": {"profile": "local"},
        "simulate": {**SIMULATE, **spec["simulate"]},
        **spec.get("run", {}),
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def simulate(config: Path, folder: Path) -> dict[str, Any]:
    """Simulate unless the data of the same parameters is there (``data/.params``)."""
    data = folder / "data"
    params = json.dumps(yaml.safe_load(config.read_text())["simulate"], sort_keys=True)
    stamp = data / ".params"
    if stamp.exists() and stamp.read_text() == params and (data / "samplesheet.csv").exists():
        return {"reused": True}
    shutil.rmtree(data, ignore_errors=True)
    command = [sys.executable, "-m", "pipeline", "simulate", str(config), "--out", str(data)]
    result = measure(command, stdout=subprocess.DEVNULL)
    if result["returncode"] != 0:
        raise SystemExit(f"simulate failed for {config}: exit {result['returncode']}")
    stamp.write_text(params)
    return result


def stage_rows(timeline: list[list[float]], log: list[dict[str, Any]], cells: int, wall: float):
    """Per stage: wall, CPU (all processes and the driver's), peak over all processes, of the driver, of all but the driver
    and of the largest other process (a worker: the scheduler stays smaller), cells/s,
    share."""
    times = [s[0] for s in timeline]

    def cpu_at(t: float, column: int = 2) -> float:
        i = bisect_right(times, t) - 1
        sample = timeline[max(i, 0)] if timeline else []
        return sample[column] if len(sample) > column else 0.0

    rows = []
    for entry in log:
        t0 = entry["started_unix"]
        t1 = t0 + entry["seconds"]
        # a stage shorter than the sampling interval: the sample just before it
        window = [s for s in timeline if t0 <= s[0] <= t1] or [
            timeline[bisect_right(times, t0) - 1]
        ]
        rows.append(
            {
                "stage": entry["stage"],
                "status": entry["status"],
                "wall_s": entry["seconds"],
                "cpu_s": round(cpu_at(t1) - cpu_at(t0), 1),
                "driver_cpu_s": round(cpu_at(t1, 5) - cpu_at(t0, 5), 1),
                "peak_rss_gib": round(max((s[1] for s in window), default=0) / GIB, 3),
                "driver_peak_rss_gib": round(max((s[3] for s in window), default=0) / GIB, 3),
                "others_peak_rss_gib": round(
                    max((s[1] - s[3] for s in window), default=0) / GIB, 3
                ),
                "largest_other_peak_rss_gib": round(
                    max((s[4] for s in window if len(s) > 4), default=0) / GIB, 3
                ),
                "cells_per_s": round(cells / entry["seconds"]) if entry["seconds"] else None,
                "share": round(entry["seconds"] / wall, 4),
            }
        )
    return rows


def run_pipeline(config: Path, folder: Path, force: str | None = None) -> dict[str, Any]:
    """`immunoprofile run` from an empty workdir, measured; with ``force``, in the workdir
    as an earlier run left it, from that stage on (the stages before it skipped)."""
    work = folder / "work"
    command = [sys.executable, "-m", "pipeline", "run", str(config)]
    if force is None:
        shutil.rmtree(work, ignore_errors=True)
    else:
        command += ["--force", force]
    started = time.time()
    result = measure(command, timeline=True, stdout=subprocess.DEVNULL)
    if result["returncode"] != 0:
        raise SystemExit(f"immunoprofile run failed for {config}: exit {result['returncode']}")
    timeline = result.pop("timeline")
    # kept beside the workdir (not in the record): where within a stage memory peaked
    (folder / "timeline.json").write_text(json.dumps(timeline))
    files = Workdir(work)
    log = [json.loads(line) for line in files.stage_log.read_text().splitlines()]
    log = [e for e in log if e["started_unix"] >= started]  # this run's stages only
    record = files.ingest_record()
    cells = record.n_cells
    result["cells"] = cells
    result["samples"] = len(record.samples)
    result["stages"] = stage_rows(timeline, log, cells, result["wall_s"])
    result["outside_stages_s"] = round(result["wall_s"] - sum(e["seconds"] for e in log), 2)
    result["cells_after_qc"], result["per_cell_outputs_gib"] = per_cell_outputs(work)
    return result


def per_cell_outputs(work: Path) -> tuple[int, float]:
    """QC-passed cells, and the in-memory size of cohort.zarr's per-cell results (obs,
    obsm, obsp): what the driver may hold, against which memory growth is judged."""
    import anndata as ad

    cohort = ad.read_zarr(work / "cohort.zarr")
    size = int(cohort.obs.memory_usage(deep=True).sum())
    size += sum(int(np.asarray(v).nbytes) for v in cohort.obsm.values())
    for graph in cohort.obsp.values():
        size += graph.data.nbytes + graph.indices.nbytes + graph.indptr.nbytes
    return int(cohort.obs["qc_pass"].sum()), round(size / GIB, 3)


def run_scanpy(folder: Path, memory_cap_gib: float, timeout_s: float) -> dict[str, Any]:
    out = folder / "scanpy.json"
    command = [sys.executable, str(HERE / "scanpy_baseline.py"), "--full", "--samplesheet",
               str(folder / "data" / "samplesheet.csv")]  # fmt: skip
    with out.open("w") as fh:
        result = measure(command, memory_cap_gib=memory_cap_gib, timeout_s=timeout_s, stdout=fh)
    text = out.read_text().strip()
    if result["returncode"] == 0 and text:
        result.update(json.loads(text.splitlines()[-1]))
        result["status"] = "ok"
    else:
        result["status"] = result.get("killed") or f"exit {result['returncode']}"
    return result


def commit() -> str:
    try:
        args = ["git", "-C", str(HERE), "describe", "--always", "--dirty"]
        return subprocess.run(args, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50k,250k,1M", help=f"of {', '.join(SIZES)}")
    parser.add_argument("--root", type=Path, required=True, help="data and workdirs go here")
    parser.add_argument("--json", type=Path, required=True, help="append one line per size")
    parser.add_argument("--no-scanpy", action="store_true")
    parser.add_argument("--scanpy-memory-cap-gib", type=float, default=20.0)
    parser.add_argument("--scanpy-timeout-s", type=float, default=3600.0)
    parser.add_argument(
        "--force", metavar="STAGE",
        help="keep each size's workdir and run from STAGE on (`run --force STAGE`)",
    )  # fmt: skip
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}; expected some of {list(SIZES)}")
    run_id = datetime.now(UTC).isoformat(timespec="seconds")
    # once, before the first record is appended to the (tracked) results file, which
    # would otherwise mark every later size's commit "-dirty"
    code = commit()
    for size in sizes:
        folder = args.root / size
        folder.mkdir(parents=True, exist_ok=True)
        config = write_config(size, folder)
        record: dict[str, Any] = {
            "size": size,
            "run": run_id,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "commit": code,
            "machine": {
                "cores": os.cpu_count(),
                "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
                "python": platform.python_version(),
            },
            "simulate": simulate(config, folder),
        }
        print(f"{size}: simulated", file=sys.stderr, flush=True)
        record["pipeline"] = run_pipeline(config, folder, args.force)
        if args.force:
            record["force"] = args.force
        print(f"{size}: pipeline {record['pipeline']['wall_s']} s", file=sys.stderr, flush=True)
        if not args.no_scanpy:
            record["scanpy"] = run_scanpy(folder, args.scanpy_memory_cap_gib, args.scanpy_timeout_s)
            print(f"{size}: scanpy {record['scanpy']['status']}", file=sys.stderr, flush=True)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

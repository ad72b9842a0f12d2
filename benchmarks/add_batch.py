"""Benchmark ``immunoprofile add-batch``: new samples into an analysed cohort.

Each repeat restores the workdir as it was before the batch (removes the batch's folder
and the new samples' stores, puts back the cohort's abundance results), then runs the
command under `measure.py` (wall, CPU, peak memory over all processes) and records the
mapping's own step times from the batch's store.

    python benchmarks/add_batch.py --config benchmarks/configs/cohort_late.yaml \\
        --workdir /tmp/cohort_late_work --samplesheet /tmp/cohort_late_data/samplesheet_late.csv \\
        --repeats 3 --json benchmarks/results/add_batch.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

import anndata as ad
import pandas as pd

from pipeline.workdir import Workdir

sys.path.insert(0, str(Path(__file__).parent))
from measure import measure


def reset(workdir: Path, name: str, samples: list[str], backup: Path) -> None:
    files = Workdir(workdir)
    shutil.rmtree(files.batch(name).root, ignore_errors=True)
    for sid in samples:
        shutil.rmtree(files.sample_store(sid), ignore_errors=True)
    shutil.rmtree(files.abundance.root, ignore_errors=True)
    shutil.copytree(backup, files.abundance.root)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--samplesheet", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default="add-batch")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    name = args.samplesheet.stem
    samples = pd.read_csv(args.samplesheet)["sample_id"].astype(str).tolist()
    backup = args.workdir.parent / f".{args.workdir.name}.abundance_before_batch"
    if not backup.exists():
        if (args.workdir / "batches" / name).exists():
            msg = f"{args.workdir} already has batch {name} and no backup of its abundance"
            raise SystemExit(msg)
        shutil.copytree(args.workdir / "abundance", backup)
    command = [str(Path(sys.executable).with_name("immunoprofile")), "add-batch", args.config,
               str(args.samplesheet), "--workdir", str(args.workdir)]  # fmt: skip
    walls = []
    for i in range(args.repeats):
        reset(args.workdir, name, samples, backup)
        result = {"label": args.label, "repeat": i, **measure(command)}
        if result["returncode"] == 0:
            layer = ad.read_zarr(args.workdir / "batches" / name / "cells.zarr")
            result["n_new_cells"] = int(layer.n_obs)
            result["mapping_seconds"] = {
                k: round(float(v), 2) for k, v in layer.uns["batch"]["seconds"].items()
            }
            walls.append(float(result["wall_s"]))
        line = json.dumps(result)
        print(line, flush=True)
        if args.json:
            with args.json.open("a") as fh:
                fh.write(line + "\n")
    if walls:
        print(f"median wall {statistics.median(walls):.1f} s over {len(walls)} runs")
    return 0 if len(walls) == args.repeats else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: the whole pipeline on the single-node SLURM, the driver as a job of its own
and the Dask workers as N further jobs (the ``slurm`` cluster profile), for several N.

    python benchmarks/multinode.py --samplesheet /work/cmp/scaling/250k_132/data/samplesheet.csv \\
        --root /work/cmp/multinode --workers 1,2,4 --worker-memory 4GiB \\
        --json benchmarks/results/multinode.jsonl

Needs root: it starts SLURM with ``.ci/slurm/setup.sh``, the node declared with
max(N) + 1 CPUs (``SLURM_CI_CPUS``: one for the driver, one per worker job; more than
the machine has, so the jobs share its cores), and at the end stops it and puts the
default configuration back (setup.sh without the override, then teardown.sh);
``--no-slurm-setup`` uses a SLURM already running. Each run: a new workdir
``ROOT/<label>/work`` (label ``[PREFIX]<N>w``) with its config beside it, ``sbatch --wait
cluster/immunoprofile.sbatch CONFIG`` (1 CPU, ``--driver-memory``), the worker jobs 1 core
each with ``--worker-memory`` (SLURM's request and Dask's memory limit). The workers
import this checkout's ``pipeline`` (PYTHONPATH); the python is this one's. Every ``--interval`` s
every process on the machine is attributed to its SLURM job (``SLURM_JOB_ID`` in
/proc/PID/environ, inherited by a job's children) and resident sizes are summed per
job; the samples are cut into stages by the workdir's ``logs/stages.jsonl``. One JSON
line per run (``--json``; the samples go to ``ROOT/<label>/samples.json``) and a table.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from measure import GIB

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "qc", "preprocess", "integrate", "graph", "annotate", "abundance",
          "neighbourhoods", "expression", "predict", "report")  # fmt: skip
SLURM_CI = REPO / ".ci" / "slurm"


def slurm(script: str, cpus: int | None = None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CI_CPUS"}
    if cpus is not None:
        env["SLURM_CI_CPUS"] = str(cpus)
    subprocess.run(["bash", str(SLURM_CI / script)], check=True, env=env)


def write_config(folder: Path, samplesheet: Path, n: int, memory: str) -> Path:
    prologue = [f"export PYTHONPATH={REPO}"]  # the workers import this checkout's pipeline
    config = {
        "workdir": str(folder / "work"),
        "samplesheet": str(samplesheet),
        "cluster": {
            "profile": "slurm",
            "jobqueue": {
                "queue": "debug", "cores": 1, "processes": 1, "memory": memory,
                "min_jobs": n, "max_jobs": n, "walltime": "02:00:00",
                "local_directory": str(folder / "worker-space"),
                "log_directory": str(folder / "logs"),
                "shared_temp_directory": str(folder / "tls"),
                "job_script_prologue": prologue,
            },
        },
    }  # fmt: skip
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


_jobs: dict[tuple[int, float], str | None] = {}  # (pid, start time) -> SLURM_JOB_ID
_cpu: dict[tuple[int, float], tuple[str, float]] = {}  # -> (job, CPU seconds last seen)


def job_of(p: psutil.Process) -> str | None:
    key = (p.pid, p.create_time())
    if key not in _jobs:
        try:
            environ = Path(f"/proc/{p.pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return None
        ids = [e[len(b"SLURM_JOB_ID=") :] for e in environ if e.startswith(b"SLURM_JOB_ID=")]
        _jobs[key] = ids[0].decode() if ids else None
    return _jobs[key]


def sample() -> tuple[dict[str, int], dict[str, float]]:
    """Resident bytes per SLURM job, summed over the job's processes, and the CPU
    seconds (user + system) of all its processes so far (ended ones as last seen)."""
    rss: dict[str, int] = defaultdict(int)
    for p in psutil.process_iter():
        try:
            job = job_of(p)
            if job is not None:
                rss[job] += p.memory_info().rss
                t = p.cpu_times()
                _cpu[(p.pid, p.create_time())] = (job, t.user + t.system)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    cpu: dict[str, float] = defaultdict(float)
    for job, seconds in _cpu.values():
        cpu[job] += seconds
    return dict(rss), {j: round(c, 2) for j, c in cpu.items()}


Sample = tuple[float, dict[str, int], dict[str, float]]


def peaks(samples: list[Sample], jobs: set[str], t0: float, t1: float) -> dict[str, Any]:
    """Between t0 and t1: each of ``jobs``' peak and the peak of their sum (GiB), and each
    job's CPU seconds."""
    job_peak: dict[str, int] = defaultdict(int)
    total = 0
    inside = [s for s in samples if t0 <= s[0] <= t1]
    for _, rss, _ in inside:
        ours = {j: v for j, v in rss.items() if j in jobs}
        for job, v in ours.items():
            job_peak[job] = max(job_peak[job], v)
        total = max(total, sum(ours.values()))
    cpu: dict[str, float] = {}
    if inside:
        at_start = ([s[2] for s in samples if s[0] < t0] or [{}])[-1]
        cpu = {j: round(c - at_start.get(j, 0.0), 1) for j, c in inside[-1][2].items()}
    return {"jobs": {j: round(v / GIB, 3) for j, v in job_peak.items()},
            "all": round(total / GIB, 3), "cpu": cpu}  # fmt: skip


def run(args: argparse.Namespace, n: int) -> dict[str, Any]:
    label = f"{args.label_prefix}{n}w"
    folder = args.root / label
    if (folder / "work").exists():
        sys.exit(f"{folder / 'work'} exists: each run needs a new workdir")
    folder.mkdir(parents=True, exist_ok=True)
    config = write_config(folder, args.samplesheet.resolve(), n, args.worker_memory)
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "IMMUNOPROFILE_VENV": str(Path(sys.executable).parents[1])}  # fmt: skip
    command = ["sbatch", "--wait", "--parsable", "--export=ALL", "--cpus-per-task=1",
               f"--mem={args.driver_memory}", "--time=03:00:00", f"--chdir={folder}",
               f"--output={folder}/driver-%j.log", "--job-name=immunoprofile-driver",
               str(REPO / "cluster" / "immunoprofile.sbatch"), str(config)]  # fmt: skip
    load_start = os.getloadavg()
    start = time.time()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=folder)
    assert proc.stdout is not None
    driver = proc.stdout.readline().strip().split(";")[0]
    samples: list[Sample] = []
    while proc.poll() is None:
        samples.append((time.time(), *sample()))
        time.sleep(args.interval)
    end = time.time()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    meta = {
        "label": label, "date": datetime.fromtimestamp(start, UTC).isoformat(timespec="seconds"),
        "commit": commit, "n_worker_jobs": n, "worker_memory": args.worker_memory,
        "driver_memory": args.driver_memory, "samplesheet": str(args.samplesheet),
        "workdir": str(folder / "work"), "driver_job": driver, "start": start,
        "end": end, "returncode": proc.returncode,
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }  # fmt: skip
    (folder / "samples.json").write_text(json.dumps(samples))
    (folder / "run.json").write_text(json.dumps(meta))
    if proc.returncode != 0:
        sys.exit(f"driver job {driver} exited with {proc.returncode}: see {folder}/driver-*.log")
    return summarize(folder)


def summarize(folder: Path) -> dict[str, Any]:
    """The JSON line of the run in ``folder`` (its run.json, samples.json and stage log).
    The run's worker jobs are those whose logs dask-jobqueue wrote to its log directory
    (another job on the machine, e.g. a test's, is not counted)."""
    meta = json.loads((folder / "run.json").read_text())
    samples = [tuple(s) for s in json.loads((folder / "samples.json").read_text())]
    driver, start, end = meta["driver_job"], meta["start"], meta["end"]
    workers = sorted(
        {p.stem.removeprefix("dask-worker-") for p in (folder / "logs").glob("dask-worker-*.err")}
    )
    jobs = {driver, *workers}
    first_seen: dict[str, float] = {}
    for t, rss, _ in samples:
        for job in jobs & set(rss):
            first_seen.setdefault(job, round(t - start, 1))
    # sbatch --wait polls the job every ~32 s: the run ends with the driver job's last process
    driver_end = max((t for t, rss, _ in samples if driver in rss), default=end)
    log = [json.loads(line) for line in (folder / "work" / "logs" / "stages.jsonl").open()]
    stages = {}
    for rec in log:
        t0 = rec["started_unix"]
        p = peaks(samples, jobs, t0, t0 + rec["seconds"])
        stages[rec["stage"]] = {
            "seconds": rec["seconds"], "status": rec["status"],
            "driver_gib": p["jobs"].get(driver, 0.0),
            "worker_jobs_gib": {j: p["jobs"].get(j, 0.0) for j in workers},
            "all_jobs_gib": p["all"], "driver_cpu_s": p["cpu"].get(driver, 0.0),
            "worker_jobs_cpu_s": {j: p["cpu"].get(j, 0.0) for j in workers},
        }  # fmt: skip
    overall = peaks(samples, jobs, start, end)
    done = [st for st, s in stages.items() if s["status"] in ("done", "skipped")]
    return {
        **{k: v for k, v in meta.items() if k not in ("start", "end", "returncode")},
        "worker_jobs": workers, "jobs_first_seen_s": first_seen, "stages": stages,
        # every stage logged as done (a driver job cancelled from outside may exit 0)
        "complete": done == list(STAGES),
        "stage_seconds_sum": round(sum(s["seconds"] for s in stages.values()), 1),
        "wall_s": round(driver_end - start, 1), "sbatch_wait_s": round(end - start, 1),
        "driver_peak_gib": overall["jobs"].get(driver, 0.0),
        "worker_peaks_gib": {j: overall["jobs"].get(j, 0.0) for j in workers},
        "all_jobs_peak_gib": overall["all"], "driver_cpu_s": overall["cpu"].get(driver, 0.0),
        "worker_jobs_cpu_s": {j: overall["cpu"].get(j, 0.0) for j in workers},
        "samples": len(samples),
    }  # fmt: skip


def table(row: dict[str, Any]) -> str:
    lines = [f"{row['label']}: {row['n_worker_jobs']} worker job(s) x {row['worker_memory']}, "
             f"{row['wall_s']:.0f} s, load {row['loadavg_start'][0]} -> {row['loadavg_end'][0]}"
             f"{'' if row['complete'] else ', INCOMPLETE: not every stage ran'}",
             "| stage | s | driver job GiB | largest worker job GiB | all jobs GiB "
             "| driver CPU s | workers CPU s |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    stages = [*row["stages"].items(), ("**whole run**", {
        "seconds": row["wall_s"], "driver_gib": row["driver_peak_gib"],
        "worker_jobs_gib": row["worker_peaks_gib"], "all_jobs_gib": row["all_jobs_peak_gib"],
        "driver_cpu_s": row["driver_cpu_s"], "worker_jobs_cpu_s": row["worker_jobs_cpu_s"]})]  # fmt: skip
    for stage, s in stages:
        largest = max(s["worker_jobs_gib"].values(), default=0.0)
        lines.append(f"| {stage} | {s['seconds']:.0f} | {s['driver_gib']:.2f} | {largest:.2f} "
                     f"| {s['all_jobs_gib']:.2f} | {s['driver_cpu_s']:.0f} "
                     f"| {sum(s['worker_jobs_cpu_s'].values()):.0f} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplesheet", type=Path)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--summarize", nargs="+", metavar="LABEL",
                        help="only summarize these runs under ROOT again (their samples)")  # fmt: skip
    parser.add_argument("--workers", default="1,2,4", help="worker jobs per run, e.g. 1,2,4")
    parser.add_argument("--worker-memory", default="4GiB")
    parser.add_argument("--driver-memory", default="6G", help="the driver job's sbatch --mem")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--label-prefix", default="", help="runs are labelled PREFIX<N>w")
    parser.add_argument("--no-slurm-setup", action="store_true",
                        help="use the running SLURM; neither start nor stop it")  # fmt: skip
    args = parser.parse_args()
    if args.summarize:
        for label in args.summarize:
            row = summarize(args.root / label)
            print(table(row), flush=True)
            if args.json:
                with args.json.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
        return
    if args.samplesheet is None:
        parser.error("--samplesheet is required for a run")
    counts = [int(n) for n in args.workers.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # stop SLURM on the way out
    if not args.no_slurm_setup:
        slurm("setup.sh", cpus=max(counts) + 1)
    try:
        for n in counts:
            row = run(args, n)
            print(table(row), flush=True)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                with args.json.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
    finally:
        if not args.no_slurm_setup:
            slurm("teardown.sh")
            slurm("setup.sh")  # the default slurm.conf back, for the test suite
            slurm("teardown.sh")


if __name__ == "__main__":
    main()

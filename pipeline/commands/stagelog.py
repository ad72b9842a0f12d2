"""Per-stage progress on a terminal and a structured log line per stage in the workdir.

While a stage runs, a thread polls the Dask scheduler every ``interval`` seconds for the
tasks done and every worker's memory; on a terminal it redraws one status line. When the
stage ends (done, skipped or failed) one JSON line is appended to
``WORKDIR/logs/stages.jsonl`` (`Workdir.stage_log`): stage, status, start time (ISO and Unix), seconds, cells (cohort.zarr's
manifest), the peak memory of the busiest worker and of all workers together as the
scheduler saw them, and the driver's peak resident memory.
"""

from __future__ import annotations

import json
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from ..workdir import Workdir

GIB = 2**30


def _scheduler_counts(dask_scheduler: Any) -> tuple[int, int]:
    tasks = dask_scheduler.tasks
    done = sum(1 for ts in tasks.values() if ts.state in ("memory", "released", "forgotten"))
    return done, len(tasks)


class _Poller(threading.Thread):
    def __init__(self, client: Any, stage: str, interval: float, stream: IO[str] | None):
        super().__init__(daemon=True)
        self.client, self.stage, self.interval, self.stream = client, stage, interval, stream
        self.stop = threading.Event()
        self.peak_worker = 0
        self.peak_total = 0

    def _sample(self) -> None:
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        memory = [w.get("metrics", {}).get("memory", 0) or 0 for w in workers.values()]
        self.peak_worker = max(self.peak_worker, max(memory, default=0))
        self.peak_total = max(self.peak_total, sum(memory))
        if self.stream is not None:
            done, total = self.client.run_on_scheduler(_scheduler_counts)
            self.stream.write(
                f"\r{self.stage}: {done}/{total} tasks, {len(workers)} workers, "
                f"{sum(memory) / GIB:.2f} GiB in workers   "
            )
            self.stream.flush()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self._sample()
            except Exception:  # the cluster is going away: stop sampling, keep the stage
                return


@contextmanager
def stage_log(
    workdir: Path,
    stage: str,
    client: Any,
    *,
    interval: float = 0.5,
    progress: IO[str] | bool | None = None,
) -> Iterator[dict[str, Any]]:
    """Monitor one stage; yields a dict the caller may fill (``message``, ``status``).

    ``progress``: a stream for the status line, ``True`` for stderr, ``None`` for stderr
    when it is a terminal, ``False`` for none.
    """
    stream: IO[str] | None = None
    if progress is True or (progress is None and sys.stderr.isatty()):
        stream = sys.stderr
    elif progress is not None and not isinstance(progress, bool):
        stream = progress
    poller = _Poller(client, stage, interval, stream)
    record: dict[str, Any] = {"stage": stage, "status": "done"}
    started = datetime.now(UTC)
    start = time.perf_counter()
    poller.start()
    try:
        yield record
    except BaseException as exc:
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        poller.stop.set()
        poller.join(timeout=5)
        if stream is not None:
            stream.write("\r" + " " * 78 + "\r")
            stream.flush()
        files = Workdir(workdir)
        manifest = files.cohort_manifest()
        record.update(
            started=started.isoformat(timespec="seconds"),
            started_unix=round(started.timestamp(), 3),
            seconds=round(time.perf_counter() - start, 2),
            cells=manifest.get("n_obs") if manifest else None,
            peak_worker_memory_gib=round(poller.peak_worker / GIB, 3),
            peak_workers_total_gib=round(poller.peak_total / GIB, 3),
            driver_peak_rss_gib=round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3
            ),
        )
        path = files.stage_log
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:  # one line per stage: appends are whole lines
            f.write(json.dumps(record, default=str) + "\n")

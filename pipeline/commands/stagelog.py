"""Per-stage progress on a terminal and a structured log line per stage in the workdir.

While a stage runs, a thread polls the Dask scheduler every ``interval`` seconds for the
tasks done and every worker's memory; on a terminal (or in a notebook: tqdm.auto) a
progress bar shows the tasks finished of those submitted (`TaskCounter`: both only grow),
the elapsed time and the workers' memory. When the
stage ends (done, skipped or failed) one JSON line is appended to
``WORKDIR/logs/stages.jsonl`` (`Workdir.stage_log`): stage, status, start time (ISO and Unix), seconds, cells (cohort.zarr's
manifest), the peak memory of the busiest worker and of all workers together as the
scheduler saw them, and the driver's peak resident memory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import resource
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from distributed.diagnostics.plugin import SchedulerPlugin
from tqdm.auto import tqdm

from ..workdir import Workdir

GIB = 2**30


PLUGIN = "immunoprofile-progress"


class TaskCounter(SchedulerPlugin):
    """Counts, on the scheduler, the tasks submitted and finished since it was added:
    both only grow, whereas the scheduler's own task table forgets a computation's tasks
    when the next one starts (a counter read from it went 20/24 -> 3/24)."""

    name = PLUGIN

    def __init__(self) -> None:
        self.submitted = 0
        self.finished = 0

    def update_graph(self, scheduler: Any, *args: Any, tasks: Any = None, **kwargs: Any) -> None:
        self.submitted += len(tasks or ())

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if start == "processing" and finish in ("memory", "erred"):
            self.finished += 1


def _in_kernel() -> bool:
    """Whether this runs in a Jupyter (IPython) kernel, whose stderr is no terminal but
    shows tqdm.auto's bar (a widget with ipywidgets installed, text without)."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return getattr(shell, "kernel", None) is not None


def _counts(dask_scheduler: Any) -> tuple[int, int]:
    counter = dask_scheduler.plugins.get(PLUGIN)
    return (counter.finished, counter.submitted) if counter is not None else (0, 0)


class _Poller(threading.Thread):
    def __init__(self, client: Any, stage: str, interval: float, stream: IO[str] | None):
        super().__init__(daemon=True)
        self.client, self.stage, self.interval, self.stream = client, stage, interval, stream
        self.stop = threading.Event()
        self.peak_worker = 0
        self.peak_total = 0
        self.bar: tqdm | None = None
        if stream is not None:
            # a fresh counter per stage; an external scheduler may not import it
            with contextlib.suppress(Exception):
                client.register_plugin(TaskCounter())
            self.bar = tqdm(desc=stage, total=0, unit="task", file=stream, leave=False,
                            dynamic_ncols=True)  # fmt: skip

    def _sample(self) -> None:
        workers = self.client.scheduler_info(n_workers=-1).get("workers", {})
        memory = [w.get("metrics", {}).get("memory", 0) or 0 for w in workers.values()]
        self.peak_worker = max(self.peak_worker, max(memory, default=0))
        self.peak_total = max(self.peak_total, sum(memory))
        if self.bar is not None:
            done, total = self.client.run_on_scheduler(_counts)
            total = max(total, done, self.bar.total or 0)
            if total != self.bar.total:
                self.bar.total = total
                # tqdm.notebook sizes its widget once, from the total it was made with (0:
                # a full blue bar): keep the widget's maximum in step
                widget = getattr(self.bar, "container", None)
                if widget is not None:
                    widget.children[1].max, widget.children[1].bar_style = total, ""
            self.bar.n = max(done, self.bar.n)
            self.bar.set_postfix_str(f"{len(workers)} workers, {sum(memory) / GIB:.2f} GiB")

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self._sample()
            except Exception:  # the cluster is going away: stop sampling, keep the stage
                return

    def close(self, *, failed: bool = False) -> None:
        self.stop.set()
        self.join(timeout=5)
        if self.bar is not None:
            if not failed and self.bar.total:
                # done, though the last poll came before the last tasks (or some were
                # cancelled): tqdm.notebook would leave a red bar, as after an error
                self.bar.n = self.bar.total
            self.bar.close()
            with contextlib.suppress(Exception):
                self.client.unregister_scheduler_plugin(PLUGIN)


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
    when it is a terminal or a Jupyter kernel's (a widget in the notebook) and none on a
    pipe (CI, SLURM logs), ``False`` for none.
    """
    stream: IO[str] | None = None
    if progress is True or (progress is None and (sys.stderr.isatty() or _in_kernel())):
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
        poller.close(failed=record["status"] == "failed")
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


LOGGER = "immunoprofile"


class _RunLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.startswith(LOGGER)


@contextmanager
def run_log(workdir: Path, client: Any, title: str) -> Iterator[logging.Logger]:
    """Append to ``WORKDIR/logs/run.log`` while a command runs: a ``title`` line, what
    the command logs on the returned logger (each stage's line), Python warnings, and
    the warnings and errors of the driver, the scheduler and the workers (the workers'
    log records forwarded by distributed from their processes)."""
    path = Workdir(workdir).run_log
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RunLogFilter())
    handler.setLevel(logging.INFO)
    # distributed's loggers do not propagate to the root logger: attach to both
    targets = [logging.getLogger(), logging.getLogger("distributed")]
    for target in targets:
        target.addHandler(handler)
    logger = logging.getLogger(LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    logging.captureWarnings(True)
    forwarding = False
    with contextlib.suppress(Exception):
        client.forward_logging("distributed", level=logging.WARNING)
        forwarding = True
    logger.info(title)
    try:
        yield logger
    except BaseException as exc:
        logger.error("%s failed: %s: %s", title, type(exc).__name__, exc)
        raise
    finally:
        if forwarding:
            with contextlib.suppress(Exception):
                client.unforward_logging("distributed")
        logging.captureWarnings(False)
        logger.setLevel(level)
        for target in targets:
            target.removeHandler(handler)
        handler.close()

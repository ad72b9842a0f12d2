"""``immunoprofile run``: the registered stages in order, each skipped when current.

For every stage: before a stage that reads add-batch's layers, layers mapped onto an
earlier analysis are mapped again; a stage whose digest and files are current is
skipped; otherwise it runs. Each stage is logged (`stagelog`), the heaps of the driver
and the workers are trimmed after it (and, with ``restart_above``, a worker still above
that many bytes is restarted: what earlier stages left in a worker, imported libraries,
compiled code and heap fragments, is not carried into later stages' peaks; the objects
alive before the run are left out of those collections, `collections_skip_older_objects`), and an
unexpected failure of a stage that reads sample stores is checked against their
manifests, so that a damaged store is named.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from distributed import Client

from ..add_batch import remap_stale_batches
from ..config import RunConfig
from ..errors import ImmunoprofileError
from ..runtime import collections_skip_older_objects, release_memory, trimmed_rss
from ..stages import get_stage, is_current, run_stage, stages_from
from .stagelog import run_log, stage_log
from .validate import sample_store_problems


def run_or_skip(
    name: str, cfg: RunConfig, client: Client, *, force: bool = False
) -> tuple[str, bool]:
    """Run stage ``name`` unless it is current (or ``force``); the lines it prints, and
    whether it was skipped."""
    stage = get_stage(name)
    lines = remap_stale_batches(cfg, client) if stage.reads.batches else []
    skip = not force and not stage.always_run and is_current(cfg, name)
    if skip:
        lines.append(f"{name}: unchanged inputs and parameters, skipped")
    else:
        lines.append(run_stage(name, cfg, client))
    return "\n".join(lines), skip


def _name_corrupt_samples(cfg: RunConfig, name: str, exc: Exception) -> None:
    """After an unexpected failure of a stage that reads sample stores, check them against
    their manifests and, when some are damaged, fail with their names instead."""
    if not get_stage(name).reads.samples:
        return
    damaged = sample_store_problems(cfg.workdir)
    if damaged:
        names = ", ".join(damaged)
        detail = "; ".join(p for problems in damaged.values() for p in problems[:2])
        msg = (
            f"stage {name} failed ({type(exc).__name__}) and the store of sample(s) {names} "
            f"is damaged: {detail}. Delete those stores (or run ingest again with their "
            "inputs) and re-run; the other samples and completed stages are kept."
        )
        raise ImmunoprofileError(msg) from exc


def run_stages(
    cfg: RunConfig,
    client: Client,
    stages: list[str],
    *,
    force: str | None = None,
    restart_above: int | None = None,
) -> None:
    """Run ``stages`` in order (each skipped when current; ``force``: that stage and every
    one after it run whatever their state), printing one line each. ``restart_above``
    (bytes): between stages, restart the workers whose memory after the trim is above it
    (None: never; for a cluster the caller started, `ClusterConfig.worker_restart_bytes`)."""
    forced = {s.name for s in stages_from(force)} if force else set()
    for name in stages:  # import every stage first: a broken install fails before any work,
        get_stage(name).run_function()  # and no stage's time holds another's imports
    title = f"run: stages {', '.join(stages)}" + (f" (--force {force})" if force else "")
    with run_log(Path(cfg.workdir), client, title) as log, collections_skip_older_objects(client):
        _run_each(cfg, client, stages, forced, log, restart_above)


def release_between_stages(
    client: Client, restart_above: int | None, log: logging.Logger | None = None
) -> list[str]:
    """Trim the driver's heap and every worker's; restart the workers still above
    ``restart_above`` bytes (None: none). The restarted workers' addresses."""
    release_memory()
    carried = client.run(trimmed_rss)
    if restart_above is None:
        return []
    heavy = sorted(a for a, rss in carried.items() if rss > restart_above)
    failed = restart_workers(client, heavy)
    if log is not None and heavy:
        sizes = ", ".join(f"{a} {carried[a] / 2**30:.2f} GiB" for a in heavy)
        log.info("restarted %d worker(s) above %.2f GiB after the trim: %s%s", len(heavy),
                 restart_above / 2**30, sizes,
                 f"; did not come back: {', '.join(failed)}" if failed else "")  # fmt: skip
    return heavy


def restart_workers(client: Client, addresses: list[str]) -> list[str]:
    """Restart the worker processes at ``addresses`` (through their nannies: a new process
    each, in the same job or LocalCluster slot) and wait for them; the addresses that did
    not come back. The nannies' "Restarting worker" warnings are not shown: we asked."""
    if not addresses:
        return []
    nanny_log = logging.getLogger("distributed.nanny")
    level = nanny_log.level
    nanny_log.setLevel(logging.ERROR)
    try:
        status = client.restart_workers(addresses, raise_for_error=False)
    finally:
        nanny_log.setLevel(level)
    return sorted(a for a, s in status.items() if s != "OK")


def _run_each(
    cfg: RunConfig,
    client: Client,
    stages: list[str],
    forced: set[str],
    log: logging.Logger,
    restart_above: int | None,
) -> None:
    for name in stages:
        try:
            with stage_log(Path(cfg.workdir), name, client) as record:
                record["message"], skipped = run_or_skip(name, cfg, client, force=name in forced)
                if skipped:
                    record["status"] = "skipped"
        except ImmunoprofileError:
            raise
        except Exception as exc:  # e.g. a decoding error or KilledWorker
            _name_corrupt_samples(cfg, name, exc)
            raise
        finally:  # the next stage starts from a trimmed heap, not this one's peak
            with contextlib.suppress(Exception):
                release_between_stages(client, restart_above, log)
        print(record["message"], flush=True)
        log.info(record["message"])

"""``immunoprofile run --dry-run``: which stages a run would compute, and why.

A stage runs when it is forced (``--force``), has not run, misses outputs, or its digest
(`pipeline.stages.stage_bases`) differs from the recorded one; the reason names what
differs: its algorithm version, the keys of its settings or inputs that changed (with
the old and new values), or an earlier stage that re-runs. The ingest stage checks its
samples itself: the plan compares the samplesheet's samples with the recorded ones.
Nothing is computed and no cluster is started.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import RunConfig
from ..ingest import read_samplesheet
from ..stages import (
    element_path,
    get_stage,
    is_current,
    recorded_bases,
    recorded_digests,
    stage_bases,
    stages_from,
)
from ..workdir import IngestRecord, Workdir

MAX_KEYS = 5  # changed keys named per stage


@dataclass(frozen=True)
class StagePlan:
    stage: str
    runs: bool
    reason: str


def _changed_keys(old: Any, new: Any, prefix: str) -> list[str]:
    """Dotted keys whose values differ between two JSON values, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{path} new ({new[key]!r})")
            elif key not in new:
                out.append(f"{path} removed (was {old[key]!r})")
            else:
                out += _changed_keys(old[key], new[key], path)
        return out
    return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def _ingest_plan(cfg: RunConfig, workdir: Workdir) -> tuple[StagePlan, bool]:
    """The ingest stage's line, and whether its record will change (new or removed
    samples: every later stage re-runs)."""
    record_file = workdir.ingest_record_file
    if cfg.samplesheet is None:
        return StagePlan("ingest", True, "no samplesheet configured"), True
    wanted = [row.sample_id for row in read_samplesheet(cfg.samplesheet)]
    if not record_file.exists():
        return StagePlan("ingest", True, f"not run yet: {len(wanted)} samples to ingest"), True
    recorded = IngestRecord.from_json(record_file.read_text()).samples
    new = sorted(set(wanted) - set(recorded))
    gone = sorted(set(recorded) - set(wanted))
    if new or gone:
        parts = [f"{len(new)} new sample(s) ({', '.join(new[:5])})"] if new else []
        parts += [f"{len(gone)} removed ({', '.join(gone[:5])})"] if gone else []
        return StagePlan("ingest", True, " and ".join(parts)), True
    return (
        StagePlan(
            "ingest",
            False,
            f"checks its {len(wanted)} samples' inputs against their stores (a changed "
            "input is ingested again, and the stages after it then re-run)",
        ),
        False,
    )


def _reason(name: str, cfg: RunConfig, workdir: Workdir, earlier: str | None) -> str:
    stage = get_stage(name)
    recorded_digest = recorded_digests(workdir).get(name)
    if recorded_digest is None:
        return "not run yet"
    basis = stage_bases(cfg)[name]
    if recorded_digest == basis["digest"]:
        missing = [f for f in stage.writes.files if not element_path(workdir, f).exists()]
        return "outputs missing: " + ", ".join(missing)
    old = recorded_bases(workdir).get(name)
    if old is None:
        return "its inputs or parameters changed (recorded before the details were kept)"
    reasons = []
    if old.get("version") != basis["version"]:
        reasons.append(f"algorithm version {old.get('version')} -> {basis['version']}")
    keys = _changed_keys(old.get("inputs"), basis["inputs"], stage.config or name)
    if keys:
        more = f" and {len(keys) - MAX_KEYS} more" if len(keys) > MAX_KEYS else ""
        reasons.append("changed " + "; ".join(keys[:MAX_KEYS]) + more)
    if old.get("previous") != basis["previous"]:
        reasons.append(f"{earlier} re-runs" if earlier else "an earlier stage's outputs changed")
    return ", ".join(reasons) or "its recorded digest differs"


def plan_run(cfg: RunConfig, stages: list[str], *, force: str | None = None) -> list[StagePlan]:
    """What `run` would do with ``stages`` (in order); ``force``: the stage re-run with
    every one after it whatever their state.

    A stage that writes cohort.zarr clears every later stage's outputs when it runs, so
    all stages after it run too; a stage with its own folder changes later stages only
    through its digest, which `_reason` follows.
    """
    workdir = Workdir(cfg.workdir)
    forced = {s.name for s in stages_from(force)} if force else set()
    plans: list[StagePlan] = []
    earlier: str | None = None  # the first stage that re-runs
    cleared_by: str | None = None  # a stage whose run clears the later stages' outputs
    for name in stages:
        stage = get_stage(name)
        if name in forced:
            plan = StagePlan(name, True, f"forced (--force {force})")
        elif name == "ingest":
            plan, changes = _ingest_plan(cfg, workdir)
            cleared_by = "ingest" if changes else None
        elif cleared_by is not None:
            ran = name in recorded_digests(workdir)
            why = f"{cleared_by} re-runs (its later stages with it)" if ran else "not run yet"
            plan = StagePlan(name, True, why)
        elif stage.always_run or not is_current(cfg, name):
            plan = StagePlan(name, True, _reason(name, cfg, workdir, earlier))
        else:
            plan = StagePlan(name, False, "current (unchanged inputs, parameters and version)")
        if plan.runs:
            earlier = earlier or name
            if cleared_by is None and stage.writes.folder is None:
                cleared_by = name
        plans.append(plan)
    return plans


def _label(plan: StagePlan) -> str:
    if plan.runs:
        return "RUN  "
    return "check" if get_stage(plan.stage).always_run else "skip "


def format_plan(plans: list[StagePlan]) -> str:
    width = max(len(p.stage) for p in plans)
    lines = [f"  {p.stage:<{width}}  {_label(p)}  {p.reason}" for p in plans]
    n = sum(p.runs for p in plans)
    return "\n".join([f"run --dry-run: {n} of {len(plans)} stage(s) would run:", *lines])

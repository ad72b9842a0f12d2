"""``immunoprofile validate``: every store of a workdir against its manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ImmunoprofileError, StoreError
from .ingest import SAMPLES_DIR, STAGE_RECORD, sample_store_path
from .store import validate_store
from .workdir import BATCH_CELLS, BATCHES_DIR, batch_layers


@dataclass(frozen=True)
class ValidationReport:
    n_stores: int
    problems: list[str]


def validate_workdir(workdir: str | Path) -> ValidationReport:
    """Re-read every store in ``workdir`` and compare it with its manifest.

    Raises `StoreError` listing every problem (naming the store and the array).
    """
    workdir = Path(workdir)
    if not workdir.is_dir():
        msg = f"workdir {workdir} does not exist"
        raise ImmunoprofileError(msg)
    stores = sorted(p for p in (workdir / SAMPLES_DIR).glob("*.zarr") if not p.name.startswith("."))
    problems: list[str] = []
    record_path = workdir / STAGE_RECORD
    if record_path.exists():
        record = json.loads(record_path.read_text())
        for sample_id in record["samples"]:
            if not sample_store_path(workdir, sample_id).exists():
                problems.append(f"{sample_store_path(workdir, sample_id)}: store is missing")
    for name, manifest in batch_layers(workdir).items():
        for sample_id in manifest.get("samples", []):
            if not sample_store_path(workdir, sample_id).exists():
                problems.append(
                    f"{sample_store_path(workdir, sample_id)}: store of batch '{name}' is missing"
                )
    if not stores and not record_path.exists():
        msg = f"{workdir} holds no stores to validate (no {SAMPLES_DIR}/*.zarr)"
        raise ImmunoprofileError(msg)
    cohort = workdir / "cohort.zarr"
    if cohort.exists():
        stores.append(cohort)
    stores += sorted((workdir / BATCHES_DIR).glob(f"*/{BATCH_CELLS}"))
    for store in stores:
        problems += validate_store(store)
    if problems:
        msg = f"{len(problems)} problem(s) in {workdir}: " + "; ".join(problems)
        raise StoreError(msg, problems=problems)
    return ValidationReport(n_stores=len(stores), problems=[])


def sample_store_problems(workdir: str | Path) -> dict[str, list[str]]:
    """Sample id -> what is wrong with its store (missing, or not what its manifest
    says), for every sample of the ingest record; empty when all are intact."""
    workdir = Path(workdir)
    record_path = workdir / STAGE_RECORD
    if not record_path.exists():
        return {}
    out: dict[str, list[str]] = {}
    for sample_id in json.loads(record_path.read_text())["samples"]:
        store = sample_store_path(workdir, sample_id)
        problems = [f"{store}: store is missing"] if not store.exists() else validate_store(store)
        if problems:
            out[sample_id] = problems
    return out

"""``immunoprofile validate``: every store of a workdir against its manifest, and every
stage folder's files against the checksums in its manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImmunoprofileError, StoreError
from ..stages import STAGES, element_path
from ..store import file_sha256, validate_store
from ..workdir import StageFolder, Workdir


@dataclass(frozen=True)
class ValidationReport:
    n_stores: int
    n_folders: int
    problems: list[str]


def folder_problems(folder: StageFolder) -> list[str]:
    """What differs between a stage folder's files and its manifest's checksums."""
    try:
        manifest = json.loads(folder.manifest.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{folder.manifest}: damaged ({type(exc).__name__}: {exc})"]
    problems = []
    for name, digest in manifest.get("files", {}).items():
        path = folder.root / name
        if not path.is_file():
            problems.append(f"{path}: file is missing")
        elif file_sha256(path) != digest:
            problems.append(f"{path}: contents differ from the manifest's checksum")
    return problems


def _stage_folders(workdir: Workdir) -> list[StageFolder]:
    found = []
    for stage in STAGES:
        if stage.writes.folder is not None:
            folder = element_path(workdir, stage.writes.folder)
            if isinstance(folder, StageFolder) and folder.manifest.exists():
                found.append(folder)
    return found


def validate_workdir(path: str | Path) -> ValidationReport:
    """Re-read every store in ``workdir`` and compare it with its manifest; check every
    stage folder's files.

    Raises `StoreError` listing every problem (naming the store and the array or file).
    """
    workdir = Workdir(path)
    if not workdir.root.is_dir():
        msg = f"workdir {workdir.root} does not exist"
        raise ImmunoprofileError(msg)
    stores = sorted(p for p in workdir.samples.glob("*.zarr") if not p.name.startswith("."))
    problems: list[str] = []
    has_record = workdir.has_ingest_record()
    if has_record:
        for sample_id in workdir.ingest_record().samples:
            if not workdir.sample_store(sample_id).exists():
                problems.append(f"{workdir.sample_store(sample_id)}: store is missing")
    for name, layer in workdir.batch_layers().items():
        for sample_id in layer.samples:
            if not workdir.sample_store(sample_id).exists():
                problems.append(
                    f"{workdir.sample_store(sample_id)}: store of batch '{name}' is missing"
                )
    if not stores and not has_record:
        msg = f"{workdir.root} holds no stores to validate (no {workdir.samples.name}/*.zarr)"
        raise ImmunoprofileError(msg)
    if workdir.cohort.exists():
        stores.append(workdir.cohort)
    stores += [b.cells for b in workdir.batch_folders() if b.cells.exists()]
    for store in stores:
        problems += validate_store(store)
    folders = _stage_folders(workdir)
    for folder in folders:
        problems += folder_problems(folder)
    if problems:
        msg = f"{len(problems)} problem(s) in {workdir.root}: " + "; ".join(problems)
        raise StoreError(msg, problems=problems)
    return ValidationReport(n_stores=len(stores), n_folders=len(folders), problems=[])


def sample_store_problems(path: str | Path) -> dict[str, list[str]]:
    """Sample id -> what is wrong with its store (missing, or not what its manifest
    says), for every sample of the ingest record; empty when all are intact."""
    workdir = Workdir(path)
    if not workdir.has_ingest_record():
        return {}
    out: dict[str, list[str]] = {}
    for sample_id in workdir.ingest_record().samples:
        store = workdir.sample_store(sample_id)
        problems = [f"{store}: store is missing"] if not store.exists() else validate_store(store)
        if problems:
            out[sample_id] = problems
    return out

"""What each stage's outputs were computed from, and whether they are current.

A stage's digest is a hash of the previous stage's digest, its own inputs (its config
section, or what its declaration's ``inputs`` function returns) and its algorithm
version, so a change anywhere re-runs that stage and every stage after it. The ingest
stage's digest is the hash of ``ingest.json``. Stages that write cohort.zarr record the
chain in its manifest; a stage with a folder of its own records its digest in the
folder's manifest.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..config import RunConfig
from ..errors import ImmunoprofileError
from ..registry import STAGES, Stage, get_stage
from ..store import json_sha256
from ..workdir import StageFolder, Workdir


def element_path(workdir: Workdir, name: str) -> Any:
    """A `Workdir` attribute named in a declaration (``"annotate.markers_used"``)."""
    value: Any = workdir
    for part in name.split("."):
        value = getattr(value, part)
    return value


def _own_inputs(stage: Stage, cfg: RunConfig, workdir: Workdir) -> Any:
    function = stage.inputs_function()
    if function is not None:
        return function(cfg, workdir)
    if stage.config is None:
        return {}
    return getattr(cfg, stage.config).model_dump(mode="json")


def stage_bases(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    """Stage -> what its digest is computed from: the stage before's digest
    (``previous``), its own inputs as canonical JSON (``inputs``) and its algorithm
    ``version``. Recorded beside the digests, so that `run --dry-run` can say which
    changed."""
    workdir = Workdir(cfg.workdir)
    record = workdir.ingest_record_file
    if not record.exists():
        msg = f"{workdir.root} has no {record.name}: run the ingest stage first"
        raise ImmunoprofileError(msg)
    first, *rest = STAGES
    bases: dict[str, dict[str, Any]] = {
        first.name: {"digest": hashlib.sha256(record.read_bytes()).hexdigest()}
    }
    before = first.name
    for stage in rest:
        own = json.loads(json.dumps(_own_inputs(stage, cfg, workdir), sort_keys=True, default=str))
        basis = {"previous": bases[before]["digest"], "inputs": own, "version": stage.version}
        digest = json_sha256({before: basis["previous"], stage.name: own, "version": stage.version})
        bases[stage.name] = {**basis, "digest": digest}
        before = stage.name
    return bases


def stage_digests(cfg: RunConfig) -> dict[str, str]:
    """Stage -> the digest its outputs must have been computed with to be current."""
    return {name: basis["digest"] for name, basis in stage_bases(cfg).items()}


def recorded_digests(workdir: Workdir) -> dict[str, str]:
    """Stage -> the digest its outputs in ``workdir`` were computed with (stages whose
    outputs are there)."""
    manifest = workdir.cohort_manifest()
    done = dict(manifest.get("stages", {})) if manifest else {}
    for stage in STAGES:
        if stage.writes.folder is not None:
            folder = element_path(workdir, stage.writes.folder)
            assert isinstance(folder, StageFolder)
            digest = folder.digest()
            if digest is not None:
                done[stage.name] = digest
    return done


def recorded_bases(workdir: Workdir) -> dict[str, dict[str, Any]]:
    """Stage -> the basis (`stage_bases`) its outputs in ``workdir`` were recorded with;
    stages whose outputs predate the record are absent."""
    manifest = workdir.cohort_manifest()
    done = dict(manifest.get("bases", {})) if manifest else {}
    for stage in STAGES:
        if stage.writes.folder is not None:
            folder = element_path(workdir, stage.writes.folder)
            assert isinstance(folder, StageFolder)
            basis = folder.basis()
            if basis is not None:
                done[stage.name] = basis
    return done


def is_current(cfg: RunConfig, name: str) -> bool:
    """The stage's recorded digest equals the one computed now and the files it always
    writes exist."""
    stage = get_stage(name)
    workdir = Workdir(cfg.workdir)
    if not all(element_path(workdir, f).exists() for f in stage.writes.files):
        return False
    return recorded_digests(workdir).get(name) == stage_digests(cfg)[name]

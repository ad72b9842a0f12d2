"""Manifests of zarr stores: what was written, so that `validate` can catch any change.

A store's manifest (the root group's ``immunoprofile_manifest`` attribute, in its
``zarr.json``) records every array's shape, dtype, the SHA-256 of its decoded values and the
chunk files present at write time, plus the store's provenance.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import zarr

MANIFEST = "immunoprofile_manifest"


def json_sha256(obj: Any) -> str:
    """The SHA-256 of ``obj`` as canonical JSON (sorted keys; other types as str): the
    digests of parameters and stage inputs."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in blocks (a stage's tables can be large)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


SLAB_BYTES = 16 * 2**20  # an array is read and hashed about this much at a time
TEXT_BYTES = 64  # a string's assumed size, for slabs of text


def _digest(arr: zarr.Array | np.ndarray) -> str:
    """The SHA-256 of an array's dtype, shape and values, read in slabs of rows (so that
    no process holds a per-cell array whole to check it): the same digest as hashing the
    whole array's C-order bytes (strings and objects: their texts joined by \\x1f)."""
    shape = tuple(int(n) for n in arr.shape)
    if not shape:
        slabs = iter([np.asarray(arr[...])])
    else:
        dtype = np.dtype(arr.dtype)
        size = TEXT_BYTES if dtype.kind in "OUT" or dtype.itemsize == 0 else dtype.itemsize
        row = int(np.prod(shape[1:], dtype=np.int64)) * size
        step = max(1, SLAB_BYTES // max(1, row))
        starts = range(0, shape[0], step) if shape[0] else range(1)
        slabs = (np.asarray(arr[s : s + step]) for s in starts)
    h = hashlib.sha256()
    first = True
    for values in slabs:
        if first:  # the decoded dtype, as the whole array's would be
            h.update(f"{values.dtype.str}{shape}".encode())
        if values.dtype.kind in "OUT":
            joined = "\x1f".join(str(v) for v in values.ravel().tolist())
            h.update((("\x1f" if not first and values.size else "") + joined).encode())
        else:
            h.update(np.ascontiguousarray(values).tobytes())
        first = False
    return h.hexdigest()


def arrays_of(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    """Every array below ``group``, by its path ("obsm/X_pca", "X/data")."""
    found: dict[str, zarr.Array] = {}
    for name, node in group.members():
        key = f"{prefix}{name}"
        if isinstance(node, zarr.Array):
            found[key] = node
        else:
            found.update(arrays_of(node, key + "/"))
    return found


def _chunk_files(root: Path, key: str) -> list[str]:
    folder = root / key
    return sorted(
        str(p.relative_to(root)) for p in folder.rglob("*") if p.is_file() and p.name != "zarr.json"
    )


def describe_arrays(root: Path, *, skip: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """Shape, dtype, checksum and chunk files of every array in the store at ``root``
    (but those whose keys are in ``skip``)."""
    group = zarr.open_group(str(root), mode="r")
    out = {}
    for key, arr in sorted(arrays_of(group).items()):
        if key in skip:
            continue
        out[key] = {
            "shape": list(arr.shape),
            "dtype": str(arr.dtype),
            "sha256": _digest(arr),
            "chunks": _chunk_files(root, key),
        }
    return out


def write_manifest(
    root: Path, info: Mapping[str, Any], *, arrays: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Describe the store's arrays (or take their descriptions, ``arrays``), add ``info``
    and record it in the root attributes."""
    if arrays is None:
        arrays = describe_arrays(root)
    manifest = json.loads(json.dumps({**info, "arrays": dict(sorted(arrays.items()))}))
    zarr.open_group(str(root), mode="r+").attrs[MANIFEST] = manifest
    return manifest


def read_manifest(root: Path) -> dict[str, Any] | None:
    """The store's manifest, or None when the store or its manifest cannot be read."""
    try:
        meta = json.loads((root / "zarr.json").read_text())
    except (OSError, ValueError):
        return None
    manifest = meta.get("attributes", {}).get(MANIFEST)
    return manifest if isinstance(manifest, dict) else None


def validate_store(root: Path) -> list[str]:
    """Every way the store at ``root`` differs from its manifest; empty if none."""
    manifest = read_manifest(root)
    if manifest is None:
        return [f"{root}: no readable manifest (zarr.json or its '{MANIFEST}' attribute)"]
    problems: list[str] = []
    try:
        group = zarr.open_group(str(root), mode="r")
        present = arrays_of(group)
    except Exception as exc:
        return [f"{root}: cannot be opened as a zarr group ({type(exc).__name__}: {exc})"]
    for key, expected in manifest["arrays"].items():
        where = f"{root}: array '{key}'"
        if key not in present:
            problems.append(f"{where} is missing")
            continue
        missing = sorted(set(expected["chunks"]) - set(_chunk_files(root, key)))
        if missing:
            problems.append(f"{where}: chunk file(s) {', '.join(missing)} missing")
        arr = present[key]
        if list(arr.shape) != expected["shape"] or str(arr.dtype) != expected["dtype"]:
            problems.append(
                f"{where} has shape {list(arr.shape)} and dtype {arr.dtype}, the manifest "
                f"says {expected['shape']} and {expected['dtype']}"
            )
            continue
        try:
            digest = _digest(arr)
        except Exception as exc:
            problems.append(f"{where} cannot be read (corrupt or truncated chunk: {exc})")
            continue
        if digest != expected["sha256"]:
            problems.append(f"{where} does not match its manifest checksum (changed or lost data)")
    for key in sorted(set(present) - set(manifest["arrays"])):
        problems.append(f"{root}: array '{key}' is not in the manifest")
    return problems

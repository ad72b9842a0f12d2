"""Update an AnnData-Zarr store by adding and removing elements, copy-on-write.

A stage that adds a few elements to a large store (an embedding, a graph, some obs
columns) should not read the whole store and write it again: that holds every per-cell
result in memory at once and grows with the cohort. Instead the store is copied under a
temporary name with its chunk files hard-linked (metadata files copied), the changed
elements are removed from the copy and the new ones written, the manifest is brought up
to date (unchanged arrays keep their entries) and the copy is renamed into place. The
original is never opened for writing: zarr writes a file by renaming a new one onto its
path, and every element written is first removed from the copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import anndata as ad
import dask.array as da
import pandas as pd
import zarr

from ._atomic import atomic_path
from ._lazy import LazyCSR, write_lazy_array, write_lazy_csr
from ._manifest import MANIFEST, describe_arrays, read_manifest, write_manifest

METADATA = "zarr.json"
SLOTS = ("obsm", "varm", "obsp", "varp", "layers", "uns")


def obs_columns(root: Path) -> list[str]:
    """The obs columns of the AnnData-Zarr store at ``root``, in order, read from its
    metadata alone."""
    order = zarr.open_group(str(root), mode="r")["obs"].attrs.get("column-order", [])
    if not isinstance(order, list):
        msg = f"{root}/obs has a malformed 'column-order' attribute: expected a list of names"
        raise ValueError(msg)
    return [str(c) for c in order]


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a chunk file (copy when the file system cannot); copy metadata files,
    which are rewritten in place by attribute updates."""
    if Path(src).name != METADATA:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _remove(root: Path, key: str) -> None:
    node = root / key
    if node.is_dir():
        shutil.rmtree(node)
    elif node.exists():
        node.unlink()


def _check(root: Path, remove: Iterable[str], obs: pd.DataFrame | None,
           elems: Mapping[str, Any]) -> None:  # fmt: skip
    for key in [*remove, *elems]:
        slot, _, name = key.partition("/")
        if key != "var" and (slot not in (*SLOTS, "obs") or not name or "/" in name):
            msg = (
                f"cannot update {key!r} in {root}: expected 'var' or '<slot>/<name>' "
                f"with slot one of {', '.join(('obs', *SLOTS))}"
            )
            raise ValueError(msg)
    if obs is not None and "_index" in obs.columns:
        msg = f"obs column '_index' cannot be written to {root}: anndata reserves that name"
        raise ValueError(msg)


def update_anndata_store(
    target: Path,
    info: Mapping[str, Any],
    *,
    remove: Iterable[str] = (),
    obs: pd.DataFrame | None = None,
    elems: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Remove the elements ``remove`` from the store at ``target``, add the obs columns of
    ``obs`` (one row per cell, in the store's order) and the elements ``elems``, and
    record the manifest ``info``, atomically.

    Keys are ``"<slot>/<name>"`` (slot ``obs``, ``obsm``, ``varm``, ``obsp``, ``varp``,
    ``layers`` or ``uns``) or ``"var"`` (the whole var table). An element that is written
    replaces the one stored under its key. Removing a key that is not there is no error.
    A Dask array among ``elems`` is computed and written chunk by chunk by the tasks
    (`write_lazy_array`; on the cluster when a distributed client is the default), and
    so is a `LazyCSR`'s (`write_lazy_csr`).
    """
    elems = dict(elems or {})
    remove = list(remove)
    manifest = read_manifest(target)
    if manifest is None:
        msg = f"{target} has no readable manifest: it cannot be updated (write it whole)"
        raise ValueError(msg)
    _check(target, remove, obs, elems)
    n_obs = int(manifest["n_obs"])
    if obs is not None and len(obs) != n_obs:
        msg = f"{len(obs)} rows of obs columns for {target}, which has {n_obs} cells"
        raise ValueError(msg)
    new_columns = list(obs.columns) if obs is not None else []
    gone = [*remove, *elems, *(f"obs/{c}" for c in new_columns)]
    with atomic_path(target) as tmp:
        shutil.copytree(target, tmp, copy_function=_link_or_copy)
        for key in gone:
            _remove(tmp, key)
        group = zarr.open_group(str(tmp), mode="r+", zarr_format=3)
        obs_group = group["obs"]
        assert isinstance(obs_group, zarr.Group)
        dropped = {k.partition("/")[2] for k in gone if k.startswith("obs/")}
        order = [c for c in obs_columns(tmp) if c not in dropped]
        with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=False):
            for name in new_columns:
                assert obs is not None
                ad.io.write_elem(obs_group, name, obs[name]._values)
            for key, value in elems.items():
                slot, _, name = key.partition("/")
                if not name:
                    ad.io.write_elem(group, slot, value)
                    continue
                parent = group.get(slot)
                if not isinstance(parent, zarr.Group):
                    ad.io.write_elem(group, slot, {})
                    parent = group[slot]
                assert isinstance(parent, zarr.Group)
                if isinstance(value, da.Array):
                    write_lazy_array(parent, name, value)
                elif isinstance(value, LazyCSR):
                    write_lazy_csr(parent, name, value)
                else:
                    ad.io.write_elem(parent, name, value)
        obs_group.attrs["column-order"] = [*order, *new_columns]
        del group.attrs[MANIFEST]
        kept = {
            k: v
            for k, v in manifest["arrays"].items()
            if not any(k == g or k.startswith(g + "/") for g in gone)
        }
        new = describe_arrays(tmp, skip=set(kept))
        info_ = {k: v for k, v in info.items() if k != "arrays"}
        result = write_manifest(tmp, info_, arrays={**kept, **new})
    return result

"""What a stage's run function gets: its config, the workdir, the cluster, and the reads
and writes its declaration allows.

Reads and writes of ``cohort.zarr`` go through the context, which checks them against
the stage's declaration (so the registry cannot drift from the code: a stage that reads
an element it does not declare fails its tests) and turns a missing element into an
error naming the stage that writes it. A stage that writes clears its own previous
outputs and every later stage's (they were computed from what it replaces), and records
the chain of digests it was computed from.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import dask
import dask.array as da
import numpy as np
import pandas as pd
import zarr

from .. import __version__
from ..cohort import CellCounts, cohort_var, open_cohort, open_counts
from ..config import RunConfig
from ..errors import ImmunoprofileError
from ..registry import STAGES, Stage, get_stage, matches, stages_from, stages_until, writer_of
from ..results import read_obs
from ..store import (
    atomic_path,
    file_sha256,
    obs_columns,
    read_array_rows,
    read_manifest,
    update_anndata_store,
    write_anndata_store,
    write_lazy_anndata_store,
)
from ..workdir import StageFolder, Workdir
from ._digests import element_path, stage_bases, stage_digests

if TYPE_CHECKING:
    from distributed import Client


def _n_obs(store: Path) -> int:
    manifest = read_manifest(store)
    if manifest is None:
        msg = f"{store} has no readable manifest: run `immunoprofile validate` on the workdir"
        raise ImmunoprofileError(msg)
    return int(manifest["n_obs"])


def needs(element: str) -> str:
    """What to run so that cohort element ``element`` exists."""
    writer = writer_of(element)
    return f"run the {writer.name} stage first" if writer else "it is not written by any stage"


@dataclass(frozen=True)
class StageContext:
    stage: Stage
    cfg: RunConfig
    workdir: Workdir
    client: Client | None = None

    @property
    def cluster(self) -> Client:
        """The Dask client (stages declared with ``cluster=True`` get one)."""
        if self.client is None:
            msg = f"stage {self.stage.name} needs a Dask client"
            raise RuntimeError(msg)
        return self.client

    def digest(self) -> str:
        return stage_digests(self.cfg)[self.stage.name]

    # ---- reads ----------------------------------------------------------------------

    def _declared(self, element: str) -> None:
        if not matches(element, self.stage.reads.cohort):
            msg = (
                f"stage {self.stage.name} reads cohort element {element!r}, which its "
                "declaration in pipeline/registry.py does not list"
            )
            raise RuntimeError(msg)

    def _group(self) -> zarr.Group:
        path = self.workdir.cohort
        if not path.exists():
            msg = f"{path} does not exist: {needs('obs')}"
            raise ImmunoprofileError(msg)
        return zarr.open_group(str(path), mode="r")

    def _stores(self, batches: bool) -> list[Path]:
        """cohort.zarr, and with ``batches`` every batch layer's store after it."""
        if not batches:
            return [self.workdir.cohort]
        if not self.stage.reads.batches:
            msg = f"stage {self.stage.name} reads batch layers but does not declare it"
            raise RuntimeError(msg)
        return self.workdir.result_stores()

    def has(self, element: str) -> bool:
        self._declared(element)
        return element in self._group()

    def read_obs(self, columns: Sequence[str], *, batches: bool = False) -> pd.DataFrame:
        """Obs columns of cohort.zarr (with ``batches``: then of every batch layer), in
        the stores' order, numbered 0, 1, ... (the cell names are not read)."""
        for c in columns:
            self._declared(f"obs/{c}")
        stores = self._stores(batches)
        missing = [c for c in columns if c not in self.obs_columns()]
        if missing:
            msg = f"{self.workdir.cohort} obs lacks {missing}: {needs(f'obs/{missing[0]}')}"
            raise ImmunoprofileError(msg)
        return read_obs(stores, columns, index=False)

    def _obsm_parts(self, key: str, batches: bool, missing_as_nan: bool) -> list[Any]:
        """Per store, its obsm ``key`` (a zarr array) or, for a batch layer without it
        and ``missing_as_nan``, the number of its cells (NaN rows)."""
        self._declared(f"obsm/{key}")
        parts: list[Any] = []
        for store in self._stores(batches):
            node = zarr.open_group(str(store), mode="r").get(f"obsm/{key}")
            if isinstance(node, zarr.Array):
                parts.append(node)
            elif missing_as_nan and parts:
                parts.append(_n_obs(store))
            else:
                msg = f"{store} has no obsm/{key}: {needs(f'obsm/{key}')}"
                raise ImmunoprofileError(msg)
        return parts

    def read_obsm(
        self, key: str, *, batches: bool = False, missing_as_nan: bool = False
    ) -> np.ndarray:
        """An obsm array of cohort.zarr (with ``batches``: stacked with every layer's).
        ``missing_as_nan``: a batch layer without it (written by an earlier version)
        gives NaN rows instead of an error; cohort.zarr must have it."""
        parts = self._obsm_parts(key, batches, missing_as_nan)
        width = parts[0].shape[1]
        return np.vstack([
            np.asarray(p[...]) if isinstance(p, zarr.Array)
            else np.full((p, width), np.nan, dtype=np.float32)
            for p in parts
        ])  # fmt: skip

    def lazy_obsm(
        self, key: str, *, batches: bool = False, missing_as_nan: bool = False
    ) -> da.Array:
        """`read_obsm` as a Dask array, read by the tasks that use it (in the stored
        chunks)."""
        parts = self._obsm_parts(key, batches, missing_as_nan)
        first = parts[0]
        return da.concatenate([
            da.from_zarr(p) if isinstance(p, zarr.Array)
            else da.full((p, first.shape[1]), np.nan, dtype=np.float32, chunks=first.chunks)
            for p in parts
        ])  # fmt: skip

    def obs_columns(self) -> list[str]:
        self._group()
        return obs_columns(self.workdir.cohort)

    def array(self, element: str) -> zarr.Array:
        """A cohort.zarr array as stored (for reading some rows only)."""
        self._declared(element)
        node = self._group().get(element)
        if not isinstance(node, zarr.Array):
            msg = f"{self.workdir.cohort} has no array {element}: {needs(element)}"
            raise ImmunoprofileError(msg)
        return node

    def read_rows(self, element: str, rows: np.ndarray) -> np.ndarray:
        """Some rows of a cohort.zarr array, a chunk of rows at a time (zarr alone
        decodes every chunk the rows touch at once: the whole array, for rows spread
        over the cohort)."""
        return read_array_rows(self.array(element), rows)

    def read_elem(self, element: str) -> Any:
        """A cohort.zarr element (a frame, array, sparse matrix or mapping) in memory."""
        self._declared(element)
        node = self._group().get(element)
        if node is None:
            msg = f"{self.workdir.cohort} has no {element}: {needs(element)}"
            raise ImmunoprofileError(msg)
        return ad.io.read_elem(node)

    def _check_samples(self) -> None:
        if not self.stage.reads.samples:
            msg = f"stage {self.stage.name} reads the sample stores but does not declare it"
            raise RuntimeError(msg)

    def sample_stores(self, *, batches: bool = False) -> tuple[dict[str, Path], pd.DataFrame]:
        """Every sample's store in `read_obs`'s order (with ``batches``, the batch layers'
        samples after the cohort's) and the cohort's genes (var), without opening the
        counts: for stages whose tasks read whole stores (no per-cell arrays here)."""
        self._check_samples()
        record = self.workdir.ingest_record()
        samples = list(record.samples)
        if batches:
            self._stores(batches)  # the stage declares that it reads the batch layers
            for layer in self.workdir.batch_layers().values():
                samples += layer.samples
        return {s: self.workdir.sample_store(s) for s in samples}, cohort_var(record)

    def open_cohort(self) -> ad.AnnData:
        """The lazy cohort view (`pipeline.cohort.open_cohort`) in the configured chunks."""
        self._check_samples()
        return open_cohort(self.workdir, chunk_cells=self.cfg.ingest.chunk_cells)

    def open_counts(self) -> CellCounts:
        """The counts without the cells' metadata (`pipeline.cohort.open_counts`)."""
        self._check_samples()
        return open_counts(self.workdir, chunk_cells=self.cfg.ingest.chunk_cells)

    # ---- writes ---------------------------------------------------------------------

    def _check_writes(self, elements: Sequence[str]) -> None:
        wrong = [e for e in elements if not matches(e, self.stage.writes.cohort)]
        if wrong:
            msg = (
                f"stage {self.stage.name} writes {wrong}, which its declaration in "
                "pipeline/registry.py does not list"
            )
            raise RuntimeError(msg)

    def _cohort_info(self, n_obs: int, n_vars: int) -> dict[str, Any]:
        bases = stage_bases(self.cfg)
        recorded = [s.name for s in stages_until(self.stage.name) if s.writes.folder is None]
        return {
            "kind": "cohort",
            "immunoprofile_version": __version__,
            "stages": {s: bases[s]["digest"] for s in recorded},
            "bases": {s: bases[s] for s in recorded},
            "n_obs": n_obs,
            "n_vars": n_vars,
        }

    def write_cohort(self, adata: ad.AnnData) -> None:
        """Write cohort.zarr whole (the first stage that writes it)."""
        elements = ["obs", "var", *(f"{slot}/{k}" for slot in ("obsm", "varm", "obsp", "uns")
                                   for k in getattr(adata, slot))]  # fmt: skip
        self._check_writes(elements)
        info = self._cohort_info(int(adata.n_obs), int(adata.n_vars))
        write_anndata_store(self.workdir.cohort, adata, info)
        self._clear_later_folders()

    def write_cohort_lazy(
        self,
        *,
        names: Any,
        obs: dict[str, Any],
        var: pd.DataFrame,
        varm: dict[str, np.ndarray],
        uns: dict[str, Any],
    ) -> None:
        """Write cohort.zarr whole, its per-cell obs written by the tasks that compute it
        (`pipeline.store.write_lazy_anndata_store`: ``names`` and ``obs`` are Dask arrays
        or lazy categoricals), so that the driver never holds them."""
        elements = ["obs", "var", *(f"varm/{k}" for k in varm), *(f"uns/{k}" for k in uns)]
        self._check_writes(elements)
        info = self._cohort_info(int(names.shape[0]), len(var))
        write_lazy_anndata_store(self.workdir.cohort, info, names=names, obs=obs, var=var,
                                 varm=varm, uns=uns)  # fmt: skip
        self._clear_later_folders()

    def update_cohort(
        self, *, obs: pd.DataFrame | None = None, elems: dict[str, Any] | None = None
    ) -> None:
        """Replace this stage's outputs in cohort.zarr, clearing every later stage's,
        without reading the rest: obs columns ``obs`` and elements ``elems`` (keys
        ``"<slot>/<name>"`` or ``"var"``; see `pipeline.store.update_anndata_store`)."""
        elems = dict(elems or {})
        columns = list(obs.columns) if obs is not None else []
        self._check_writes([*elems, *(f"obs/{c}" for c in columns)])
        path = self.workdir.cohort
        manifest = read_manifest(path)
        if manifest is None:
            msg = f"{path} has no readable manifest: run the qc stage first"
            raise ImmunoprofileError(msg)
        stored = obs_columns(path)
        remove: list[str] = []
        for later in stages_from(self.stage.name):
            for pattern in later.writes.cohort:
                if pattern in ("obs", "var"):
                    continue  # whole frames are replaced, never removed
                if pattern.startswith("obs/"):
                    remove += [f"obs/{c}" for c in stored if matches(f"obs/{c}", (pattern,))]
                else:
                    remove.append(pattern)
        info = self._cohort_info(int(manifest["n_obs"]), int(manifest["n_vars"]))
        update_anndata_store(path, info, remove=remove, obs=obs, elems=elems)
        self._clear_later_folders()

    def _clear_later_folders(self) -> None:
        # their outputs were computed from what this stage just replaced
        for later in stages_from(self.stage.name)[1:]:
            if later.writes.folder is not None:
                folder = element_path(self.workdir, later.writes.folder)
                if folder.root.exists():
                    shutil.rmtree(folder.root)

    @contextmanager
    def stage_folder(self) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Build the stage's folder under a temporary name: yields the folder's files
        (rooted at the temporary folder) and the manifest's extra entries to fill; on
        success the manifest (kind, version, digest, those entries, every file's
        SHA-256) is added and the folder renamed into place."""
        name = self.stage.writes.folder
        if name is None:
            msg = f"stage {self.stage.name} declares no folder of its own"
            raise RuntimeError(msg)
        target = element_path(self.workdir, name)
        assert isinstance(target, StageFolder)
        basis = stage_bases(self.cfg)[self.stage.name]
        digest = basis["digest"]
        with atomic_path(target.root) as tmp:
            tmp.mkdir(parents=True)
            extra: dict[str, Any] = {}
            yield type(target)(tmp), extra
            files = sorted(p for p in tmp.rglob("*") if p.is_file())
            manifest = {
                "kind": self.stage.name,
                "immunoprofile_version": __version__,
                "digest": digest,
                "basis": basis,
                **extra,
                "files": {str(p.relative_to(tmp)): file_sha256(p) for p in files},
            }
            (tmp / target.manifest.name).write_text(json.dumps(manifest, indent=2))


def run_stage(name: str, cfg: RunConfig, client: Client | None = None) -> str:
    """Run one stage (whether or not it is current); its one-line summary."""
    stage = get_stage(name)
    if stage.cluster and client is None:
        msg = f"stage {name} computes on a Dask cluster: pass a client"
        raise ValueError(msg)
    context = StageContext(stage, cfg, Workdir(cfg.workdir), client if stage.cluster else None)
    if client is None or not stage.cluster:
        return str(stage.run_function()(context))
    # every Dask computation of the stage (lazy writes, persisted blocks) on its cluster,
    # whichever client was created last in this process
    with client.as_current(), dask.config.set(scheduler=client):
        return str(stage.run_function()(context))


__all__ = ["STAGES", "StageContext", "needs", "run_stage"]

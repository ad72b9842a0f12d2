"""Reading per-cell results: ``cohort.zarr`` and the batch layers added by add-batch.

``cohort.zarr`` holds the per-cell results of the cohort as the stages computed them;
each batch added later has its own ``batches/<name>/cells.zarr`` with its cells' results
(the same obs columns and obsm keys, plus each new cell's nearest cells of
``cohort.zarr``). Nothing in ``cohort.zarr`` is rewritten when a batch is added, so the
readers here put the layers together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr

from .errors import ImmunoprofileError
from .workdir import Workdir

NEIGHBORS = "reference_neighbors"  # obsm of a batch: rows of cohort.zarr, cells x k
NEIGHBOR_DISTANCES = "reference_distances"
NEIGHBOR_WEIGHTS = "reference_weights"  # umap membership strengths of those edges
LEIDEN_PREFIX = "leiden_"


def leiden_key(resolution: float) -> str:
    """The obs column of the Leiden clusters at ``resolution`` (``leiden_0.5``)."""
    return f"{LEIDEN_PREFIX}{resolution:g}"


def leiden_columns(columns: Iterable[object]) -> list[str]:
    """The Leiden columns among ``columns``, coarsest resolution first."""
    found = [str(c) for c in columns if str(c).startswith(LEIDEN_PREFIX)]
    return sorted(found, key=lambda c: float(c.removeprefix(LEIDEN_PREFIX)))


def read_obs_columns(
    path: Path, columns: Sequence[str], *, needs: str, index: bool = True
) -> pd.DataFrame:
    """Some obs columns of a stored AnnData, without reading the rest; ``needs`` says
    what writes them (for the error). ``index`` False: a RangeIndex instead of the cell
    names (a million names take about a second to read)."""
    if not path.exists():
        msg = f"{path} does not exist: {needs}"
        raise ImmunoprofileError(msg)
    group = zarr.open_group(str(path), mode="r")
    obs = group["obs"]
    assert isinstance(obs, zarr.Group)
    missing = [c for c in columns if c not in obs]
    if missing:
        msg = f"{path} obs lacks {missing}: {needs}"
        raise ImmunoprofileError(msg)
    stored = obs[str(obs.attrs["_index"])]
    assert isinstance(stored, zarr.Array)
    names = ad.io.read_elem(stored) if index else pd.RangeIndex(stored.shape[0])
    return pd.DataFrame({c: ad.io.read_elem(obs[c]) for c in columns}, index=names)


def read_obs(
    stores: Sequence[Path],
    columns: Sequence[str],
    *,
    needs: str = "run the stages first",
    index: bool = True,
) -> pd.DataFrame:
    """The obs ``columns`` of every cell of ``stores`` (cohort.zarr, then batch layers);
    ``index`` False: numbered 0, 1, ... over all stores instead of the cell names."""
    frames = [read_obs_columns(p, columns, needs=needs, index=index) for p in stores]
    out = concat_obs(frames)
    return out if index else out.reset_index(drop=True)


def cohort_obs(workdir: str | Path | Workdir, columns: Sequence[str]) -> pd.DataFrame:
    """The obs ``columns`` of every cell: cohort.zarr's, then each added batch's."""
    return read_obs(Workdir(workdir).result_stores(), columns)


def concat_obs(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Rows of all frames; a column categorical in the first stays categorical, with the
    union of the frames' categories (missing values stay missing)."""
    out = pd.concat(frames)
    for col in frames[0].columns:
        if isinstance(frames[0][col].dtype, pd.CategoricalDtype):
            cats: dict[object, None] = {}
            for f in frames:
                values = (
                    f[col].cat.categories if col in f and hasattr(f[col], "cat") else f.get(col, [])
                )
                cats.update(dict.fromkeys(pd.Index(values).dropna()))
            out[col] = pd.Categorical(out[col], categories=list(cats))
    return out


def open_results(workdir: str | Path | Workdir) -> ad.AnnData:
    """All per-cell results -- cohort.zarr's cells, then each added batch's -- as one
    in-memory AnnData (no counts): obs, the embeddings in every layer, and the kNN graph
    with the added cells' edges to their nearest cohort cells (both directions).
    """
    workdir = Workdir(workdir)
    stores = workdir.result_stores()
    base = ad.read_zarr(stores[0])
    if len(stores) == 1:
        return base
    layers = [ad.read_zarr(p) for p in stores[1:]]
    n_base = base.n_obs
    keys = [k for k in base.obsm if all(k in layer.obsm for layer in layers)]
    out = ad.AnnData(
        obs=concat_obs([base.obs, *(layer.obs for layer in layers)]),
        obsm={k: np.vstack([base.obsm[k], *(layer.obsm[k] for layer in layers)]) for k in keys},
        uns=dict(base.uns),
    )
    out.uns["batches"] = {
        name: dict(layer.uns.get("batch", {}))
        for name, layer in zip(workdir.batch_layers(), layers, strict=True)
    }
    if {"distances", "connectivities"} <= set(base.obsp):
        for key, values in (
            ("distances", NEIGHBOR_DISTANCES),
            ("connectivities", NEIGHBOR_WEIGHTS),
        ):
            out.obsp[key] = _joined_graph(base.obsp[key], layers, values, n_base)
    return out


def _joined_graph(
    graph: sp.spmatrix, layers: list[ad.AnnData], values: str, n_base: int
) -> sp.csr_matrix:
    n = n_base + sum(layer.n_obs for layer in layers)
    rows, cols, vals = [], [], []
    start = n_base
    for layer in layers:
        idx = np.asarray(layer.obsm[NEIGHBORS])
        r = np.repeat(np.arange(start, start + layer.n_obs), idx.shape[1])
        ok = idx.ravel() >= 0
        rows.append(r[ok])
        cols.append(idx.ravel()[ok])
        vals.append(np.asarray(layer.obsm[values]).ravel()[ok])
        start += layer.n_obs
    r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    added = sp.csr_matrix((v, (r, c)), shape=(n, n))
    base = sp.csr_matrix(graph)
    base = sp.csr_matrix(
        (base.data, base.indices, np.r_[base.indptr, np.full(n - n_base, base.indptr[-1])]),
        shape=(n, n),
    )
    return sp.csr_matrix(base + added + added.T)

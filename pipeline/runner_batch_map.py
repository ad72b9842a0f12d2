"""Mapping a batch's cells onto an analysed cohort (add-batch's computation).

`read_reference` reads what the mapping needs from cohort.zarr (per-cell outputs of the
cohort and its fitted models, not its counts); `map_cells` computes the new cells'
results: the qc stage's rules per sample, PCs with the cohort's centre and loadings,
Harmony by Symphony-style mapping onto the cohort's clusters, the nearest cohort cells
(exact) for graph edges, Leiden clusters and UMAP positions, then labels under the
annotate stage's fitted models with a consensus among the new cells' own neighbours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from distributed import Client

from .annotate import load_markers
from .annotate._query import annotate_query
from .batches import NEIGHBOR_DISTANCES, NEIGHBOR_WEIGHTS, NEIGHBORS
from .cohort import open_cohort
from .config import RunConfig
from .errors import ImmunoprofileError
from .graph import knn_graphs, nearest_neighbors
from .graph._query import place_query, query_neighbors, vote_clusters
from .ingest import SampleRow
from .integrate import stratified_sample
from .integrate._mapping import map_to_reference
from .integrate._scvi_stage import encode_block
from .labels import B_SUBSETS, LINEAGES, UNASSIGNED
from .preprocess._kernels import project
from .runner import SCVI_MODEL, qc_cells
from .workdir import COHORT_STORE

REFERENCE_SCALE_CELLS = 2000  # cohort cells whose own neighbour distances set the scale


@dataclass(frozen=True)
class Reference:
    """What mapping reads from cohort.zarr (per-cell outputs and the fitted models)."""

    var: pd.DataFrame
    obs: pd.DataFrame  # sample_id, patient_id, response, qc_pass, leiden_*
    loadings: np.ndarray  # HVGs x components
    hvg: np.ndarray  # positions of the HVGs among the genes
    centre: np.ndarray  # the HVGs' mean log-normalized value
    harmony: dict[str, Any] | None
    embedding: np.ndarray  # the graph's embedding, kept cells only
    kept: np.ndarray  # cohort rows of the kept cells
    umap: np.ndarray  # kept cells
    annotate: dict[str, Any]


def _read(group: zarr.Group, key: str) -> Any:
    return ad.io.read_elem(group[key])


def _array(group: zarr.Group, key: str) -> np.ndarray:
    return np.asarray(ad.io.read_elem(group[key]))


def read_reference(cfg: RunConfig) -> Reference:
    path = Path(cfg.workdir) / COHORT_STORE
    group = zarr.open_group(str(path), mode="r")
    var = _read(group, "var")
    if "pca_mean" not in var:
        msg = f"{path} has no PCA centre (var 'pca_mean'): re-run the preprocess stage"
        raise ImmunoprofileError(msg)
    hvg = np.flatnonzero(var["highly_variable"].to_numpy())
    obs_group = group["obs"]
    assert isinstance(obs_group, zarr.Group)
    leiden = sorted(
        (str(c) for c in obs_group if str(c).startswith("leiden_")),
        key=lambda c: float(c.removeprefix("leiden_")),
    )  # a store lists in any order
    columns = ["sample_id", "patient_id", "response", "qc_pass", *leiden]
    obs = pd.DataFrame({c: _read(group, f"obs/{c}") for c in columns})
    kept = np.flatnonzero(obs["qc_pass"].to_numpy(dtype=bool))
    integrate = _read(group, "uns/integrate")
    return Reference(
        var=var,
        obs=obs,
        loadings=np.asarray(_read(group, "varm/PCs"))[hvg],
        hvg=hvg,
        centre=var["pca_mean"].to_numpy()[hvg],
        harmony=integrate.get("harmony"),
        embedding=_array(group, f"obsm/{cfg.graph.use_rep}")[kept],
        kept=kept,
        umap=_array(group, "obsm/X_umap")[kept],
        annotate=_read(group, "uns/annotate"),
    )


def _pcs(
    cfg: RunConfig,
    client: Client,
    cells: ad.AnnData,
    keep: np.ndarray,
    totals: np.ndarray,
    ref: Reference,
) -> np.ndarray:
    x = cells.X
    bounds = np.concatenate([[0], np.cumsum(x.chunks[0])])
    comps = client.scatter(ref.loadings, broadcast=True)
    parts = [
        dask.delayed(project)(
            b, keep[s:e], ref.hvg, totals[s:e], cfg.preprocess.target_sum, ref.centre, comps
        )
        for b, s, e in zip(x.to_delayed().ravel(), bounds[:-1], bounds[1:], strict=True)
    ]
    return np.vstack(client.compute(parts, sync=True))


def _scvi(
    cfg: RunConfig, client: Client, cells: ad.AnnData, keep: np.ndarray, ref: Reference
) -> np.ndarray:
    """The new cells' scVI latent means under the cohort's saved model (no retraining)."""
    model_dir = Path(cfg.workdir) / SCVI_MODEL
    if not (model_dir / "model.pt").exists():
        msg = f"{model_dir} has no scVI model: re-run the integrate stage"
        raise ImmunoprofileError(msg)
    x = cells.X
    bounds = np.concatenate([[0], np.cumsum(x.chunks[0])])
    batch = cells.obs[cfg.integrate.batch_key].astype(str).to_numpy()
    model = client.scatter(model_dir, broadcast=True)
    parts = [
        dask.delayed(encode_block)(b, keep[lo:hi], batch[lo:hi], ref.hvg, model)
        for b, lo, hi in zip(x.to_delayed().ravel(), bounds[:-1], bounds[1:], strict=True)
    ]
    out = np.full((keep.size, cfg.integrate.scvi_n_latent), np.nan, dtype=np.float32)
    for part, lo, hi in zip(client.compute(parts, sync=True), bounds[:-1], bounds[1:], strict=True):
        if part.shape[1]:
            out[lo:hi] = part
    return out


def _reference_scale(ref: Reference, k: int, seed: int) -> float:
    """The median over cohort cells of their mean distance to their k nearest others."""
    some = stratified_sample(ref.obs["sample_id"].to_numpy()[ref.kept], REFERENCE_SCALE_CELLS, seed)
    nn = query_neighbors(ref.embedding, ref.embedding[some], k + 1)
    return float(np.median(nn.distances[:, 1:].mean(axis=1)))


def map_cells(
    cfg: RunConfig, client: Client, rows: list[SampleRow], ref: Reference, seed_offset: int
) -> tuple[ad.AnnData, pd.DataFrame, dict[str, float]]:
    """The new samples' per-cell results, their QC summary and the seconds per step."""
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    workdir = Path(cfg.workdir)
    cells = open_cohort(
        workdir, chunk_cells=cfg.ingest.chunk_cells, samples=[r.sample_id for r in rows]
    )
    qc = qc_cells(cfg, client, cells, seed_offset=seed_offset)
    obs = cells.obs.join(qc.obs)
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    totals = obs["total_counts"].to_numpy(dtype=np.float64)
    seconds["qc"] = time.perf_counter() - t

    t = time.perf_counter()
    n, k = len(obs), cfg.graph.n_neighbors
    obsm: dict[str, np.ndarray] = {"X_pca": _pcs(cfg, client, cells, keep, totals, ref)}
    if ref.harmony is not None:
        corrected = np.full(obsm["X_pca"].shape, np.nan, dtype=np.float32)
        corrected[keep], _ = map_to_reference(
            obsm["X_pca"][keep],
            obs[cfg.integrate.batch_key].astype(str).to_numpy()[keep],
            cluster_sizes=ref.harmony["cluster_sizes"],
            cluster_sums=ref.harmony["cluster_sums"],
            sigma=float(ref.harmony["sigma"]),
        )
        obsm["X_pca_harmony"] = corrected
    if cfg.integrate.method in ("scvi", "both"):
        obsm["X_scvi"] = _scvi(cfg, client, cells, keep, ref)
    seconds["project"] = time.perf_counter() - t

    t = time.perf_counter()
    query = obsm[cfg.graph.use_rep][keep]
    nn = query_neighbors(ref.embedding, query, k)
    scale = _reference_scale(ref, k, cfg.graph.seed)
    for key, values, fill in (
        (NEIGHBORS, ref.kept[nn.indices], -1),
        (NEIGHBOR_DISTANCES, nn.distances, np.nan),
        (NEIGHBOR_WEIGHTS, nn.weights, 0.0),
    ):
        full = np.full((n, k), fill, dtype=values.dtype)
        full[keep] = values
        obsm[key] = full
    obsm["X_umap"] = np.full((n, 2), np.nan, dtype=np.float32)
    obsm["X_umap"][keep] = place_query(ref.umap, nn)
    for col in [c for c in ref.obs if c.startswith("leiden_")]:
        codes = np.full(n, -1)
        ref_codes = pd.Categorical(ref.obs[col]).codes[ref.kept]
        codes[keep] = vote_clusters(ref_codes, nn)
        obs[col] = pd.Categorical.from_codes(codes, categories=ref.obs[col].cat.categories)
    distance = np.full(n, np.nan, dtype=np.float32)
    distance[keep] = nn.distances.mean(axis=1)
    obs["mapping_distance"] = distance
    obs["mapping_ratio"] = distance / scale
    seconds["neighbors"] = time.perf_counter() - t

    t = time.perf_counter()
    a = cfg.annotate
    own = nearest_neighbors(
        query, min(k, int(keep.sum())), exact_below=cfg.graph.exact_knn_below, seed=cfg.graph.seed
    )
    _, conn = knn_graphs(own, seed=cfg.graph.seed)
    rows_kept = np.flatnonzero(keep)
    coo = conn.tocoo()
    graph = sp.csr_matrix((coo.data, (rows_kept[coo.row], rows_kept[coo.col])), shape=(n, n))
    labels = annotate_query(
        cells,
        client=client,
        keep=keep,
        total_counts=totals,
        markers=load_markers(a.markers),
        record=ref.annotate,
        connectivities=graph,
        graph_weight=a.graph_weight,
        b_graph_weight=a.b_graph_weight,
        min_confidence=a.min_confidence,
        min_marker_support=a.min_marker_support,
    )
    vocab = {"lineage": LINEAGES, "b_subset": B_SUBSETS}
    for level, (called, conf) in labels.items():
        obs[level] = pd.Categorical(called, categories=[*vocab[level], UNASSIGNED])
        obs[f"{level}_confidence"] = conf
    seconds["annotate"] = time.perf_counter() - t
    out = ad.AnnData(obs=obs, obsm=obsm)
    return out, qc.summary, {**seconds, "scale": scale}

"""Mapping a batch's cells onto an analysed cohort (add-batch's computation).

`read_reference` reads what the mapping needs from cohort.zarr (per-cell outputs of the
cohort and its fitted models, not its counts), each through the same record type the
stage that wrote it uses; `map_cells` computes the new cells' results: the qc stage's
rules per sample, PCs with the cohort's centre and loadings, Harmony by Symphony-style
mapping onto the cohort's clusters, the nearest cohort cells (exact) for graph edges,
Leiden clusters and UMAP positions, then labels under the annotate stage's fitted models
with a consensus among the new cells' own neighbours.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import zarr
from distributed import Client

from ..annotate import annotate_query, cell_type_columns, load_markers
from ..cohort import open_cohort
from ..config import RunConfig
from ..errors import ImmunoprofileError
from ..graph import knn_graphs, nearest_neighbors, place_query, query_neighbors, vote_clusters
from ..ingest import SampleRow
from ..integrate import HarmonyReference, SavedModel, encode_cells, map_to_reference
from ..labels import B_SUBSETS, LINEAGES, UNASSIGNED
from ..preprocess import PcaLoadings, project_cells
from ..qc import qc_cells
from ..results import NEIGHBOR_DISTANCES, NEIGHBOR_WEIGHTS, NEIGHBORS, leiden_columns
from ..sampling import stratified_sample
from ..workdir import Workdir

REFERENCE_SCALE_CELLS = 2000  # cohort cells whose own neighbour distances set the scale
VOCABULARY = {"lineage": LINEAGES, "b_subset": B_SUBSETS}


@dataclass(frozen=True)
class Reference:
    """What mapping reads from cohort.zarr (per-cell outputs and the fitted models)."""

    obs: pd.DataFrame  # sample_id, patient_id, response, qc_pass, leiden_*
    pca: PcaLoadings
    harmony: HarmonyReference | None
    embedding: np.ndarray  # the graph's embedding, kept cells only
    kept: np.ndarray  # cohort rows of the kept cells
    umap: np.ndarray  # kept cells
    annotate: dict[str, Any]
    scvi_sha256: dict[str, str] | None  # the scVI model's files as integrate wrote them


def read_reference(cfg: RunConfig) -> Reference:
    path = Workdir(cfg.workdir).cohort
    group = zarr.open_group(str(path), mode="r")

    def read(key: str) -> Any:
        return ad.io.read_elem(group[key])

    var = read("var")
    if "pca_mean" not in var:
        msg = f"{path} has no PCA centre (var 'pca_mean'): re-run the preprocess stage"
        raise ImmunoprofileError(msg)
    obs_group = group["obs"]
    assert isinstance(obs_group, zarr.Group)
    columns = ["sample_id", "patient_id", "response", "qc_pass", *leiden_columns(obs_group)]
    obs = pd.DataFrame({c: read(f"obs/{c}") for c in columns})
    kept = np.flatnonzero(obs["qc_pass"].to_numpy(dtype=bool))
    integrated = read("uns/integrate")
    harmony = integrated.get("harmony")
    return Reference(
        obs=obs,
        pca=PcaLoadings.from_record(var, read("varm/PCs")),
        harmony=None if harmony is None else HarmonyReference.from_record(harmony),
        embedding=np.asarray(read(f"obsm/{cfg.graph.use_rep}"))[kept],
        kept=kept,
        umap=np.asarray(read("obsm/X_umap"))[kept],
        annotate=read("uns/annotate"),
        scvi_sha256=integrated.get("scvi", {}).get("model_sha256"),
    )


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
    workdir = Workdir(cfg.workdir)
    cells = open_cohort(
        workdir, chunk_cells=cfg.ingest.chunk_cells, samples=[r.sample_id for r in rows]
    )
    qc = qc_cells(cells, workdir=workdir, client=client, params=cfg.qc, seed_offset=seed_offset)
    obs = cells.obs.join(qc.obs)
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    totals = obs["total_counts"].to_numpy(dtype=np.float64)
    seconds["qc"] = time.perf_counter() - t

    t = time.perf_counter()
    n, k = len(obs), cfg.graph.n_neighbors
    pcs = project_cells(
        cells, client=client, keep=keep, total_counts=totals, loadings=ref.pca,
        target_sum=cfg.preprocess.target_sum,
    )  # fmt: skip
    obsm: dict[str, np.ndarray] = {"X_pca": pcs}
    if ref.harmony is not None:
        corrected = np.full(pcs.shape, np.nan, dtype=np.float32)
        batch = obs[cfg.integrate.batch_key].astype(str).to_numpy()
        corrected[keep], _ = map_to_reference(pcs[keep], batch[keep], ref.harmony)
        obsm["X_pca_harmony"] = corrected
    if cfg.integrate.method in ("scvi", "both"):
        model_dir = workdir.scvi_model
        if not (model_dir / "model.pt").exists():
            msg = f"{model_dir} has no scVI model: re-run the integrate stage"
            raise ImmunoprofileError(msg)
        obsm["X_scvi"] = encode_cells(
            cells, client=client, keep=keep,
            batch=obs[cfg.integrate.batch_key].astype(str).to_numpy(), hvg=ref.pca.hvg,
            model=SavedModel.from_record(model_dir, ref.scvi_sha256),
            n_latent=cfg.integrate.scvi_n_latent,
        )  # fmt: skip
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
    for col in leiden_columns(ref.obs.columns):
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
    own = nearest_neighbors(
        query, min(k, int(keep.sum())), exact_knn_below=cfg.graph.exact_knn_below,
        seed=cfg.graph.seed,
    )  # fmt: skip
    _, conn = knn_graphs(own, seed=cfg.graph.seed)
    rows_kept = np.flatnonzero(keep)
    coo = conn.tocoo()
    graph = sp.csr_matrix((coo.data, (rows_kept[coo.row], rows_kept[coo.col])), shape=(n, n))
    labels = annotate_query(
        cells,
        client=client,
        keep=keep,
        total_counts=totals,
        markers=load_markers(cfg.annotate.markers),
        record=ref.annotate,
        connectivities=graph,
        params=cfg.annotate,
    )
    for level, (called, conf, probabilities) in labels.items():
        obs[level] = pd.Categorical(called, categories=[*VOCABULARY[level], UNASSIGNED])
        obs[f"{level}_confidence"] = conf
        obsm[f"{level}_probabilities"] = probabilities
    obs[["cell_type", "cell_type_ontology_term_id"]] = cell_type_columns(
        obs["lineage"], obs["b_subset"]
    )
    seconds["annotate"] = time.perf_counter() - t
    out = ad.AnnData(obs=obs, obsm=obsm)
    return out, qc.summary, {**seconds, "scale": scale}

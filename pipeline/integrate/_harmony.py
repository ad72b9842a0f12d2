"""Harmony on the principal components (harmonypy's C++ implementation; no I/O)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..sampling import stratified_sample


@dataclass(frozen=True)
class HarmonyReference:
    """What new cells are mapped onto (`map_to_reference`): Symphony's compression of the
    reference (Kang et al. 2021), per cluster k, N_k = sum_i R_ki and C_k = sum_i R_ki z_i
    (z: corrected PCs), with Harmony's centroids and bandwidth. Stored in cohort.zarr's
    ``uns["integrate"]["harmony"]`` (`to_record`, `from_record`)."""

    centroids: np.ndarray  # components x clusters (harmonypy's Y)
    cluster_sizes: np.ndarray  # clusters
    cluster_sums: np.ndarray  # clusters x components
    sigma: float

    def to_record(self) -> dict[str, Any]:
        return {
            "n_clusters": int(self.centroids.shape[1]),
            "centroids": self.centroids,
            "cluster_sizes": self.cluster_sizes,
            "cluster_sums": self.cluster_sums,
            "sigma": self.sigma,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> HarmonyReference:
        return cls(
            centroids=np.asarray(record["centroids"]),
            cluster_sizes=np.asarray(record["cluster_sizes"]),
            cluster_sums=np.asarray(record["cluster_sums"]),
            sigma=float(record["sigma"]),
        )


@dataclass(frozen=True)
class HarmonyResult:
    embedding: np.ndarray  # cells x components, float32
    reference: HarmonyReference
    n_iterations: int
    converged: bool
    n_fitted: int  # cells Harmony was fitted on; the others corrected by its model

    def to_record(self) -> dict[str, Any]:
        """The fit's facts and the reference, as ``uns["integrate"]["harmony"]``."""
        return {
            "n_iterations": self.n_iterations,
            "converged": self.converged,
            "n_fitted": self.n_fitted,
            **self.reference.to_record(),
        }


SIGMA = 0.1  # harmonypy's default soft-clustering bandwidth (run_harmony's sigma)


@dataclass(frozen=True)
class HarmonyFit:
    """Harmony fitted on some cells: their corrected PCs and soft cluster assignments, the
    centroids, and the batch offsets that correct any other cell (`correct_cells`)."""

    corrected: np.ndarray  # fitted cells x components
    assignments: np.ndarray  # fitted cells x clusters
    centroids: np.ndarray  # components x clusters (harmonypy's Y)
    offsets: np.ndarray | None  # batches x clusters x components (None: not asked for)
    n_iterations: int


def check_batches(n_rows: int, batch: np.ndarray) -> None:
    if n_rows != batch.shape[0]:
        msg = f"expected one batch label per row of the PCs, got {batch.shape[0]} for {n_rows}"
        raise ValueError(msg)
    if np.unique(batch).size < 2:
        msg = "Harmony needs at least two batches; found one"
        raise ValueError(msg)


def fit_harmony(
    pcs: np.ndarray,
    batch: np.ndarray,
    codes: np.ndarray,
    *,
    theta: float = 2.0,
    max_iter: int = 10,
    seed: int = 0,
    n_clusters: int | None = None,
    n_threads: int = 0,
    offsets: bool = False,
) -> HarmonyFit:
    """harmonypy on the rows of ``pcs`` with batch labels ``batch`` (``codes``: their
    codes among all the cells' batches, which index the offsets); with ``offsets``, the
    batch offsets recovered from the fit (`batch_offsets`)."""
    import harmonypy

    logging.getLogger("harmonypy").setLevel(logging.WARNING)
    model = harmonypy.run_harmony(
        np.asarray(pcs, dtype=np.float64),
        {"batch": np.asarray(batch).astype(str)},
        "batch",
        theta=theta,
        nclust=n_clusters,
        max_iter_harmony=max_iter,
        sigma=SIGMA,
        random_state=seed,
        ncores=n_threads,
        verbose=False,
    )
    r = np.asarray(model.R, dtype=np.float64)  # cells x clusters (harmonypy 2)
    z = np.asarray(model.Z_corr, dtype=np.float64)  # cells x components
    found = None
    if offsets:
        found = batch_offsets(np.asarray(model.Z_orig, dtype=np.float64) - z, r, codes)
    return HarmonyFit(
        corrected=z,
        assignments=r,
        centroids=np.asarray(model.Y, dtype=np.float64),
        offsets=found,
        n_iterations=len(model.objective_harmony) - 1,
    )


def harmony_embedding(
    pcs: np.ndarray,
    batch: np.ndarray,
    *,
    max_cells: int | None,
    theta: float = 2.0,
    max_iter: int = 10,
    seed: int = 0,
    n_clusters: int | None = None,
    n_threads: int = 0,
    strata: np.ndarray | None = None,
    chunk_cells: int = 50_000,
) -> HarmonyResult:
    """Harmony-corrected PCs of every row of ``pcs`` for the batch labels ``batch``, in
    memory (the integrate stage does the same with the cells corrected on the workers,
    `pipeline.integrate.integrate_cohort`).

    ``n_clusters`` None: harmonypy's default, min(n / 30, 100). ``n_threads`` 0: one per
    physical core this process may use (results do not depend on it).

    Above ``max_cells`` rows (None: never) Harmony is fitted on a subsample stratified by
    ``strata`` (default: ``batch``; topped up to `MIN_FIT_PER_BATCH` cells in every batch
    it leaves with fewer, `fit_rows`), and every other row is corrected with the fitted model,
    ``chunk_cells`` at a time (`correct_cells`): Harmony's working memory (several copies
    of the PCs and the cells x clusters assignments, in float64) stays that of the fit.
    """
    check_batches(pcs.shape[0], batch)
    batch = np.asarray(batch).astype(str)
    fit = fit_rows(batch, strata, max_cells, seed)
    codes = np.unique(batch, return_inverse=True)[1]
    model = fit_harmony(
        pcs[fit], batch[fit], codes[fit], theta=theta, max_iter=max_iter, seed=seed,
        n_clusters=n_clusters, n_threads=n_threads, offsets=fit.size < pcs.shape[0],
    )  # fmt: skip
    embedding = np.empty(pcs.shape, dtype=np.float32)
    embedding[fit] = model.corrected
    sizes = model.assignments.sum(axis=0)
    sums = model.assignments.T @ model.corrected
    if fit.size < pcs.shape[0]:
        assert model.offsets is not None
        rest = np.setdiff1d(np.arange(pcs.shape[0]), fit)
        for start in range(0, rest.size, chunk_cells):
            rows = rest[start : start + chunk_cells]
            z_rows, r_rows = correct_cells(
                pcs[rows], codes[rows], model.centroids, model.offsets, SIGMA
            )
            embedding[rows] = z_rows
            sizes += r_rows.sum(axis=0)
            sums += r_rows.T @ z_rows
    return HarmonyResult(
        embedding=embedding,
        reference=HarmonyReference(model.centroids.astype(np.float32), sizes, sums, SIGMA),
        n_iterations=model.n_iterations,
        converged=model.n_iterations < max_iter,
        n_fitted=int(fit.size),
    )


MIN_FIT_PER_BATCH = 500  # fitted cells per batch (5 per Harmony cluster, at most 100)


def fit_rows(
    batch: np.ndarray, strata: np.ndarray | None, max_cells: int | None, seed: int
) -> np.ndarray:
    """The rows Harmony is fitted on (sorted): all, or a stratified subsample of about
    ``max_cells`` topped up, in every batch it leaves with fewer than `MIN_FIT_PER_BATCH`,
    with more of that batch's cells drawn at random (all of them when it has fewer): about
    ``max_cells`` + `MIN_FIT_PER_BATCH` per batch at most, whatever the batches' sizes."""
    if max_cells is None or batch.size <= max_cells:
        return np.arange(batch.size)
    chosen = np.zeros(batch.size, dtype=bool)
    chosen[stratified_sample(batch if strata is None else np.asarray(strata), max_cells, seed)] = 1
    codes = np.unique(np.asarray(batch), return_inverse=True)[1].ravel()
    have = np.bincount(codes, weights=chosen).astype(np.int64)
    short = np.flatnonzero(have < MIN_FIT_PER_BATCH)
    if short.size:
        rng = np.random.default_rng([seed, MIN_FIT_PER_BATCH])  # apart from the subsample's
        order = np.argsort(codes, kind="stable")  # each batch's rows, ascending
        starts = np.searchsorted(codes[order], np.arange(have.size + 1))
        for b in short:
            members = order[starts[b] : starts[b + 1]]
            left = members[~chosen[members]]
            take = min(MIN_FIT_PER_BATCH - int(have[b]), left.size)
            chosen[rng.choice(left, take, replace=False)] = True
    return np.flatnonzero(chosen)


def batch_offsets(correction: np.ndarray, r: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Harmony's per-cluster batch offsets (batches x clusters x components), recovered
    from its fit: the correction of a fitted cell i of batch b (original minus corrected
    PCs) is sum_k R_ik W_kb, with W_kb the ridge coefficient of batch b in cluster k of
    Harmony's last correction step (`moe_correct_ridge`); least squares per batch."""
    out = np.zeros((codes.max() + 1, r.shape[1], correction.shape[1]))
    for b in range(out.shape[0]):
        rows = codes == b
        if rows.any():
            out[b] = np.linalg.lstsq(r[rows], correction[rows], rcond=None)[0]
    return out


def correct_cells(
    pcs: np.ndarray,
    codes: np.ndarray,
    centroids: np.ndarray,
    offsets: np.ndarray,
    sigma: float,
    *,
    rounds: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Cells not in Harmony's fit corrected by its model: soft-assign each cell's
    corrected PCs (starting from the original) to the centroids as Harmony's clustering
    step does (without its diversity penalty, as Symphony maps cells), subtract its batch's
    offsets weighted by the assignment, and repeat ``rounds`` times. Each cell on its own:
    the result does not depend on the chunking. Returns (corrected, assignments)."""
    from ._mapping import soft_clusters

    pcs = np.asarray(pcs, dtype=np.float64)
    unit = centroids / np.linalg.norm(centroids, axis=0, keepdims=True)
    z = pcs.copy()
    for _ in range(rounds):
        r = soft_clusters(z, unit.T, sigma)
        for b in np.unique(codes):
            rows = codes == b
            z[rows] = pcs[rows] - r[rows] @ offsets[b]
    return z.astype(np.float32), r

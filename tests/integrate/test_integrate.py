"""Harmony mixes strongly separated batches and keeps the simulator's cell types apart."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import zarr
from distributed import Client

from pipeline.config import IntegrateConfig
from pipeline.integrate import harmony_embedding, integrate_cohort, integration_metrics


@pytest.fixture(scope="module")
def metrics(strong_batch_cohort: ad.AnnData, strong_batch_truth: pd.DataFrame) -> dict:
    keep = strong_batch_cohort.obs["qc_pass"].to_numpy(dtype=bool)
    batch = strong_batch_cohort.obs["batch"].astype(str).to_numpy()[keep]
    out = {}
    for key in ("X_pca", "X_pca_harmony"):
        emb = strong_batch_cohort.obsm[key][keep]
        out[key] = {
            level: integration_metrics(emb, batch, strong_batch_truth[level].to_numpy()[keep])
            for level in ("lineage", "cell_type")
        }
    return out


def test_batch_mixing_improves_clearly(metrics: dict) -> None:
    """Uncorrected PCA separates the batches (iLISI ~0); after Harmony most neighbourhoods
    hold all three batches. scib calls iLISI > 0.5 good mixing; we ask for that and a gain
    of 0.4, and for the per-type batch silhouette (1 = batches indistinguishable within a
    cell type) to rise by 0.1 (measured: iLISI 0.00 -> 0.74, silhouette 0.72 -> 0.97)."""
    before, after = metrics["X_pca"]["lineage"], metrics["X_pca_harmony"]["lineage"]
    assert before["ilisi"] < 0.2  # the test cohort's batches really are separated
    assert after["ilisi"] >= 0.5
    assert after["ilisi"] >= before["ilisi"] + 0.4
    assert after["batch_silhouette"] >= before["batch_silhouette"] + 0.1


def test_cell_types_stay_separated(metrics: dict) -> None:
    """Biology kept: neighbourhoods stay pure in lineage (cLISI near 1, scib's scale) and the
    cell-type silhouette does not fall by more than 0.05 (measured: cLISI 1.0 -> 1.0,
    silhouette 0.64 -> 0.69: removing the batch axis helps the types)."""
    for level in ("lineage", "cell_type"):
        before, after = metrics["X_pca"][level], metrics["X_pca_harmony"][level]
        assert after["clisi"] >= 0.95, level
        assert after["label_silhouette"] >= before["label_silhouette"] - 0.05, level


def test_outputs_in_the_cohort_store(strong_batch_cohort: ad.AnnData) -> None:
    keep = strong_batch_cohort.obs["qc_pass"].to_numpy(dtype=bool)
    emb = strong_batch_cohort.obsm["X_pca_harmony"]
    assert emb.shape == strong_batch_cohort.obsm["X_pca"].shape
    assert np.isfinite(emb[keep]).all() and np.isnan(emb[~keep]).all()
    info = strong_batch_cohort.uns["integrate"]
    assert info["method"] == "harmony" and info["params"]["batch_key"] == "batch"
    assert set(info["metrics"]) == {"X_pca", "X_pca_harmony"}
    assert info["metrics"]["X_pca_harmony"]["ilisi"] > info["metrics"]["X_pca"]["ilisi"]
    assert info["harmony"]["centroids"].shape[0] == emb.shape[1]


def test_harmony_is_seeded_and_checks_its_input(strong_batch_cohort: ad.AnnData) -> None:
    keep = strong_batch_cohort.obs["qc_pass"].to_numpy(dtype=bool)
    pcs = strong_batch_cohort.obsm["X_pca"][keep][:2000]
    batch = strong_batch_cohort.obs["batch"].astype(str).to_numpy()[keep][:2000]
    a = harmony_embedding(pcs, batch, seed=3, max_cells=None)
    b = harmony_embedding(pcs, batch, seed=3, max_cells=None)
    np.testing.assert_array_equal(a.embedding, b.embedding)
    with pytest.raises(ValueError, match="at least two batches"):
        harmony_embedding(pcs, np.full(pcs.shape[0], "b1"), max_cells=None)
    with pytest.raises(ValueError, match="one batch label per row"):
        harmony_embedding(pcs, batch[:10], max_cells=None)


def test_harmony_fitted_on_a_subsample_corrects_every_cell_alike(
    strong_batch_cohort: ad.AnnData, strong_batch_truth: pd.DataFrame
) -> None:
    """Above ``max_cells`` Harmony is fitted on a subsample and the other cells are
    corrected with its model: the batch offsets are recovered exactly from the fit, the
    corrections of all cells stay close to those of the fit on every cell (median relative
    difference 0.04 on the 212k-cell benchmark cohort fitted on 50k; here 0.08, fitted on
    a quarter of 7k cells) and batches mix about as well (iLISI 0.74 -> 0.71 here; 0.734 ->
    0.732 on the benchmark cohort) with cell types as separate."""
    from pipeline.integrate._harmony import batch_offsets, correct_cells

    keep = strong_batch_cohort.obs["qc_pass"].to_numpy(dtype=bool)
    pcs = strong_batch_cohort.obsm["X_pca"][keep]
    batch = strong_batch_cohort.obs["batch"].astype(str).to_numpy()[keep]
    sample = strong_batch_cohort.obs["sample_id"].astype(str).to_numpy()[keep]
    lineage = strong_batch_truth["lineage"].to_numpy()[keep]
    full = harmony_embedding(pcs, batch, seed=0, max_cells=None)
    part = harmony_embedding(pcs, batch, seed=0, max_cells=pcs.shape[0] // 4, strata=sample)
    assert full.n_fitted == pcs.shape[0] and part.n_fitted < pcs.shape[0] // 2
    # float32 PCs as stored give what their float64 copy gives, bit for bit (the lineage
    # embedding passes them without the copy)
    assert pcs.dtype == np.float32
    wide = harmony_embedding(pcs.astype(np.float64), batch, seed=0,
                             max_cells=pcs.shape[0] // 4, strata=sample)  # fmt: skip
    np.testing.assert_array_equal(wide.embedding, part.embedding)
    np.testing.assert_array_equal(wide.reference.cluster_sums, part.reference.cluster_sums)
    assert np.isfinite(part.embedding).all()
    assert part.reference.cluster_sizes.sum() == pytest.approx(pcs.shape[0], rel=1e-6)
    shift_full, shift_part = pcs - full.embedding, pcs - part.embedding
    rel = np.linalg.norm(shift_full - shift_part, axis=1) / np.linalg.norm(shift_full, axis=1)
    assert np.median(rel) < 0.15
    mixed_full = integration_metrics(full.embedding, batch, lineage)
    mixed_part = integration_metrics(part.embedding, batch, lineage)
    assert mixed_part["ilisi"] >= mixed_full["ilisi"] - 0.05
    assert mixed_part["label_silhouette"] >= mixed_full["label_silhouette"] - 0.05

    # the offsets reproduce harmonypy's own correction of its fitted cells
    import harmonypy

    codes = np.unique(batch, return_inverse=True)[1]
    model = harmonypy.run_harmony(
        pcs.astype(np.float64), {"batch": batch}, "batch", random_state=0, verbose=False
    )
    r, z_orig = np.asarray(model.R), np.asarray(model.Z_orig)
    offsets = batch_offsets(z_orig - np.asarray(model.Z_corr), r, codes)
    rebuilt = np.vstack([z_orig[i] - r[i] @ offsets[codes[i]] for i in range(500)])
    np.testing.assert_allclose(rebuilt, np.asarray(model.Z_corr)[:500], atol=1e-4)

    # a cell's correction does not depend on the other cells it is corrected with
    y = np.asarray(model.Y)
    whole, _ = correct_cells(pcs[:600], codes[:600], y, offsets, 0.1)
    parts = [
        correct_cells(pcs[i : i + 200], codes[i : i + 200], y, offsets, 0.1)[0]
        for i in (0, 200, 400)
    ]
    np.testing.assert_allclose(np.vstack(parts), whole, rtol=1e-6, atol=1e-6)


def test_the_fit_grows_with_the_batches_not_with_their_cells() -> None:
    """Above ``max_cells`` each batch gets its share of the subsample, topped up to
    `MIN_FIT_PER_BATCH` cells (all of a smaller batch's): with many patients (a lineage's
    Harmony over 176 patients at 4M cells) the fit stays ~500 cells a patient instead of
    every cell of every patient."""
    from pipeline.integrate._harmony import MIN_FIT_PER_BATCH, fit_rows

    sizes = np.r_[np.full(176, 2_000), 100, 300, 700]
    batch = np.repeat([f"P{i:03d}" for i in range(sizes.size)], sizes)
    shuffled = np.random.default_rng(1).permutation(batch)
    fit = fit_rows(shuffled, None, 30_000, seed=4)
    assert np.all(np.diff(fit) > 0)
    per_batch = pd.Series(shuffled[fit]).value_counts()
    want = np.minimum(MIN_FIT_PER_BATCH, pd.Series(shuffled).value_counts())
    assert (per_batch.reindex(want.index, fill_value=0) >= want).all()
    assert fit.size <= 30_000 + MIN_FIT_PER_BATCH * sizes.size
    assert fit.size < 0.3 * batch.size  # was every cell: each patient got ~170 < 500
    np.testing.assert_array_equal(fit, fit_rows(shuffled, None, 30_000, seed=4))
    assert not np.array_equal(fit, fit_rows(shuffled, None, 30_000, seed=5))
    # stratified by sample: the top-up is still per batch
    sample = np.char.add(shuffled, np.where(np.arange(batch.size) % 3 == 0, "_m0", "_m3"))
    fit = fit_rows(shuffled, sample, 30_000, seed=4)
    per_batch = pd.Series(shuffled[fit]).value_counts()
    assert (per_batch.reindex(want.index, fill_value=0) >= want).all()
    assert fit.size <= 30_000 + MIN_FIT_PER_BATCH * sizes.size
    # below max_cells: every cell
    np.testing.assert_array_equal(fit_rows(shuffled, None, batch.size, seed=4),
                                  np.arange(batch.size))  # fmt: skip


def test_the_stage_corrects_on_the_workers_what_harmony_embedding_gives_in_memory(
    strong_batch_cohort: ad.AnnData, client: Client, tmp_path: Path
) -> None:
    """The stage fits Harmony on its subsample and the workers correct every other cell a
    block at a time, reading the PCs from a zarr array: the same embedding and reference
    as `harmony_embedding` in memory (blocks much smaller than the cohort here)."""
    keep = strong_batch_cohort.obs["qc_pass"].to_numpy(dtype=bool)
    pcs = np.asarray(strong_batch_cohort.obsm["X_pca"], dtype=np.float32)
    batch = strong_batch_cohort.obs["batch"].astype(str).to_numpy()
    sample = strong_batch_cohort.obs["sample_id"].astype(str).to_numpy()
    params = IntegrateConfig(harmony_max_cells=1500, metrics_max_cells=2000)
    store = zarr.create_array(str(tmp_path / "pcs.zarr"), shape=pcs.shape, dtype=pcs.dtype,
                              chunks=(1000, pcs.shape[1]))  # fmt: skip
    store[...] = pcs
    result = integrate_cohort(store, keep, batch, params=params, sample=sample, block_cells=700)
    got = result.embeddings["X_pca_harmony"].compute()
    want = harmony_embedding(
        pcs[keep], batch[keep], max_cells=1500, theta=params.harmony_theta,
        max_iter=params.harmony_max_iter, seed=params.seed, strata=sample[keep],
    )  # fmt: skip
    assert want.n_fitted < keep.sum() - 1000  # many cells corrected by the model
    np.testing.assert_allclose(got[keep], want.embedding, rtol=1e-5, atol=1e-5)
    assert np.isnan(got[~keep]).all()
    record = result.info["harmony"]
    assert record["n_fitted"] == want.n_fitted
    np.testing.assert_allclose(record["cluster_sizes"], want.reference.cluster_sizes, rtol=1e-9)
    np.testing.assert_allclose(record["cluster_sums"], want.reference.cluster_sums, rtol=1e-7,
                               atol=1e-6)  # fmt: skip
    assert set(result.metrics) == {"X_pca", "X_pca_harmony"}

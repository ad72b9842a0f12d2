"""HVG and PCA out of core equal scanpy in memory; results do not depend on chunking."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from distributed import Client, LocalCluster
from scipy.linalg import subspace_angles

from pipeline.cohort import open_cohort
from pipeline.config import PreprocessConfig, QCConfig
from pipeline.preprocess import PreprocessResult, preprocess_cohort
from pipeline.qc import QCResult, compute_qc
from pipeline.workdir import Workdir


@pytest.fixture(scope="module")
def qc(ingested: Path, client: Client) -> QCResult:
    cohort = open_cohort(ingested)
    stores = {s: Workdir(ingested).sample_store(s) for s in cohort.obs["sample_id"].cat.categories}
    return compute_qc(
        cohort.obs, cohort.var, client=client, stores=stores, params=QCConfig(doublets=False)
    )


@pytest.fixture(scope="module")
def keep(qc: QCResult) -> tuple[np.ndarray, np.ndarray]:
    return qc.obs["qc_pass"].to_numpy(), qc.obs["total_counts"].to_numpy(dtype=float)


def _run(ingested: Path, client: Client, keep, chunk_cells: int) -> PreprocessResult:
    result = preprocess_cohort(
        open_cohort(ingested, chunk_cells=chunk_cells), client=client, keep=keep[0],
        total_counts=keep[1], params=PreprocessConfig(n_top_genes=1000, n_comps=30),
    )  # fmt: skip
    return dataclasses.replace(result, pca=result.pca.compute())  # the scores, computed


@pytest.fixture(scope="module")
def ours(ingested: Path, client: Client, keep) -> PreprocessResult:
    return _run(ingested, client, keep, chunk_cells=170)


@pytest.fixture(scope="module")
def scanpy_result(ingested: Path, keep) -> ad.AnnData:
    cohort = open_cohort(ingested)
    adata = ad.AnnData(
        X=cohort.X.compute().astype(np.float32), obs=cohort.obs.copy(), var=cohort.var.copy()
    )
    adata = adata[keep[0]].copy()
    adata.layers["counts"] = adata.X.copy()
    sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", n_top_genes=1000, batch_key="batch", layer="counts"
    )
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=30, mask_var="highly_variable")
    return adata


def test_hvgs_overlap_scanpy_seurat_v3(ours: PreprocessResult, scanpy_result: ad.AnnData) -> None:
    mine = set(ours.var.index[ours.var["highly_variable"]])
    theirs = set(scanpy_result.var_names[scanpy_result.var["highly_variable"]])
    assert len(mine & theirs) / len(theirs) >= 0.95
    np.testing.assert_allclose(ours.var["means"], scanpy_result.var["means"], rtol=1e-6)
    np.testing.assert_allclose(
        ours.var["variances_norm"], scanpy_result.var["variances_norm"], rtol=1e-4
    )


def test_principal_components_match_scanpy(
    ours: PreprocessResult, scanpy_result: ad.AnnData, keep
) -> None:
    mine = ours.pca[keep[0]].astype(np.float64)
    theirs = scanpy_result.obsm["X_pca"].astype(np.float64)
    for i in range(20):
        assert abs(np.corrcoef(mine[:, i], theirs[:, i])[0, 1]) >= 0.99, f"PC{i + 1}"
    assert np.degrees(subspace_angles(mine[:, :20], theirs[:, :20])).max() < 5
    np.testing.assert_allclose(
        ours.variance_ratio[:20], scanpy_result.uns["pca"]["variance_ratio"][:20], rtol=1e-3
    )
    assert np.isnan(ours.pca[~keep[0]]).all()


def test_same_result_with_one_worker_and_other_chunks(
    ingested: Path, keep, ours: PreprocessResult
) -> None:
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cl,
        Client(cl) as one,
    ):
        same_chunks = _run(ingested, one, keep, chunk_cells=170)
        other = _run(ingested, one, keep, chunk_cells=10_000)
    # the same chunks on one worker: bit for bit (the sums run in a fixed order)
    np.testing.assert_array_equal(same_chunks.pca, ours.pca)
    pd.testing.assert_frame_equal(same_chunks.var, ours.var)
    # other chunks: X'X is summed over float32 BLAS blocks whose bounds move with the
    # chunks, so scores agree to float32 rounding (|scores| reach ~30)
    assert other.var["highly_variable"].equals(ours.var["highly_variable"])
    np.testing.assert_allclose(other.pca, ours.pca, rtol=1e-4, atol=1e-3)


def test_qc_stage_moments_replace_the_first_pass(
    ingested: Path, client: Client, keep, qc: QCResult, ours: PreprocessResult
) -> None:
    """The per-sample moments the qc stage records, summed per batch, give the same HVGs."""
    cohort = open_cohort(ingested, chunk_cells=170)
    batch = pd.Categorical(cohort.obs["batch"].astype(str))
    sample_batch = pd.Series(batch.codes, index=cohort.obs["sample_id"].astype(str).to_numpy())
    moments: dict[int, np.ndarray] = {}
    for sid, m in qc.moments.items():
        b = int(sample_batch.loc[[sid]].iloc[0])
        moments[b] = moments[b] + m if b in moments else m
    fused = preprocess_cohort(
        cohort, client=client, keep=keep[0], total_counts=keep[1],
        params=PreprocessConfig(n_top_genes=1000, n_comps=30), moments=moments,
    )  # fmt: skip
    pd.testing.assert_frame_equal(fused.var, ours.var, rtol=1e-9)
    np.testing.assert_allclose(fused.pca.compute(), ours.pca, rtol=1e-4, atol=1e-4)


def test_axes_fitted_on_a_subsample_match_the_exact_ones(
    ingested: Path, client: Client, keep, ours: PreprocessResult, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Above ``pca_max_cells`` kept cells the axes come from a subsample stratified by
    sample (every sample in it, in proportion), refined on every kept cell, and every kept
    cell is still projected: with half the cells the PCs are the exact ones' (at 1M cells,
    100k: |r| >= 0.998 on the first 20, docs/benchmarks.md). With a scratch folder the
    cells are projected from their saved coordinates, to the same scores (the saved rows'
    X'X summed over groups of chunks, several here), and the folder is left empty."""
    from pipeline.preprocess import _stage
    from pipeline.preprocess._stage import pca_fit_cells

    cohort = open_cohort(ingested, chunk_cells=170)
    half = int(keep[0].sum()) // 2
    params = PreprocessConfig(n_top_genes=1000, n_comps=30, pca_max_cells=half)
    fit = pca_fit_cells(cohort.obs, keep[0], params)
    assert not (fit & ~keep[0]).any() and abs(int(fit.sum()) - half) <= 24  # rounding per sample
    sample = cohort.obs["sample_id"].astype(str).to_numpy()
    share = pd.Series(fit[keep[0]]).groupby(sample[keep[0]]).mean()
    assert share.between(0.45, 0.55).all(), share
    assert np.array_equal(pca_fit_cells(cohort.obs, keep[0], params), fit)  # seeded
    sub = preprocess_cohort(
        cohort, client=client, keep=keep[0], total_counts=keep[1], params=params
    )
    scores = sub.pca.compute()
    assert np.isfinite(scores[keep[0]]).all() and np.isnan(scores[~keep[0]]).all()
    monkeypatch.setattr(_stage, "GRAM_GROUP_ROWS", half // 4)
    saved = preprocess_cohort(
        cohort, client=client, keep=keep[0], total_counts=keep[1], params=params,
        scratch=tmp_path,
    )  # fmt: skip
    assert saved.candidate_rows and not sub.candidate_rows
    np.testing.assert_allclose(saved.pca.compute(), scores, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(saved.components, sub.components, rtol=1e-6, atol=1e-9)
    assert list(tmp_path.iterdir()) == []
    # candidates too few for the HVGs: X'X and the refinement read the chunks, as without
    # a scratch folder, and the cells are still projected from their saved coordinates
    monkeypatch.setattr(_stage, "CANDIDATE_FACTOR", 0.5)
    fallback = preprocess_cohort(
        cohort, client=client, keep=keep[0], total_counts=keep[1], params=params,
        scratch=tmp_path,
    )  # fmt: skip
    assert not fallback.candidate_rows
    np.testing.assert_array_equal(fallback.components, sub.components)
    np.testing.assert_allclose(fallback.pca.compute(), scores, rtol=1e-4, atol=1e-4)
    assert list(tmp_path.iterdir()) == []
    # no room in the scratch folder (its share of the free space 0): nothing is written
    # there, every pass reads the counts, and the result says why
    monkeypatch.setattr(_stage, "SCRATCH_SHARE", 0.0)
    full = preprocess_cohort(
        cohort, client=client, keep=keep[0], total_counts=keep[1], params=params,
        scratch=tmp_path,
    )  # fmt: skip
    assert not full.candidate_rows and len(full.scratch_notes) == 1
    assert "coordinates" in full.scratch_notes[0] and str(tmp_path) in full.scratch_notes[0]
    np.testing.assert_array_equal(full.components, sub.components)
    np.testing.assert_array_equal(full.pca.compute(), scores)
    assert list(tmp_path.iterdir()) == []
    exact = ours.pca[keep[0]].astype(np.float64)
    mine = scores[keep[0]].astype(np.float64)
    r = [abs(np.corrcoef(mine[:, i], exact[:, i])[0, 1]) for i in range(10)]
    assert min(r) >= 0.995, np.round(r, 4)  # the subsample's own axes: PC4 0.95 (measured)
    # Ritz values: at most the exact variances, and close to them
    assert (sub.variance <= ours.variance * (1 + 1e-9)).all()
    assert (sub.variance[:10] >= 0.97 * ours.variance[:10]).all()
    captured = mine[:, :20].var(axis=0).sum() / exact[:, :20].var(axis=0).sum()
    assert 0.98 <= captured <= 1.0 + 1e-6, captured


def test_exact_pca_reads_the_saved_candidate_rows(
    ingested: Path, client: Client, keep, ours: PreprocessResult, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """At most ``pca_max_cells`` kept cells (the exact PCA) with a scratch folder, X'X and
    the projection read the candidate rows the HVG pass saved, not the counts: the same
    HVGs, the scores to float rounding (X'X summed in another order), the folder left
    empty; with too few candidates, or no room, both read the counts, as without one."""
    from pipeline.preprocess import _stage

    cohort = open_cohort(ingested, chunk_cells=170)
    params = PreprocessConfig(n_top_genes=1000, n_comps=30)
    run = lambda: preprocess_cohort(  # noqa: E731
        cohort, client=client, keep=keep[0], total_counts=keep[1], params=params,
        scratch=tmp_path,
    )  # fmt: skip
    saved = run()
    assert saved.candidate_rows and saved.scratch_notes == ()
    assert list(tmp_path.iterdir()) == []  # the scores were computed before it went
    scores = saved.pca.compute()
    pd.testing.assert_frame_equal(saved.var, ours.var)
    np.testing.assert_allclose(saved.components, ours.components, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(scores, ours.pca, rtol=1e-5, atol=1e-5)
    assert np.isnan(scores[~keep[0]]).all()
    monkeypatch.setattr(_stage, "CANDIDATE_FACTOR", 0.5)
    fallback = run()
    assert not fallback.candidate_rows and list(tmp_path.iterdir()) == []
    np.testing.assert_array_equal(fallback.components, ours.components)
    np.testing.assert_array_equal(fallback.pca.compute(), ours.pca)
    monkeypatch.undo()
    monkeypatch.setattr(_stage, "SCRATCH_SHARE", 0.0)
    full = run()
    assert not full.candidate_rows and len(full.scratch_notes) == 1
    assert "candidate genes" in full.scratch_notes[0]
    np.testing.assert_array_equal(full.pca.compute(), ours.pca)
    assert list(tmp_path.iterdir()) == []


def test_projection_from_saved_rows_is_the_projection_from_the_counts(tmp_path: Path) -> None:
    """A chunk's scores from its kept cells' candidate rows equal `project` on the whole
    chunk bit for bit (the HVGs' entries summed in the same order)."""
    import scipy.sparse as sp

    from pipeline.moments import clipped_moments_and_rows
    from pipeline.preprocess._kernels import project
    from pipeline.preprocess._stage import _project_saved_rows

    rng = np.random.default_rng(5)
    x = sp.random(500, 300, density=0.2, format="csr", random_state=6, dtype=np.float32)
    x.data = np.ceil(x.data * 20)
    keep = rng.random(500) > 0.3
    keep[:3] = False  # leading cells not kept
    candidates = np.sort(rng.choice(300, 120, replace=False))
    hvg = np.sort(rng.choice(candidates, 60, replace=False))
    total = np.asarray(x.sum(axis=1)).ravel() + 1.0
    _, rows = clipped_moments_and_rows(
        x, np.zeros(500, dtype=np.int64), keep, np.full((1, 300), np.inf), candidates
    )
    path = str(tmp_path / "rows.npz")
    sp.save_npz(path, rows, compressed=False)
    mean = rng.normal(size=60)
    comps = np.linalg.qr(rng.normal(size=(60, 8)))[0]
    expected = project(x, keep, hvg, total, 1e4, mean, comps)
    got = _project_saved_rows(
        path, keep, np.searchsorted(candidates, hvg), total[keep], 1e4, mean, comps
    )
    np.testing.assert_array_equal(got, expected)
    assert np.isnan(got[~keep]).all() and np.isfinite(got[keep]).all()


def test_candidate_rows_are_saved_only_when_their_bound_fits(
    ingested: Path, client: Client, keep, tmp_path: Path
) -> None:
    """`scratch_bytes` bounds the saved candidate rows' files from above (and within 3x of
    them: not vacuous); the HVG pass saves them only when the bound fits the room it is
    given, with the same HVG table either way."""
    from pipeline.cohort import cell_chunks
    from pipeline.preprocess._stage import _hvg_table

    cohort = open_cohort(ingested, chunk_cells=170)
    chunks = cell_chunks(cohort.X)
    params = PreprocessConfig(n_top_genes=1000, n_comps=30)
    paths = [str(tmp_path / f"rows-{i}.npz") for i in range(len(chunks))]
    table, _, _, rows, needed = _hvg_table(
        cohort, chunks, client, keep[0], params, None, paths, 2**62
    )
    assert rows == paths
    written = sum(Path(p).stat().st_size for p in paths)
    assert written <= needed <= 3 * written, (written, needed)
    for p in paths:
        Path(p).unlink()
    again, _, _, rows, bound = _hvg_table(
        cohort, chunks, client, keep[0], params, None, paths, needed - 1
    )
    assert rows is None and bound == needed and list(tmp_path.iterdir()) == []
    pd.testing.assert_frame_equal(again, table)


def test_gram_times_is_the_gram_matrix_applied_to_a_basis() -> None:
    """X'X Q and X Q of the log-normalized kept cells, as `gram` and the CSR say."""
    import scipy.sparse as sp

    from pipeline.preprocess._kernels import gram, gram_times, log_normalized

    rng = np.random.default_rng(3)
    x = sp.random(3000, 400, density=0.1, format="csr", random_state=4, dtype=np.float32)
    x.data = np.ceil(x.data * 20)
    keep = rng.random(3000) > 0.2
    genes = np.sort(rng.choice(400, 120, replace=False))
    total = np.asarray(x.sum(axis=1)).ravel() + 1.0
    basis = np.linalg.qr(rng.normal(size=(120, 16)))[0]
    (n, sums, squares, product), coords = gram_times(x, keep, genes, total, 1e4, basis)
    n_g, sums_g, g = gram(x, keep, genes, total, 1e4)
    y = log_normalized(x, keep, genes, total, 1e4).toarray()
    assert n == n_g == keep.sum()
    np.testing.assert_allclose(sums, sums_g, rtol=1e-6)
    np.testing.assert_allclose(squares, (y * y).sum(), rtol=1e-5)
    np.testing.assert_allclose(product, g @ basis, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(coords, y @ basis, rtol=1e-4, atol=1e-4)


def test_candidate_genes_hold_the_top_of_every_batch() -> None:
    """Per batch the CANDIDATE_FACTOR x n_top genes of largest unclipped normalized
    variance, united: a gene on top in one batch only is a candidate."""
    from pipeline.preprocess._stage import CANDIDATE_FACTOR, candidate_genes

    n_genes, n_top = 200, 20
    top = int(np.ceil(CANDIDATE_FACTOR * n_top))
    rng = np.random.default_rng(7)
    moments = {}
    for b in range(2):
        n = 1000.0
        mean = rng.uniform(0.1, 2.0, n_genes)
        var = mean * (1 + rng.uniform(0, 1, n_genes))
        var[b * 100] = 1e6  # the first batch's gene 0, the second's gene 100
        moments[b] = np.stack(
            [np.r_[n, np.zeros(n_genes - 1)], n * mean, (n - 1) * var + n * mean**2]
        )
    reg_std = np.sqrt(np.vstack([moments[b][1] / 1000 for b in range(2)]))
    got = candidate_genes(moments, reg_std, n_top)
    assert {0, 100} <= set(got.tolist()) and np.all(np.diff(got) > 0)
    assert top <= got.size <= 2 * top


def test_saved_rows_are_grouped_in_order_until_each_group_has_enough() -> None:
    from pipeline.preprocess._stage import _groups

    assert _groups(np.array([3, 0, 5, 2, 2, 1]), 4) == [[0, 1, 2], [3, 4], [5]]
    assert _groups(np.array([10, 10]), 25) == [[0, 1]]
    assert _groups(np.array([], dtype=int), 4) == []

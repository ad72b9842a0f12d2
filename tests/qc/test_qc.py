"""QC on the lazy cohort equals scanpy in memory; flags catch the simulator's junk."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import zarr
from distributed import Client
from scipy.stats import median_abs_deviation

from pipeline.cohort import open_cohort
from pipeline.config import QCConfig
from pipeline.qc import METRICS, QCResult, compute_qc
from pipeline.qc._kernels import IMMUNOGLOBULIN
from pipeline.simulate import SimulationResult
from pipeline.workdir import Workdir


@pytest.fixture(scope="module")
def qc(ingested: Path, client: Client) -> QCResult:
    cohort = open_cohort(ingested, chunk_cells=150)
    stores = {s: Workdir(ingested).sample_store(s) for s in cohort.obs["sample_id"].cat.categories}
    return compute_qc(cohort.obs, cohort.var, client=client, stores=stores, params=QCConfig())


@pytest.fixture(scope="module")
def in_memory(ingested: Path) -> ad.AnnData:
    """Every cell with scanpy's own QC metrics, computed in memory."""
    cohort = open_cohort(ingested)
    adata = ad.AnnData(X=cohort.X.compute().astype(np.float32), obs=cohort.obs.copy())
    symbols = cohort.var["gene_symbols"].astype(str)
    adata.var_names = symbols.to_numpy()
    adata.var["mt"] = symbols.str.startswith("MT-").to_numpy()
    adata.var["ribo"] = symbols.str.startswith(("RPS", "RPL")).to_numpy()
    adata.var["hb"] = symbols.str.contains("^HB[^(P)]").to_numpy()
    adata.var["ig"] = symbols.str.match(IMMUNOGLOBULIN.pattern).to_numpy()
    assert adata.var["ig"].sum() >= 8  # the simulator's heavy and light chains, JCHAIN
    qc_vars = ["mt", "ribo", "hb", "ig"]
    sc.pp.calculate_qc_metrics(adata, qc_vars=qc_vars, percent_top=[20], inplace=True)
    rest = adata[:, ~adata.var["ig"].to_numpy()].copy()
    sc.pp.calculate_qc_metrics(rest, percent_top=[20], inplace=True)
    adata.obs["pct_counts_in_top_20_non_ig_genes"] = rest.obs["pct_counts_in_top_20_genes"]
    return adata


def _truth(small_cohort: SimulationResult, obs_names: pd.Index) -> pd.DataFrame:
    sheet = pd.read_csv(small_cohort.samplesheet)
    frames = []
    for sid in sheet["sample_id"]:
        t = pd.read_csv(
            small_cohort.out / "truth" / "cells" / f"{sid}.csv.gz", keep_default_na=False
        )
        frames.append(t.set_index(sid + ":" + t["barcode"]))
    return pd.concat(frames).loc[obs_names]


def test_metrics_equal_scanpy(qc: QCResult, in_memory: ad.AnnData) -> None:
    for name in METRICS:
        np.testing.assert_allclose(
            qc.obs[name].to_numpy(), in_memory.obs[name].to_numpy(), atol=1e-6, err_msg=name
        )


def _outlier(values: pd.Series, groups: pd.Series, nmads: float) -> pd.Series:
    out = pd.Series(False, index=values.index)
    for _, v in values.groupby(groups, observed=True):
        med, mad = np.median(v), median_abs_deviation(v)
        out[v.index] = (v < med - nmads * mad) | (v > med + nmads * mad)
    return out


def test_qc_pass_cells_equal_the_best_practice_rule_on_scanpy_metrics(
    qc: QCResult, in_memory: ad.AnnData
) -> None:
    """Heumos et al. 2023: 5 MADs on log counts, log genes, top-20 share (of the
    non-immunoglobulin genes); 3 MADs (upper) or 20% on mt."""
    o = in_memory.obs
    g = o["sample_id"]
    mt_med = o["pct_counts_mt"].groupby(g, observed=True).transform("median")
    mt_mad = o["pct_counts_mt"].groupby(g, observed=True).transform(median_abs_deviation)
    fail = (
        _outlier(o["log1p_total_counts"], g, 5)
        | _outlier(o["log1p_n_genes_by_counts"], g, 5)
        | _outlier(o["pct_counts_in_top_20_non_ig_genes"], g, 5)
        | (o["pct_counts_mt"] > mt_med + 3 * mt_mad)
        | (o["pct_counts_mt"] > 20)
        | (o["total_counts"] < 500)
        | (o["n_genes_by_counts"] < 200)
    )
    flagged = qc.obs.filter(like="qc_flag_").drop(columns="qc_flag_doublet").any(axis=1)
    assert np.array_equal(flagged.to_numpy(), fail.to_numpy())
    assert np.array_equal(
        qc.obs["qc_pass"].to_numpy(), (~fail & ~qc.obs["predicted_doublet"]).to_numpy()
    )


def test_flags_catch_the_planted_junk(qc: QCResult, small_cohort: SimulationResult) -> None:
    truth = _truth(small_cohort, qc.obs.index)
    low = truth["kind"] == "low_quality"
    assert (~qc.obs.loc[low, "qc_pass"]).mean() > 0.8
    singlet = truth["kind"] == "singlet"
    assert qc.obs.loc[singlet, "qc_pass"].mean() > 0.9
    # doublet scores rank true doublets above singlets
    scored = qc.obs["doublet_score"].notna()
    d = qc.obs.loc[scored & (truth["kind"] == "doublet"), "doublet_score"].to_numpy()
    s = qc.obs.loc[scored & singlet, "doublet_score"].to_numpy()
    auc = (d[:, None] > s[None, :]).mean()
    assert auc > 0.75


def test_plasmablasts_are_not_removed_as_low_complexity(
    qc: QCResult, small_cohort: SimulationResult
) -> None:
    """Their immunoglobulin transcripts dominate their counts; the top-20 rule on all genes
    removed every one of them."""
    truth = _truth(small_cohort, qc.obs.index)
    plasmablast = (truth["b_subset"] == "plasmablast") & (truth["kind"] == "singlet")
    assert plasmablast.sum() >= 10
    assert qc.obs.loc[plasmablast, "qc_pass"].mean() >= 0.8
    assert qc.obs.loc[plasmablast, "pct_counts_ig"].median() > 20


def test_every_removed_cell_has_a_reason(qc: QCResult) -> None:
    removed = ~qc.obs["qc_pass"]
    assert (qc.obs.loc[removed, "qc_reason"] != "").all()
    assert (qc.obs.loc[~removed, "qc_reason"] == "").all()
    assert qc.summary["n_cells"].sum() == len(qc.obs)
    assert (
        qc.summary["n_kept"]
        == qc.obs.groupby(qc.obs.index.str.split(":").str[0])["qc_pass"]
        .sum()
        .loc[qc.summary["sample_id"]]
        .to_numpy()
    ).all()


def test_one_or_two_workers_give_the_same_result(ingested: Path, qc: QCResult) -> None:
    from distributed import LocalCluster

    cohort = open_cohort(ingested, chunk_cells=10_000)
    stores = {s: Workdir(ingested).sample_store(s) for s in cohort.obs["sample_id"].cat.categories}
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0"
        ) as cl,
        Client(cl) as one,
    ):
        other = compute_qc(cohort.obs, cohort.var, client=one, stores=stores, params=QCConfig())
    pd.testing.assert_frame_equal(other.obs, qc.obs)
    pd.testing.assert_frame_equal(other.summary, qc.summary)
    for sid, m in qc.moments.items():
        np.testing.assert_array_equal(other.moments[sid], m)


def test_moments_are_the_kept_cells_raw_count_sums(qc: QCResult, in_memory: ad.AnnData) -> None:
    for sid, m in qc.moments.items():
        cells = (in_memory.obs["sample_id"] == sid).to_numpy() & qc.obs["qc_pass"].to_numpy()
        x = in_memory.X[cells].astype(np.float64)
        assert m[0, 0] == cells.sum()
        np.testing.assert_allclose(m[1], np.asarray(x.sum(axis=0)).ravel())
        np.testing.assert_allclose(m[2], np.asarray(x.multiply(x).sum(axis=0)).ravel())


def test_the_stage_writes_from_the_workers_what_compute_qc_gathers(
    ingested: Path, client: Client, qc: QCResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The qc stage's path (each sample's results left on its worker, the cohort's obs
    written by the tasks) stores the cells' metadata and QC columns `open_cohort` and
    `compute_qc` give in memory, with the same summary and moments; several chunks per
    column (small chunks forced, the packed table's and the metadata's across samples)
    change nothing."""
    from pipeline import cohort as cohort_module
    from pipeline.cohort import lazy_cohort_obs
    from pipeline.qc import _stage, qc_columns
    from pipeline.store import _lazy, write_lazy_anndata_store

    monkeypatch.setattr(_lazy, "CHUNK_BYTES", 1_000)  # ~125 numbers per chunk
    # the samples' packed columns and their metadata in chunks that straddle samples
    monkeypatch.setattr(_stage, "TABLE_CHUNK_BYTES", 7_000)
    monkeypatch.setattr(cohort_module, "REPEAT_CHUNK_ROWS", 333)
    cohort = open_cohort(ingested)
    samples = list(Workdir(ingested).ingest_record().samples)
    stores = {s: Workdir(ingested).sample_store(s) for s in samples}
    names, meta = lazy_cohort_obs(ingested)
    lazy = qc_columns(samples, cohort.var, client=client, stores=stores, params=QCConfig())
    assert lazy.columns["total_counts"].numblocks[0] > len(samples)
    assert meta["patient_id"].codes.numblocks[0] > 1
    target = tmp_path / "cohort.zarr"
    write_lazy_anndata_store(target, {"n_obs": len(cohort.obs)}, names=names,
                             obs={**meta, **lazy.columns}, var=cohort.var)  # fmt: skip
    got = ad.read_zarr(target)
    want = pd.concat([cohort.obs, qc.obs], axis=1)
    pd.testing.assert_frame_equal(got.obs, want)
    pd.testing.assert_frame_equal(lazy.summary, qc.summary)
    for sid, m in qc.moments.items():
        np.testing.assert_array_equal(lazy.moments[sid], m)
    assert zarr.open_array(str(target / "obs" / "total_counts"), mode="r").cdata_shape[0] > 1

"""scVI: trained on a stratified subsample, encoded chunk by chunk on the cluster."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from distributed import Client

from pipeline.cohort import open_cohort
from pipeline.config import IntegrateConfig, RunConfig
from pipeline.integrate import (
    ModelFileError,
    SavedModel,
    ScviResult,
    encode_scvi,
    integration_metrics,
    scvi_cohort,
    train_scvi,
)


def _train(run: RunConfig, cohort: ad.AnnData, client: Client, folder: Path,
           epochs: int, kl_warmup_epochs: int = 400) -> ScviResult:  # fmt: skip
    return scvi_cohort(
        open_cohort(run.workdir, chunk_cells=1000),
        client=client,
        keep=cohort.obs["qc_pass"].to_numpy(dtype=bool),
        batch=cohort.obs["batch"].astype(str).to_numpy(),
        hvg=np.flatnonzero(cohort.var["highly_variable"].to_numpy()),
        model_dir=folder / "scvi",
        params=IntegrateConfig(
            method="scvi",
            scvi_max_cells=4000,
            scvi_max_epochs=epochs,
            scvi_batch_size=64,
            scvi_kl_warmup_epochs=kl_warmup_epochs,
        ),
    )


@pytest.fixture(scope="module")
def scvi_result(
    strong_batch_run: RunConfig, strong_batch_cohort: ad.AnnData, client: Client, tmp_path_factory
) -> ScviResult:
    """A briefly trained model: enough to check sampling, saving and chunked encoding."""
    return _train(strong_batch_run, strong_batch_cohort, client, tmp_path_factory.mktemp("m"), 5)


@pytest.fixture(scope="module")
def scvi_trained(
    strong_batch_run: RunConfig, strong_batch_cohort: ad.AnnData, client: Client, tmp_path_factory
) -> ScviResult:
    """30 epochs (~1,900 gradient steps) with the KL weight at 1 from epoch 8: enough to
    mix these strong batch effects (measured iLISI 0.71; with scvi-tools' 400-epoch KL
    warm-up, 30 epochs gave 0.34 even at 4x the learning rate and 130 epochs 0.68)."""
    return _train(strong_batch_run, strong_batch_cohort, client, tmp_path_factory.mktemp("m"), 30,
                  kl_warmup_epochs=8)  # fmt: skip


def test_trained_on_a_stratified_subsample_and_saved(
    scvi_result: ScviResult, strong_batch_cohort: ad.AnnData
) -> None:
    assert scvi_result.training.n_cells == pytest.approx(4000, abs=20)
    assert (scvi_result.training.model_dir / "model.pt").exists()
    elbo = scvi_result.training.history["elbo_train"]
    assert len(elbo) == 5 and elbo[-1] < elbo[0]
    keep = strong_batch_cohort.obs["qc_pass"].to_numpy(dtype=bool)
    assert np.isfinite(scvi_result.latent[keep]).all() and np.isnan(scvi_result.latent[~keep]).all()


def test_chunked_encoding_equals_encoding_all_cells_at_once(
    scvi_result: ScviResult, strong_batch_run: RunConfig, strong_batch_cohort: ad.AnnData
) -> None:
    c = strong_batch_cohort
    keep = c.obs["qc_pass"].to_numpy(dtype=bool)
    hvg = np.flatnonzero(c.var["highly_variable"].to_numpy())
    counts = sp.csr_matrix(open_cohort(strong_batch_run.workdir).X.compute())[keep][:, hvg]
    whole = encode_scvi(counts, c.obs["batch"].astype(str).to_numpy()[keep], scvi_result.model)
    np.testing.assert_allclose(scvi_result.latent[keep], whole, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_scvi_mixes_batches_and_keeps_lineages(
    scvi_trained: ScviResult, strong_batch_cohort: ad.AnnData, strong_batch_truth: pd.DataFrame
) -> None:
    """The same bar as Harmony's (tests/integrate/test_integrate.py): iLISI >= 0.5 and a
    gain of 0.4 over uncorrected PCA, cLISI by lineage >= 0.9 (scVI's 10-dimensional latent
    space mixes somewhat more and separates somewhat less than Harmony's 30 PCs)."""
    c = strong_batch_cohort
    keep = c.obs["qc_pass"].to_numpy(dtype=bool)
    batch = c.obs["batch"].astype(str).to_numpy()[keep]
    lineage = strong_batch_truth["lineage"].to_numpy()[keep]
    before = integration_metrics(c.obsm["X_pca"][keep], batch, lineage)
    after = integration_metrics(scvi_trained.latent[keep], batch, lineage)
    assert after["ilisi"] >= 0.5 and after["ilisi"] >= before["ilisi"] + 0.4
    assert after["clisi"] >= 0.9


def test_model_dir_is_replaced_whole(scvi_result: ScviResult) -> None:
    model_dir: Path = scvi_result.training.model_dir
    assert not model_dir.with_name(f".{model_dir.name}.tmp").exists()


@pytest.mark.slow
def test_run_with_both_methods_writes_both_and_the_graph_can_use_scvi(
    strong_batch_run: RunConfig, client: Client, tmp_path: Path
) -> None:
    import shutil

    from pipeline.errors import ImmunoprofileError
    from pipeline.stages import run_stage

    work = tmp_path / "work"
    shutil.copytree(strong_batch_run.workdir, work)
    base = strong_batch_run.model_dump(mode="json")
    cfg = RunConfig.model_validate(
        {
            **base,
            "workdir": str(work),
            "integrate": {"method": "both", "scvi_max_cells": 1000, "scvi_max_epochs": 2},
            "graph": {"use_rep": "X_scvi", "resolutions": [0.5]},
        }
    )
    message = run_stage("integrate", cfg, client)
    assert "X_scvi" in message and "X_pca_harmony" in message
    run_stage("graph", cfg, client)
    cohort = ad.read_zarr(work / "cohort.zarr")
    assert cohort.obsm["X_scvi"].shape == (cohort.n_obs, 10)
    assert "X_pca_harmony" in cohort.obsm
    info = cohort.uns["integrate"]["scvi"]
    assert (work / info["model_dir"] / "model.pt").exists()
    assert set(cohort.uns["integrate"]["metrics"]) == {"X_pca", "X_pca_harmony", "X_scvi"}
    assert cohort.uns["neighbors"]["params"]["use_rep"] == "X_scvi"

    harmony_only = RunConfig.model_validate(
        {**base, "workdir": str(work), "graph": {"use_rep": "X_scvi"}}
    )
    run_stage("integrate", harmony_only, client)
    with pytest.raises(ImmunoprofileError, match=r"graph\.use_rep is X_scvi"):
        run_stage("graph", harmony_only, client)


def test_scvi_encodes_cells_of_a_batch_it_was_not_trained_on(tmp_path: Path) -> None:
    """The encoder does not take the batch: a new batch's cells get the latent means
    they would get under any trained label (the decoder alone knows batches)."""
    rng = np.random.default_rng(0)
    x = sp.csr_matrix(rng.poisson(1.0, (300, 40)).astype(np.float32))
    train_scvi(x, np.repeat(["a", "b"], 150), tmp_path / "m", max_epochs=2)
    model = SavedModel.of(tmp_path / "m")
    new = encode_scvi(x[:30], np.full(30, "new_batch"), model)
    old = encode_scvi(x[:30], np.full(30, "b"), model)
    assert new.shape == (30, 10) and np.array_equal(new, old)


class _RunsCode:
    """Unpickling this runs code: what a hostile model.pt would hold."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, ("touch ran-code",)


def test_a_model_file_other_than_the_one_written_is_never_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scvi-tools loads model.pt with torch.load(weights_only=False): a model.pt put in
    the workdir could run code. The hashes recorded when the model was written must match
    before anything of it is read; a model without recorded hashes is not loaded either."""
    import pickle

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    x = sp.csr_matrix(rng.poisson(1.0, (200, 30)).astype(np.float32))
    train_scvi(x, np.repeat(["a", "b"], 100), tmp_path / "m", max_epochs=1)
    model = SavedModel.of(tmp_path / "m")
    assert set(model.sha256) == {"model.pt"}
    assert SavedModel.from_record(model.path, model.to_record()) == model
    before = encode_scvi(x[:5], np.full(5, "a"), model)

    (tmp_path / "m" / "model.pt").write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(ModelFileError, match=r"m is not the one the integrate stage wrote \(file"
                       r"\(s\) model\.pt differ"):  # fmt: skip
        encode_scvi(x[:5], np.full(5, "a"), model)
    (tmp_path / "m" / "extra.pkl").write_bytes(b"")
    with pytest.raises(ModelFileError, match=r"extra\.pkl, model\.pt differ"):
        model.check()
    assert not (tmp_path / "ran-code").exists()
    with pytest.raises(ModelFileError, match="has no recorded file hashes"):
        SavedModel.from_record(model.path, None)
    assert before.shape == (5, 10)

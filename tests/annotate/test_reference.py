"""Reference-based labels: a classifier trained on one labelled cohort, applied to another."""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from distributed import Client

from pipeline.cohort import open_cohort
from pipeline.config import RunConfig, parse_config
from pipeline.errors import ImmunoprofileError
from pipeline.stages import is_current, run_stage

from .conftest import read_truth


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, strong_batch_run: RunConfig) -> Path:
    """The strong-batch cohort's raw counts with its true labels, as an .h5ad."""
    cohort = open_cohort(strong_batch_run.workdir)
    truth = read_truth(strong_batch_run, cohort.obs_names)
    singlet = (truth["kind"] == "singlet").to_numpy()
    obs = pd.DataFrame(
        {
            "lineage": truth["lineage"].where(singlet).to_numpy(),
            "b_subset": truth["b_subset"].replace("", np.nan).where(singlet).to_numpy(),
        },
        index=cohort.obs_names,
    )
    var = pd.DataFrame({"gene_symbols": cohort.var["gene_symbols"].to_numpy()})
    var.index = cohort.var_names
    path = tmp_path_factory.mktemp("reference") / "reference.h5ad"
    ad.AnnData(X=cohort.X.compute(), obs=obs, var=var).write_h5ad(path)
    return path


def test_transferred_labels_agree_with_markers_and_truth(
    tmp_path: Path, accuracy_run: RunConfig, reference: Path, client: Client
) -> None:
    work = tmp_path / "work"
    shutil.copytree(accuracy_run.workdir, work)
    cfg = parse_config(
        {
            "workdir": str(work),
            "samplesheet": str(accuracy_run.samplesheet),
            "annotate": {"reference": {"path": str(reference)}},
        }
    )
    assert not is_current(cfg, "annotate")  # the reference is part of the inputs
    run_stage("annotate", cfg, client)
    cohort = ad.read_zarr(work / "cohort.zarr")
    record = cohort.uns["annotate"]["reference"]
    print({k: v["fraction_equal"] for k, v in record.items() if isinstance(v, dict)})
    assert record["lineage"]["fraction_equal"] >= 0.95
    assert record["b_subset"]["fraction_equal"] >= 0.85
    assert record["lineage"]["cohen_kappa"] >= 0.93
    truth = read_truth(accuracy_run, cohort.obs_names)
    kept = cohort.obs["qc_pass"].to_numpy(dtype=bool) & (truth["kind"] == "singlet").to_numpy()
    transferred = cohort.obs["lineage_reference"].astype(str).to_numpy()[kept]
    assert (transferred == truth["lineage"].to_numpy()[kept]).mean() >= 0.95
    conf = cohort.obs["lineage_reference_confidence"].to_numpy()
    assert np.isnan(conf[~cohort.obs["qc_pass"].to_numpy(dtype=bool)]).all()


def test_reference_without_the_label_column_is_named(
    tmp_path: Path, accuracy_run: RunConfig, reference: Path, client: Client
) -> None:
    cfg = parse_config(
        {
            "workdir": str(accuracy_run.workdir),
            "annotate": {"reference": {"path": str(reference), "lineage_key": "celltype"}},
        }
    )
    with pytest.raises(ImmunoprofileError, match=r"obs has no column \['celltype'\]"):
        run_stage("annotate", cfg, client)

"""add-batch on the small cohort: its 2 late patients (6 samples, their own processing
batch) mapped into the analysed 6-patient cohort, against the same 8 patients analysed
together from scratch (`add-batch --refit`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import yaml
import zarr
from distributed import Client

from pipeline.add_batch import add_batch, write_prediction_changes
from pipeline.cli import main
from pipeline.commands import validate_workdir
from pipeline.config import RunConfig, parse_config
from pipeline.errors import ImmunoprofileError, InputError
from pipeline.integrate import ModelFileError, map_to_reference
from pipeline.neighbourhoods._lineage import lineage_embedding
from pipeline.registry import STAGE_NAMES
from pipeline.results import open_results
from pipeline.simulate import SimulationResult
from pipeline.stages import run_stage

from ..conftest import ANALYSED_CONFIG, CommandRun
from ..report.test_report import open_in_browser

STAGES = ("qc", "preprocess", "integrate", "graph", "annotate", "abundance")
CONFIG = yaml.safe_load(ANALYSED_CONFIG)  # fmt: skip
BATCH = "samplesheet_late"


def _config(workdir: Path, samplesheet: Path) -> RunConfig:
    return parse_config({**CONFIG, "workdir": str(workdir), "samplesheet": str(samplesheet)})


def _checksums(root: Path, parts: list[str]) -> dict[str, str]:
    files = [f for part in parts for f in sorted((root / part).rglob("*")) if f.is_file()]
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.fixture(scope="module")
def analysed(analysed_small: CommandRun) -> Path:
    """The 6 main patients analysed through abundance by `immunoprofile run` with
    `CONFIG` (the session's shared workdir: tests copy it)."""
    return analysed_small.workdir


@pytest.fixture(scope="module")
def added(tmp_path_factory: pytest.TempPathFactory, client: Client, analysed: Path,
          small_cohort: SimulationResult) -> tuple[Path, dict[str, str], str]:  # fmt: skip
    """The late batch added to a copy of the analysed cohort: (workdir, the cohort's
    checksums before, what add-batch printed)."""
    workdir = tmp_path_factory.mktemp("added") / "work"
    shutil.copytree(analysed, workdir)
    before = _checksums(workdir, ["samples", "cohort.zarr"])
    assert small_cohort.late_samplesheet is not None
    cfg = _config(workdir, small_cohort.samplesheet)
    return workdir, before, add_batch(cfg, small_cohort.late_samplesheet, client)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory, analysed: Path,
            small_cohort: SimulationResult) -> Path:  # fmt: skip
    """All 8 patients analysed together: `add-batch --refit` on a copy of the cohort."""
    root = tmp_path_factory.mktemp("scratch")
    shutil.copytree(analysed, root / "work")
    cfg = root / "c.yaml"
    cfg.write_text(json.dumps({**CONFIG, "samplesheet": str(small_cohort.samplesheet)}))
    assert small_cohort.late_samplesheet is not None
    assert main(["add-batch", str(cfg), str(small_cohort.late_samplesheet), "--refit",
                 "--workdir", str(root / "work")]) == 0  # fmt: skip
    return root / "work"


def test_added_batch_leaves_the_cohort_untouched_and_agrees_with_from_scratch(
    added: tuple[Path, dict[str, str], str], scratch: Path, small_cohort: SimulationResult
) -> None:
    workdir, before, printed = added
    after = _checksums(workdir, ["samples", "cohort.zarr"])
    # every file of the cohort is byte for byte what it was; the new stores are extra
    assert {k: after.get(k) for k in before} == before
    late = pd.read_csv(small_cohort.late_samplesheet)["sample_id"].tolist()
    new_stores = {Path(k).parts[1] for k in after} - {Path(k).parts[1] for k in before}
    assert new_stores == {f"{s}.zarr" for s in late}
    assert "batch samplesheet_late: 6 samples" in printed and "abundance: 24 samples" in printed
    assert validate_workdir(workdir).n_stores == 24 + 2

    inc = open_results(workdir)
    full = ad.read_zarr(scratch / "cohort.zarr")
    assert not list((scratch / "batches").glob("*/cells.zarr"))
    assert sorted(inc.obs_names) == sorted(full.obs_names)
    cells = inc.obs_names[inc.obs["sample_id"].isin(late)]
    a, b = inc.obs.loc[cells], full.obs.loc[cells]
    assert (a["qc_pass"].to_numpy(bool) == b["qc_pass"].to_numpy(bool)).mean() > 0.99
    both = a["qc_pass"].to_numpy(bool) & b["qc_pass"].to_numpy(bool)
    for level in ("lineage", "b_subset"):
        rows = both & (a[level].notna() | b[level].notna()).to_numpy()
        agree = (a[level].astype(str)[rows] == b[level].astype(str)[rows]).mean()
        assert agree >= 0.95, (level, agree)
    # the new cells sit in the cohort's graph and UMAP
    n_cohort = int(inc.n_obs - len(cells))
    new_rows = np.flatnonzero(inc.obs["sample_id"].isin(late).to_numpy())
    kept_new = new_rows[inc.obs["qc_pass"].to_numpy(bool)[new_rows]]
    # the new cells' label probabilities (the abundance stage's label draws)
    prob = inc.obsm["b_subset_probabilities"][new_rows]
    is_b = (a["lineage"] == "B").to_numpy()
    assert np.allclose(prob[is_b].sum(axis=1), 1.0, atol=1e-4) and np.isnan(prob[~is_b]).all()
    edges = inc.obsp["connectivities"][kept_new]
    assert (edges.getnnz(axis=1) >= 15).all() and edges[:, n_cohort:].nnz == 0
    assert np.isfinite(inc.obsm["X_umap"][kept_new]).all()
    assert inc.obs.loc[inc.obs_names[kept_new], "leiden_1"].notna().all()

    # abundance with the batch: every estimate inside the from-scratch 95% CI
    keys = ["cell_type", "denominator", "contrast", "method"]
    got = pd.read_csv(workdir / "abundance" / "tests.csv")
    ref = pd.read_csv(scratch / "abundance" / "tests.csv")
    m = got.merge(ref, on=keys, suffixes=("", "_scratch")).dropna(
        subset=["estimate", "estimate_scratch"]
    )
    assert len(m) > 0.9 * len(ref.dropna(subset=["estimate"]))
    inside = m["estimate"].between(m["ci_low_scratch"], m["ci_high_scratch"])
    assert inside.all(), m.loc[~inside, [*keys, "estimate", "ci_low_scratch", "ci_high_scratch"]]


def test_the_change_report_says_what_the_batch_brought(
    added: tuple[Path, dict[str, str], str],
) -> None:
    workdir, _, printed = added
    report = json.loads((workdir / "batches" / BATCH / "changes.json").read_text())
    samples = pd.DataFrame(report["samples"])
    assert len(samples) == 6 and report["flagged"] == []
    assert samples["mapping_ratio"].between(0.7, 1.4).all()
    assert (samples["kept_fraction"] > 0.8).all() and (samples["b_cells"] > 0).all()
    before = pd.read_csv(workdir / "batches" / BATCH / "tests_before.csv")
    assert len(before) and report["moved"] is not None
    md = (workdir / "batches" / BATCH / "changes.md").read_text()
    assert "## New samples" in md and "P007_m0" in md and "Samples that map poorly: none" in md
    assert "changes: 6 new samples" in printed
    # the workdir's report was refreshed with a section on the batch
    assert "report: " in printed
    seen = open_in_browser(workdir / "report" / "index.html", workdir.parent / "report.png")
    assert seen["headings"][-2:] == ["What changed (added batches)", "Provenance"]
    assert seen["errors"] == []
    html = (workdir / "report" / "index.html").read_text()
    assert "Batch samplesheet_late" in html and "P007_m0" in html


def test_adding_it_again_is_a_no_op_and_run_skips_everything(
    added: tuple[Path, dict[str, str], str], client: Client, small_cohort: SimulationResult,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    workdir = added[0]
    everything = _checksums(workdir, ["."])
    cfg = _config(workdir, small_cohort.samplesheet)
    assert small_cohort.late_samplesheet is not None
    out = add_batch(cfg, small_cohort.late_samplesheet, client)
    assert "mapped before with the same inputs, skipped" in out
    assert "abundance: unchanged inputs and parameters, skipped" in out
    # the same samples under another batch name would count their cells twice: refused
    late = pd.read_csv(small_cohort.late_samplesheet)["sample_id"].tolist()
    with pytest.raises(InputError) as err:
        add_batch(cfg, small_cohort.late_samplesheet, client, name="again")
    assert f"6 sample(s) are already present: {', '.join(late)} in batch 'samplesheet_late'" in str(
        err.value
    )
    assert not (workdir / "batches" / "again").exists()
    # and so are the cohort's own samples
    with pytest.raises(InputError, match=r"1 sample\(s\) are already present: \S+ in the cohort"):
        add_batch(cfg, _sheet(workdir.parent / "own.csv", [_first_row(small_cohort)]), client)
    # `run` finds every stage current, the batch's mapping and the abundance included
    cfg_file = workdir.parent / "c.yaml"
    cfg_file.write_text(json.dumps(CONFIG))
    assert main(["run", str(cfg_file), "--workdir", str(workdir), "--samplesheet",
                 str(small_cohort.samplesheet)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    skipped = len(STAGE_NAMES) - 1  # every stage but ingest, which checks its samples
    assert printed.count("unchanged inputs and parameters, skipped") == skipped, printed
    assert "batch " not in printed
    logs = ("logs/stages.jsonl", "logs/run.log")  # appended by every command
    everything = {k: v for k, v in everything.items() if k not in logs}
    assert {k: v for k, v in _checksums(workdir, ["."]).items() if k not in logs} == everything


def _write_h5ad(
    path: Path, counts_h5: Path, genes: np.ndarray, *, counts_of: np.ndarray | None = None
) -> None:
    """A 10x HDF5 sample as h5ad with the genes at ``genes``; their counts are those of
    the genes at ``counts_of`` (default: their own)."""
    with h5py.File(counts_h5) as f:  # 10x HDF5 (v3): matrix/{data,indices,indptr,shape,features}
        g = f["matrix"]
        shape = tuple(g["shape"][:])
        x = sp.csc_matrix((g["data"][:], g["indices"][:], g["indptr"][:]), shape=shape).T.tocsr()
        ids = g["features"]["id"][:].astype(str)
        names = g["features"]["name"][:].astype(str)
        barcodes = g["barcodes"][:].astype(str)
    var = pd.DataFrame({"gene_symbols": names[genes]}, index=ids[genes])
    counts = x[:, genes if counts_of is None else counts_of].astype(np.float32)
    ad.AnnData(X=counts, obs=pd.DataFrame(index=barcodes), var=var).write_h5ad(path)


def _first_row(cohort: SimulationResult) -> dict[str, object]:
    """The cohort's first samplesheet row, its path absolute."""
    first = pd.read_csv(cohort.samplesheet).iloc[0].to_dict()
    return {**first, "path": str((cohort.samplesheet.parent / str(first["path"])).resolve())}


def _sheet(path: Path, rows: list[dict[str, object]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_bad_batches_fail_clearly_and_write_nothing(
    tmp_path: Path, analysed: Path, client: Client, small_cohort: SimulationResult
) -> None:
    workdir = tmp_path / "work"
    shutil.copytree(analysed, workdir)
    cfg = _config(workdir, small_cohort.samplesheet)
    everything = _checksums(workdir, ["."])
    late = pd.read_csv(small_cohort.late_samplesheet)
    source = small_cohort.samplesheet.parent / late.loc[0, "path"]
    row = {**late.iloc[0].to_dict(), "sample_id": "NEW_1", "path": str(tmp_path / "new.h5ad")}

    # a gene panel lacking some of the cohort's genes
    with h5py.File(source) as f:
        n_genes = len(f["matrix"]["features"]["id"])
    _write_h5ad(tmp_path / "new.h5ad", source, np.arange(n_genes - 40))
    with pytest.raises(InputError, match=r"'NEW_1'.*lack 40 of the cohort's 6000 genes.*--refit"):
        add_batch(cfg, _sheet(tmp_path / "b1.csv", [row]), client)
    # batch names that are not folder names, given or taken from the samplesheet's name
    for name in ("..", ".", ".hidden", "a/b", "x" * 101):
        with pytest.raises(ImmunoprofileError, match=r"batch name .* \(--name\)"):
            add_batch(cfg, _sheet(tmp_path / "b0.csv", [row]), client, name=name)
    with pytest.raises(ImmunoprofileError, match=r"'\.\.' \(taken from the samplesheet"):
        add_batch(cfg, _sheet(tmp_path / "...csv", [row]), client)
    # an existing sample id with another input
    first = _first_row(small_cohort)
    clash = {**first, "path": str(source)}
    with pytest.raises(
        InputError, match=rf"sample '{first['sample_id']}' is already in the cohort"
    ):
        add_batch(cfg, _sheet(tmp_path / "b2.csv", [clash]), client)
    # a known patient with another response
    other = "responder" if first["response"] == "non_responder" else "non_responder"
    wrong = {**late.iloc[0].to_dict(), "sample_id": "NEW_2", "patient_id": first["patient_id"],
             "response": other, "path": str(source)}  # fmt: skip
    with pytest.raises(InputError, match=rf"patient '{first['patient_id']}' has response"):
        add_batch(cfg, _sheet(tmp_path / "b3.csv", [wrong]), client)
    assert _checksums(workdir, ["abundance", "cohort.zarr"]) == {
        k: v for k, v in everything.items() if k.startswith(("abundance", "cohort.zarr"))
    }
    assert not (workdir / "batches" / "b1").exists() and not (workdir / "batches" / "b2").exists()
    assert not (workdir / "samples" / "NEW_1.zarr").exists()

    # a sample whose genes are shuffled resembles no cohort cell: it is added but flagged
    # (without the expression models and report, which add-batch then leaves out: not
    # what this checks, and ~25 s)
    shutil.rmtree(workdir / "expression")
    shutil.rmtree(workdir / "report")
    shuffled = np.random.default_rng(0).permutation(n_genes)
    _write_h5ad(tmp_path / "odd.h5ad", source, np.arange(n_genes), counts_of=shuffled)
    odd = {**row, "sample_id": "ODD_1", "path": str(tmp_path / "odd.h5ad")}
    out = add_batch(cfg, _sheet(tmp_path / "odd.csv", [odd]), client)
    report = json.loads((workdir / "batches" / "odd" / "changes.json").read_text())
    assert report["flagged"] == ["ODD_1"] and "mapping poor for 1 (ODD_1)" in out
    assert "label confidence" in report["samples"][0]["maps_poorly"]
    assert not (workdir / "expression").exists() and "expression changes" not in out


def test_a_cohort_not_analysed_is_refused(tmp_path: Path, ingested: Path, client: Client,
                                          small_cohort: SimulationResult) -> None:  # fmt: skip
    workdir = tmp_path / "work"
    shutil.copytree(ingested, workdir)
    assert small_cohort.late_samplesheet is not None
    with pytest.raises(ImmunoprofileError, match="not analysed with this config"):
        add_batch(_config(workdir, small_cohort.samplesheet), small_cohort.late_samplesheet, client)


@pytest.mark.slow  # ~16 s (the default suite's time budget)
def test_an_interrupted_add_batch_resumes_to_the_same_result(
    tmp_path: Path, analysed: Path, added: tuple[Path, dict[str, str], str], client: Client,
    small_cohort: SimulationResult,
) -> None:  # fmt: skip
    workdir = tmp_path / "work"
    shutil.copytree(analysed, workdir)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps({**CONFIG, "workdir": str(workdir),
                                    "samplesheet": str(small_cohort.samplesheet)}))  # fmt: skip
    assert small_cohort.late_samplesheet is not None
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "add-batch", str(cfg_file),
         str(small_cohort.late_samplesheet)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    marker = workdir / "batches" / BATCH / "tests_before.csv"  # written after ingest
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (workdir / "batches" / BATCH / "cells.zarr").exists()

    add_batch(_config(workdir, small_cohort.samplesheet), small_cohort.late_samplesheet, client)
    done = added[0]
    for part in ["abundance/tests.csv", "abundance/counts.csv", f"batches/{BATCH}/changes.json"]:
        assert (workdir / part).read_bytes() == (done / part).read_bytes(), part
    got = ad.read_zarr(workdir / "batches" / BATCH / "cells.zarr")
    want = ad.read_zarr(done / "batches" / BATCH / "cells.zarr")
    pd.testing.assert_frame_equal(got.obs, want.obs)
    for key in want.obsm:
        np.testing.assert_array_equal(got.obsm[key], want.obsm[key])


@pytest.mark.slow
def test_run_maps_batches_again_when_the_cohort_is_reanalysed(
    tmp_path: Path, added: tuple[Path, dict[str, str], str], small_cohort: SimulationResult,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    workdir = tmp_path / "work"
    shutil.copytree(added[0], workdir)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps({**CONFIG, "graph": {"resolutions": [0.8]}}))
    args = ["run", str(cfg_file), "--workdir", str(workdir), "--samplesheet",
            str(small_cohort.samplesheet), "--until", "abundance"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "batch samplesheet_late: 6 samples" in printed and "abundance: 24 samples" in printed
    layer = ad.read_zarr(workdir / "batches" / BATCH / "cells.zarr")
    assert "leiden_0.8" in layer.obs and "leiden_1" not in layer.obs
    assert open_results(workdir).n_obs == ad.read_zarr(added[0] / "cohort.zarr").n_obs + layer.n_obs


@pytest.mark.slow
def test_a_cohort_integrated_with_scvi_takes_a_batch_too(
    tmp_path: Path, client: Client, small_cohort: SimulationResult, scratch: Path, analysed: Path
) -> None:
    """integrate.method both, graph on X_scvi: the new cells are encoded by the saved
    model (no retraining) and their labels agree with the from-scratch Harmony run's.
    The analysed cohort re-integrated from its QC and PCA (without expression models and
    report, which add-batch then leaves out)."""
    workdir = tmp_path / "work"
    shutil.copytree(analysed, workdir)
    shutil.rmtree(workdir / "expression")
    shutil.rmtree(workdir / "report")
    cfg = parse_config({**CONFIG, "workdir": str(workdir),
                        "samplesheet": str(small_cohort.samplesheet),
                        "integrate": {"method": "both", "scvi_max_epochs": 60,
                                      "scvi_max_cells": 3000},
                        "graph": {"use_rep": "X_scvi"}})  # fmt: skip
    for stage in STAGES[2:]:  # integrate onwards
        run_stage(stage, cfg, client)
    model = _checksums(workdir, ["models"])
    assert small_cohort.late_samplesheet is not None
    add_batch(cfg, small_cohort.late_samplesheet, client)
    assert _checksums(workdir, ["models"]) == model
    layer = ad.read_zarr(workdir / "batches" / BATCH / "cells.zarr")
    kept = layer.obs["qc_pass"].to_numpy(bool)
    assert np.isfinite(layer.obsm["X_scvi"][kept]).all()
    assert np.isfinite(layer.obsm["X_pca_harmony"][kept]).all()
    full = ad.read_zarr(scratch / "cohort.zarr").obs.loc[layer.obs_names[kept]]
    agree = (layer.obs.loc[kept, "lineage"].astype(str) == full["lineage"].astype(str)).mean()
    assert agree >= 0.95
    # the encoder never saw the new processing batch: its cells sit further from their
    # nearest cohort cells than Harmony-mapped ones (ratio ~1.0), measured 1.1-1.6 here
    # (20 epochs with a 5-epoch KL warm-up gave up to 2.2: this checks the mapping, 60);
    # above add_batch.poor_mapping_ratio (1.5) they are flagged, which --refit resolves
    report = json.loads((workdir / "batches" / BATCH / "changes.json").read_text())
    ratios = pd.DataFrame(report["samples"]).set_index("sample_id")["mapping_ratio"]
    assert ratios.between(0.8, 2.0).all(), ratios
    assert set(report["flagged"]) == set(ratios.index[ratios > 1.5])

    # a model.pt other than the one integrate wrote (and recorded) is never loaded
    shutil.rmtree(workdir / "batches" / BATCH)
    (workdir / "models" / "scvi" / "model.pt").write_bytes(b"not the trained model")
    with pytest.raises(ModelFileError, match=r"models/scvi is not the one the integrate stage"):
        add_batch(cfg, small_cohort.late_samplesheet, client)


def test_the_expression_models_are_refitted_with_the_batchs_samples(
    added: tuple[Path, dict[str, str], str], small_cohort: SimulationResult, analysed: Path
) -> None:
    workdir, _, printed = added
    assert "expression: " in printed
    pseudobulk = ad.read_zarr(workdir / "expression" / "pseudobulk.zarr")
    assert small_cohort.late_samplesheet is not None
    late = set(pd.read_csv(small_cohort.late_samplesheet)["sample_id"])
    assert late <= set(pseudobulk.obs["sample_id"])
    de = pd.read_csv(workdir / "expression" / "de.csv")
    assert de["n_samples"].max() > 18  # the cohort's 18 samples and the batch's
    # only the batch's samples were summed; the cohort's rows are the earlier run's
    assert "(6 samples summed, 18 unchanged)" in printed
    earlier = ad.read_zarr(analysed / "expression" / "pseudobulk.zarr")
    kept = pseudobulk[earlier.obs_names]
    np.testing.assert_array_equal(np.asarray(kept.X), np.asarray(earlier.X))
    summary = json.loads((workdir / "expression" / "summary.json").read_text())
    assert summary["samples_summed"] == 6 and len(summary["samples_reused"]) == 18

    # the genes whose call moved, checked against the two DE tables
    before = pd.read_csv(workdir / "batches" / BATCH / "de_before.csv")
    assert before.equals(pd.read_csv(analysed / "expression" / "de.csv"))
    changes = pd.read_csv(workdir / "batches" / BATCH / "expression_changes.csv")
    keys = ["level", "cell_type", "gene", "contrast", "method"]
    both = de.merge(before, on=keys, suffixes=("", "_before"))
    sig, sig_before = both["qvalue"] < 0.05, both["qvalue_before"] < 0.05
    sign = np.sign(both["log2fc"]) != np.sign(both["log2fc_before"])
    flipped = both[(sig != sig_before) | (sig & sig_before & sign)]
    listed = changes[changes["change"] != "newly tested, significant"]
    assert set(map(tuple, flipped[keys].to_numpy())) == set(map(tuple, listed[keys].to_numpy()))
    assert f"expression changes: {len(changes):,} gene calls moved" in printed


def test_the_saved_model_predicts_the_batchs_new_patients(
    added: tuple[Path, dict[str, str], str], small_cohort: SimulationResult, tmp_path: Path
) -> None:
    """add-batch re-ran predict (skipped: 3 cohort patients per class); with the minimum
    lowered, `immunoprofile predict` trains on the cohort's 6 patients only and gives
    the batch's 2 new patients a probability, the CV models' range and flags."""
    workdir, _, printed = added
    assert "predict: skipped: 3 responders and 3 non-responders" in printed
    shutil.copytree(workdir, tmp_path / "w")
    config = {**CONFIG, "workdir": str(tmp_path / "w"), "samplesheet": str(small_cohort.samplesheet),
              "predict": {"min_patients_per_class": 3, "permutations": 49}}  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["predict", str(tmp_path / "c.yaml")]) == 0
    folder = tmp_path / "w" / "predict"
    new = pd.read_csv(folder / "new_patients.csv")
    assert small_cohort.late_samplesheet is not None
    late = pd.read_csv(small_cohort.late_samplesheet)
    baseline = late[late["timepoint_months"] == 0]
    assert sorted(new["patient_id"]) == sorted(baseline["patient_id"])
    assert set(new["sample_id"]) == set(baseline["sample_id"]) and (new["batch"] == BATCH).all()
    assert new["p_non_responder"].between(0, 1).all() and (new["p_low"] <= new["p_high"]).all()
    trained = pd.read_csv(folder / "patients.csv")
    assert len(trained) == 6 and not set(trained["patient_id"]) & set(new["patient_id"])
    assert json.loads((folder / "metrics.json").read_text())["n_responder"] == 3
    # the change report: skipped in the batch's own run, the predictions once fitted
    changes = workdir / "batches" / BATCH / "changes.md"
    assert "## Prediction of non-response (new patients)" in changes.read_text()
    assert "No prediction: the model is not fitted" in changes.read_text()
    line = write_prediction_changes(parse_config(config), BATCH)
    text = (tmp_path / "w" / "batches" / BATCH / "changes.md").read_text()
    assert "predictions: 2 new patient(s)" in line
    assert text.count("## Prediction of non-response (new patients)") == 1
    assert all(p in text for p in new["patient_id"]) and "No prediction" not in text


def test_validate_checks_the_batches_too(
    tmp_path: Path, added: tuple[Path, dict[str, str], str]
) -> None:
    from pipeline.errors import StoreError

    workdir = tmp_path / "work"
    shutil.copytree(added[0], workdir)
    shutil.rmtree(workdir / "samples" / "P007_m0.zarr")
    obsm = workdir / "batches" / BATCH / "cells.zarr" / "obsm"
    chunk = next(p for p in sorted(obsm.rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\0" * 16)
    with pytest.raises(StoreError) as err:
        validate_workdir(workdir)
    assert "P007_m0.zarr: store of batch 'samplesheet_late' is missing" in str(err.value)
    assert f"batches/{BATCH}/cells.zarr" in str(err.value)


def test_the_batchs_cells_are_counted_into_the_cohorts_neighbourhoods(
    added: tuple[Path, dict[str, str], str], small_cohort: SimulationResult, analysed: Path
) -> None:
    """The neighbourhoods stay the cohort's; a batch cell joins those whose index cell it
    is no farther from than the neighbourhood's k-th member; the models are refitted."""
    workdir, _, printed = added
    assert "neighbourhoods: " in printed
    before = ad.read_zarr(analysed / "neighbourhoods" / "nhoods.zarr")
    after = ad.read_zarr(workdir / "neighbourhoods" / "nhoods.zarr")
    pd.testing.assert_frame_equal(after.obs, before.obs)  # the same neighbourhoods
    assert small_cohort.late_samplesheet is not None
    late = list(pd.read_csv(small_cohort.late_samplesheet)["sample_id"])
    assert set(late) <= set(after.var_names)
    np.testing.assert_array_equal(np.asarray(after[:, before.var_names].X), np.asarray(before.X))
    # the batch's counts, recomputed from its cells' embedding
    cohort = zarr.open_group(str(workdir / "cohort.zarr"), mode="r")
    layer = zarr.open_group(str(workdir / "batches" / BATCH / "cells.zarr"), mode="r")
    obs = ad.io.read_elem(layer["obs"])
    sample = obs["sample_id"].astype(str).to_numpy()
    family = after.obs["denominator"].astype(str).to_numpy()

    def check(cols: np.ndarray, index: np.ndarray, x_batch: np.ndarray, cells: np.ndarray) -> None:
        distance = np.sqrt(((x_batch[:, None, :] - index[None, :, :]) ** 2).sum(axis=2))
        inside = (distance <= after.obs["kth_distance"].to_numpy()[cols][None, :]) & cells[:, None]
        for s in late:
            np.testing.assert_array_equal(
                np.asarray(after[cols, s].X).ravel(), inside[sample == s].sum(axis=0)
            )

    pbmc = np.flatnonzero(family == "PBMC")
    x_cohort = np.asarray(cohort["obsm/X_pca_harmony"][...])
    check(pbmc, x_cohort[after.obs["index_cell"].to_numpy()[pbmc]],
          np.asarray(layer["obsm/X_pca_harmony"][...]), obs["qc_pass"].to_numpy(bool))  # fmt: skip
    # the B family: the batch's B cells mapped (Symphony) onto the Harmony over the
    # cohort's patients of the cohort's B cells, and counted into the B neighbourhoods
    cfg = _config(workdir, small_cohort.samplesheet)
    cohort_obs = ad.io.read_elem(cohort["obs"])
    rows = np.flatnonzero(cohort_obs["qc_pass"].to_numpy(bool)
                          & (cohort_obs["lineage"].astype(str) == "B").to_numpy())  # fmt: skip
    harmony = lineage_embedding(
        np.asarray(cohort["obsm/X_pca"][...])[rows],
        cohort_obs["patient_id"].astype(str).to_numpy()[rows],
        max_cells=cfg.neighbourhoods.lineage_harmony_max_cells,
        theta=cfg.integrate.harmony_theta, max_iter=cfg.integrate.harmony_max_iter,
        seed=cfg.neighbourhoods.seed,
    )  # fmt: skip
    x_b, reference = harmony.embedding, harmony.reference
    b_cols = np.flatnonzero(family == "B")
    in_b = obs["qc_pass"].to_numpy(bool) & (obs["lineage"].astype(str) == "B").to_numpy()
    points, _ = map_to_reference(np.asarray(layer["obsm/X_pca"][...])[in_b],
                                 obs["patient_id"].astype(str).to_numpy()[in_b], reference)  # fmt: skip
    mapped = np.zeros((len(obs), points.shape[1]))
    mapped[in_b] = points
    index_b = x_b[np.searchsorted(rows, after.obs["index_cell"].to_numpy()[b_cols])]
    check(b_cols, index_b, mapped, in_b)
    assert np.asarray(after[b_cols, late].X).sum() > 0  # the batch's B cells were counted
    tests = pd.read_csv(workdir / "neighbourhoods" / "tests.csv")
    assert len(tests) == len(pd.read_csv(analysed / "neighbourhoods" / "tests.csv"))

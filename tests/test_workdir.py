"""The workdir's paths and typed records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.errors import ImmunoprofileError
from pipeline.workdir import IngestRecord, Workdir


def test_paths_are_spelled_in_one_place(tmp_path: Path) -> None:
    w = Workdir(tmp_path)
    assert Workdir(w).root == tmp_path  # a Workdir is also a path-like
    assert w.cohort == tmp_path / "cohort.zarr"
    assert w.sample_store("S1") == tmp_path / "samples" / "S1.zarr"
    assert w.qc_summary == tmp_path / "qc" / "summary.csv"
    assert w.abundance.tests == tmp_path / "abundance" / "tests.csv"
    assert w.abundance.manifest == tmp_path / "abundance" / "manifest.json"
    assert w.report.index == tmp_path / "report" / "index.html"
    assert w.annotate.dotplot_png("b_subset") == tmp_path / "annotate" / "dotplot_b_subset.png"
    assert w.batch("late").cells == tmp_path / "batches" / "late" / "cells.zarr"
    assert w.batch("late").name == "late"


def test_the_ingest_record_keeps_its_bytes(tmp_path: Path) -> None:
    """The ingest digest is the hash of ingest.json: the typed record writes the same
    keys in the same order as the stage always has."""
    record = IngestRecord(samples=["A", "B"], genes=["g1"], gene_symbols=["G1"],
                          samplesheet="s.csv", inputs={"A": "a.h5", "B": "b.h5"},
                          uniform_genes=True, n_cells=10, immunoprofile_version="0.1.0")  # fmt: skip
    w = Workdir(tmp_path)
    w.write_ingest_record(record)
    data = json.loads(w.ingest_record_file.read_text())
    assert list(data) == ["stage", "immunoprofile_version", "samplesheet", "samples", "inputs",
                          "gene_policy", "genes", "gene_symbols", "dropped_genes",
                          "uniform_genes", "n_cells"]  # fmt: skip
    assert w.ingest_record_file.read_text() == json.dumps(data, indent=1)
    assert w.ingest_record() == record


def test_a_missing_or_damaged_record_is_named(tmp_path: Path) -> None:
    w = Workdir(tmp_path)
    with pytest.raises(ImmunoprofileError, match=r"no ingest\.json: run the ingest stage first"):
        w.ingest_record()
    w.ingest_record_file.write_text('{"samples": ["A"')
    with pytest.raises(ImmunoprofileError, match=r"ingest\.json is damaged"):
        w.ingest_record()


def test_batch_layers_are_the_complete_ones(tmp_path: Path) -> None:
    import anndata as ad
    import pandas as pd

    from pipeline.store import write_anndata_store

    w = Workdir(tmp_path)
    obs = pd.DataFrame({"x": [1, 2]}, index=["a", "b"])
    info = {"kind": "batch", "digest": "d1", "samples": ["S9"], "reference": "r"}
    write_anndata_store(w.batch("late").cells, ad.AnnData(obs=obs), info)
    w.batch("broken").cells.mkdir(parents=True)  # a killed run: no manifest
    layers = w.batch_layers()
    assert list(layers) == ["late"]
    assert layers["late"].samples == ["S9"] and layers["late"].digest == "d1"
    assert layers["late"].reference == "r"
    assert [b.name for b in w.batch_folders()] == ["broken", "late"]
    assert w.result_stores() == [w.cohort, w.batch("late").cells]

"""`validate` catches truncated, corrupt, deleted chunks and arrays, naming each."""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import pytest
from distributed import Client

from pipeline.cli import main
from pipeline.commands import validate_workdir
from pipeline.errors import StoreError
from pipeline.ingest import ingest_samples, read_samplesheet
from pipeline.workdir import Workdir
from tests.conftest import CommandRun
from tests.ingest.helpers import barcodes, genes, random_counts, sheet_row, write_input, write_sheet


@pytest.fixture
def workdir(tmp_path: Path, client: Client) -> Path:
    ids, symbols = genes(200)
    rows = []
    for i, name in enumerate(("A", "B", "C")):
        # enough nonzeros that X/data and X/indices span several chunks
        counts = random_counts(20 + i, n_cells=12_000, n_genes=200)
        write_input(tmp_path / "in", name, "h5", counts, barcodes(12_000), ids, symbols)
        rows.append(sheet_row(name, f"in/{name}.h5", patient_id="P1", timepoint_months=3 * i))
    sheet = write_sheet(tmp_path / "sheet.csv", rows)
    ingest_samples(read_samplesheet(sheet), workdir=tmp_path / "w", client=client)
    return tmp_path / "w"


def test_intact_stores_validate_and_open(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert validate_workdir(workdir).n_stores == 3
    assert main(["validate", str(workdir)]) == 0
    assert "3 store(s)" in capsys.readouterr().out
    for name in ("A", "B", "C"):
        assert ad.read_zarr(Workdir(workdir).sample_store(name)).n_obs == 12_000


def test_truncated_and_deleted_chunks_are_named(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_chunks = sorted((Workdir(workdir).sample_store("A") / "X" / "data" / "c").iterdir())
    assert len(a_chunks) >= 2
    truncated = a_chunks[1]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    deleted = sorted((Workdir(workdir).sample_store("B") / "X" / "indices" / "c").iterdir())[0]
    deleted.unlink()
    with pytest.raises(StoreError) as err:
        validate_workdir(workdir)
    message = str(err.value)
    assert f"{Workdir(workdir).sample_store('A')}: array 'X/data' cannot be read" in message
    assert (
        f"{Workdir(workdir).sample_store('B')}: array 'X/indices': chunk file(s) X/indices/c/0 missing"
        in message
    )
    assert "C.zarr" not in message
    assert main(["validate", str(workdir)]) == 1
    assert "array 'X/data'" in capsys.readouterr().err


def test_deleted_indptr_is_caught_although_anndata_reads_it(workdir: Path) -> None:
    store = Workdir(workdir).sample_store("C")
    shutil.rmtree(store / "X" / "indptr")
    with pytest.raises(StoreError, match=rf"{store}: array 'X/indptr' is missing"):
        validate_workdir(workdir)


def test_changed_values_with_intact_files_fail_the_checksum(workdir: Path) -> None:
    import zarr

    arr = zarr.open_array(str(Workdir(workdir).sample_store("A") / "X" / "data"), mode="r+")
    arr[0] = arr[0] + 1
    with pytest.raises(StoreError, match="array 'X/data' does not match its manifest checksum"):
        validate_workdir(workdir)


def test_missing_store_listed_in_the_stage_record(workdir: Path) -> None:
    shutil.rmtree(Workdir(workdir).sample_store("B"))
    with pytest.raises(StoreError, match=r"B\.zarr: store is missing"):
        validate_workdir(workdir)


def test_validate_an_empty_folder(tmp_path: Path) -> None:
    assert main(["validate", str(tmp_path)]) == 1


def test_a_corrupt_chunk_of_cohort_zarr_is_named(
    tmp_path: Path, analysed_small: CommandRun
) -> None:
    """The per-cell results, not only the sample stores: a chunk of the UMAP overwritten."""
    work = tmp_path / "work"
    shutil.copytree(analysed_small.workdir, work)
    umap = Workdir(work).cohort / "obsm" / "X_umap"
    chunk = next(p for p in sorted(umap.rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"\0" * chunk.stat().st_size)
    with pytest.raises(StoreError) as err:
        validate_workdir(work)
    assert f"{Workdir(work).cohort}: array 'obsm/X_umap'" in str(err.value)
    assert "samples" not in str(err.value)

"""The ingest stage on a real LocalCluster: round trips, idempotence, bad matrices."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import zarr
from distributed import Client

from pipeline.cohort import CellCounts, open_cohort, open_counts
from pipeline.errors import InputError
from pipeline.ingest import ingest_samples, read_samplesheet
from pipeline.workdir import Workdir
from tests.ingest.helpers import (
    FORMATS,
    barcodes,
    genes,
    gzip_file,
    random_counts,
    sheet_row,
    write_input,
    write_sheet,
)


def _ingest(sheet: Path, workdir: Path, client: Client, **kw: object):
    return ingest_samples(read_samplesheet(sheet), workdir=workdir, client=client, **kw)  # type: ignore[arg-type]


def _store_mtimes(workdir: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in (workdir / "samples").rglob("*") if p.is_file()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_every_count(tmp_path: Path, client: Client, fmt: str) -> None:
    ids, symbols = genes()
    counts = random_counts(3)
    cells = barcodes(60)
    path = write_input(tmp_path / "in", "s1", fmt, counts, cells, ids, symbols)
    sheet = write_sheet(
        tmp_path / "sheet.csv", [sheet_row("S1", str(path.relative_to(tmp_path)), age=50)]
    )
    result = _ingest(sheet, tmp_path / "w", client)
    assert result.n_written == 1 and result.n_cells == 60

    store = Workdir(tmp_path / "w").sample_store("S1")
    adata = ad.read_zarr(store)
    assert zarr.open_group(str(store), mode="r").metadata.zarr_format == 3
    assert isinstance(adata.X, sp.csr_matrix) and adata.X.dtype == np.int32
    assert (adata.X != counts).nnz == 0
    assert list(adata.obs_names) == [f"S1:{b}" for b in cells]
    assert list(adata.var_names) == list(ids)
    assert list(adata.var["gene_symbols"]) == list(symbols)
    assert (adata.obs["sample_id"] == "S1").all() and (adata.obs["age"] == 50).all()
    assert set(adata.obs.columns) >= {
        "barcode",
        "patient_id",
        "timepoint_months",
        "response",
        "batch",
    }
    # scanpy (1.11 reads zarr through anndata) computes on it directly
    sc.pp.calculate_qc_metrics(adata, percent_top=None, inplace=True)
    assert np.array_equal(
        adata.obs["total_counts"].to_numpy(), np.asarray(counts.sum(axis=1)).ravel()
    )


def test_gzipped_v2_and_plain_v3_mtx(tmp_path: Path, client: Client) -> None:
    """Layouts scanpy's reader does not take: Cell Ranger 2 gzipped, Cell Ranger 3 plain."""
    ids, symbols = genes()
    counts = random_counts(4)
    v2 = write_input(tmp_path / "in", "v2", "mtx_v2", counts, barcodes(60), ids, symbols)
    for name in ("matrix.mtx", "genes.tsv", "barcodes.tsv"):
        gzip_file(v2 / name)
    v3 = write_input(tmp_path / "in", "v3", "mtx", counts, barcodes(60), ids, symbols)
    for name in ("matrix.mtx.gz", "features.tsv.gz", "barcodes.tsv.gz"):
        gz = v3 / name
        (v3 / name.removesuffix(".gz")).write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()
    sheet = write_sheet(
        tmp_path / "sheet.csv", [sheet_row("S1", "in/v2"), sheet_row("S2", "in/v3")]
    )
    _ingest(sheet, tmp_path / "w", client)
    for sid in ("S1", "S2"):
        adata = ad.read_zarr(Workdir(tmp_path / "w").sample_store(sid))
        assert (adata.X != counts).nnz == 0
        assert list(adata.var_names) == list(ids) and list(adata.var["gene_symbols"]) == list(
            symbols
        )


@pytest.fixture
def two_samples(tmp_path: Path) -> Path:
    ids, symbols = genes()
    write_input(tmp_path / "in", "a", "h5", random_counts(5), barcodes(60), ids, symbols)
    write_input(
        tmp_path / "in", "b", "mtx", random_counts(6, n_cells=30), barcodes(30), ids, symbols
    )
    return write_sheet(
        tmp_path / "sheet.csv",
        [sheet_row("A", "in/a.h5"), sheet_row("B", "in/b", patient_id="P_A", timepoint_months=3)],
    )


def test_rerun_leaves_complete_samples_untouched_and_rebuilds_changed_ones(
    tmp_path: Path, client: Client, two_samples: Path
) -> None:
    workdir = tmp_path / "w"
    _ingest(two_samples, workdir, client)
    before = _store_mtimes(workdir)
    again = _ingest(two_samples, workdir, client)
    assert (again.n_written, again.n_unchanged) == (0, 2)
    assert _store_mtimes(workdir) == before

    ids, symbols = genes()
    new_counts = random_counts(99)
    write_input(tmp_path / "in2", "a", "h5", new_counts, barcodes(60), ids, symbols)
    (tmp_path / "in" / "a.h5").write_bytes((tmp_path / "in2" / "a.h5").read_bytes())
    third = _ingest(two_samples, workdir, client)
    assert (third.n_written, third.n_unchanged) == (1, 1)
    assert (ad.read_zarr(Workdir(workdir).sample_store("A")).X != new_counts).nnz == 0
    b_files = {k: v for k, v in before.items() if "/B.zarr/" in k}
    assert {k: v for k, v in _store_mtimes(workdir).items() if "/B.zarr/" in k} == b_files


def test_changed_metadata_rebuilds_the_store(
    tmp_path: Path, client: Client, two_samples: Path
) -> None:
    workdir = tmp_path / "w"
    _ingest(two_samples, workdir, client)
    frame = pd.read_csv(two_samples)
    frame.loc[0, "batch"] = "b9"
    frame.to_csv(two_samples, index=False)
    result = _ingest(two_samples, workdir, client)
    assert (result.n_written, result.n_unchanged) == (1, 1)
    assert (ad.read_zarr(Workdir(workdir).sample_store("A")).obs["batch"] == "b9").all()


def test_manifest_records_inputs_and_totals(
    tmp_path: Path, client: Client, two_samples: Path
) -> None:
    workdir = tmp_path / "w"
    _ingest(two_samples, workdir, client)
    meta = json.loads((Workdir(workdir).sample_store("A") / "zarr.json").read_text())
    manifest = meta["attributes"]["immunoprofile_manifest"]
    counts = ad.read_zarr(Workdir(workdir).sample_store("A")).X
    assert manifest["n_obs"] == 60 and manifest["n_vars"] == 40
    assert manifest["nnz"] == counts.nnz and manifest["count_sum"] == int(counts.sum())
    assert set(manifest["inputs"]["sha256"]) == {"a.h5"}
    assert manifest["immunoprofile_version"]
    assert {"X/data", "X/indices", "X/indptr", "obs/_index"} <= set(manifest["arrays"])


def test_cohort_view_is_lazy_and_complete(
    tmp_path: Path, client: Client, two_samples: Path
) -> None:
    workdir = tmp_path / "w"
    _ingest(two_samples, workdir, client)
    cohort = open_cohort(workdir, chunk_cells=25)
    assert cohort.shape == (90, 40)
    assert cohort.X.chunks[0] == (25, 25, 10, 25, 5)
    assert cohort.X.chunks[1] == (40,)
    x = cohort.X.compute()
    expected = sp.vstack([random_counts(5), random_counts(6, n_cells=30)])
    assert (sp.csr_matrix(x) != expected).nnz == 0
    assert cohort.obs_names.is_unique
    assert list(cohort.obs["sample_id"].cat.categories) == ["A", "B"]
    assert cohort.obs["timepoint_months"].tolist() == [0] * 60 + [3] * 30
    # the counts-only view (annotate's): the same X and var, sample ids without the names
    counts = open_counts(workdir, chunk_cells=25)
    assert counts.X.chunks == cohort.X.chunks
    assert (sp.csr_matrix(counts.X.compute()) != expected).nnz == 0
    pd.testing.assert_frame_equal(counts.var, cohort.var)
    assert counts.obs["sample_id"].tolist() == cohort.obs["sample_id"].tolist()
    assert list(counts.obs.columns) == ["sample_id"]
    # no per-cell names held: positions, not text (an AnnData would make "0", "1", ...)
    assert isinstance(counts.obs.index, pd.RangeIndex) and counts.shape == cohort.shape
    with pytest.raises(ValueError, match="one obs row per cell"):
        CellCounts(X=counts.X, obs=counts.obs.iloc[:-1], var=counts.var, uns={})


def _bad_matrix_case(tmp_path: Path, case: str) -> tuple[Path, str]:
    """Write sample 'BAD' with one defect next to a good sample; return (sheet, expected)."""
    ids, symbols = genes()
    good = write_input(tmp_path / "in", "good", "h5", random_counts(7), barcodes(60), ids, symbols)
    counts = random_counts(8).astype(np.float32)
    cells = barcodes(60)
    fmt = "h5ad"
    expected = ""
    if case == "non_integer":
        counts.data[:3] = 0.5
        expected = "3 non-integer count(s) (e.g. 0.5, 0.5, 0.5)"
    elif case == "negative":
        counts.data[:2] = -1
        expected = "2 negative count(s)"
    elif case == "nan":
        counts.data[:1] = np.nan
        expected = "1 NaN count(s)"
    elif case == "above_int32":  # int64 counts: stored as int32 they would wrap negative
        counts = random_counts(8).astype(np.int64)
        counts.data[:2] = [2**31, 3_000_000_000]
        expected = "2 count(s) above 2,147,483,647, the largest count stored (e.g. 3000000000, "
    elif case == "above_int32_float":
        counts.data[:1] = 2.0**31
        expected = "1 count(s) above 2,147,483,647"
    elif case == "duplicate_barcodes":
        cells = cells.copy()
        cells[1] = cells[0]
        fmt = "h5"
        expected = "1 duplicate barcode(s) (e.g. 'BC000000-1')"
    path = write_input(tmp_path / "in", "bad", fmt, counts, cells, ids, symbols)
    sheet = write_sheet(
        tmp_path / "sheet.csv",
        [
            sheet_row("GOOD", str(good.relative_to(tmp_path))),
            sheet_row("BAD", str(path.relative_to(tmp_path))),
        ],
    )
    return sheet, f"sample 'BAD': {path.resolve()}: {expected}"


@pytest.mark.parametrize(
    "case",
    ["non_integer", "negative", "nan", "above_int32", "above_int32_float", "duplicate_barcodes"],
)
def test_bad_counts_name_the_sample_and_file(tmp_path: Path, client: Client, case: str) -> None:
    sheet, expected = _bad_matrix_case(tmp_path, case)
    with pytest.raises(InputError) as err:
        _ingest(sheet, tmp_path / "w", client)
    assert expected in str(err.value)
    samples = tmp_path / "w" / "samples"
    assert not Workdir(tmp_path / "w").sample_store("BAD").exists()
    assert [p.name for p in samples.iterdir()] == ["GOOD.zarr"]  # complete, nothing staged
    assert not (tmp_path / "w" / "ingest.json").exists()


def test_empty_sample(tmp_path: Path, client: Client) -> None:
    ids, symbols = genes()
    path = write_input(
        tmp_path / "in",
        "e",
        "h5",
        sp.csr_matrix((0, 40), dtype=np.int32),
        barcodes(0),
        ids,
        symbols,
    )
    sheet = write_sheet(tmp_path / "sheet.csv", [sheet_row("E", "in/e.h5")])
    with pytest.raises(InputError, match=rf"sample 'E': {path.resolve()} has no cells"):
        _ingest(sheet, tmp_path / "w", client)
    assert not (tmp_path / "w" / "samples" / "E.zarr").exists()


def test_feature_table_that_does_not_match_the_matrix(tmp_path: Path, client: Client) -> None:
    ids, symbols = genes()
    path = write_input(tmp_path / "in", "m", "mtx", random_counts(9), barcodes(60), ids, symbols)
    features = pd.read_csv(path / "features.tsv.gz", sep="\t", header=None)
    features.iloc[:-2].to_csv(path / "features.tsv.gz", sep="\t", header=False, index=False)
    sheet = write_sheet(tmp_path / "sheet.csv", [sheet_row("M", "in/m")])
    expected = "sample 'M': features.tsv.gz has 38 rows but matrix.mtx.gz has 40 genes"
    with pytest.raises(InputError, match=re.escape(expected)):
        _ingest(sheet, tmp_path / "w", client)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_or_truncated_matrix_file(tmp_path: Path, client: Client, damage: str) -> None:
    ids, symbols = genes()
    path = write_input(
        tmp_path / "in",
        "c",
        "h5",
        random_counts(10, n_cells=3000, n_genes=40),
        barcodes(3000),
        ids,
        symbols,
    )
    raw = path.read_bytes()
    path.write_bytes(b"not an hdf5 file" * 10 if damage == "garbage" else raw[: len(raw) // 2])
    sheet = write_sheet(tmp_path / "sheet.csv", [sheet_row("C", "in/c.h5")])
    with pytest.raises(InputError, match=rf"sample 'C': cannot read {path.resolve()} as 10x HDF5"):
        _ingest(sheet, tmp_path / "w", client)
    assert not (tmp_path / "w" / "samples" / "C.zarr").exists()


def test_gene_sets_that_differ(tmp_path: Path, client: Client) -> None:
    ids, symbols = genes()
    write_input(tmp_path / "in", "a", "h5", random_counts(11), barcodes(60), ids, symbols)
    for name, seed in (("b", 12), ("c", 13)):
        write_input(
            tmp_path / "in",
            name,
            "h5",
            random_counts(seed, n_genes=38),
            barcodes(60),
            ids[2:],
            symbols[2:],
        )
    sheet = write_sheet(
        tmp_path / "sheet.csv",
        [sheet_row("A", "in/a.h5"), sheet_row("B", "in/b.h5"), sheet_row("C", "in/c.h5")],
    )
    with pytest.raises(InputError) as err:
        _ingest(sheet, tmp_path / "w", client)
    message = str(err.value)
    assert (
        "sample 'B' has a different gene set from 'A': it lacks 2 of its genes "
        "(e.g. 'ENSG00000000000', 'ENSG00000000001') and has 0 others" in message
    )
    assert "samples 'C' have the same genes as 'B'" in message
    assert "gene_policy: intersect to keep the 38 genes" in message
    assert not any((tmp_path / "w" / "samples").iterdir())

    result = _ingest(sheet, tmp_path / "w", client, gene_policy="intersect")
    assert result.n_genes == 38 and result.dropped_genes == {"A": 2}
    cohort = open_cohort(tmp_path / "w")
    assert list(cohort.var_names) == list(ids[2:])
    assert list(cohort.var["gene_symbols"]) == list(symbols[2:])
    x = sp.csr_matrix(cohort.X.compute())
    assert (x[:60] != random_counts(11)[:, 2:]).nnz == 0
    assert (x[60:120] != random_counts(12, n_genes=38)).nnz == 0
    # the stores keep every input gene; only the cohort view intersects
    assert ad.read_zarr(Workdir(tmp_path / "w").sample_store("A")).n_vars == 40


def test_same_genes_in_another_order_are_aligned(tmp_path: Path, client: Client) -> None:
    ids, symbols = genes()
    order = np.random.default_rng(0).permutation(40)
    counts = random_counts(14)
    write_input(tmp_path / "in", "a", "h5", random_counts(15), barcodes(60), ids, symbols)
    write_input(
        tmp_path / "in", "b", "mtx", counts[:, order], barcodes(60), ids[order], symbols[order]
    )
    sheet = write_sheet(tmp_path / "sheet.csv", [sheet_row("A", "in/a.h5"), sheet_row("B", "in/b")])
    _ingest(sheet, tmp_path / "w", client)
    x = sp.csr_matrix(open_cohort(tmp_path / "w").X.compute())
    assert (x[60:] != counts).nnz == 0


def test_h5_v3_written_by_the_simulator_has_expected_layout(tmp_path: Path) -> None:
    ids, symbols = genes()
    path = write_input(tmp_path, "x", "h5", random_counts(1), barcodes(60), ids, symbols)
    with h5py.File(path) as f:
        assert list(f["matrix/shape"][:]) == [40, 60]

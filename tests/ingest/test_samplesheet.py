"""Samplesheet validation: each problem named, all problems at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.ingest import read_samplesheet
from tests.ingest.helpers import barcodes, genes, random_counts, sheet_row, write_input, write_sheet


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    ids, symbols = genes()
    for name in ("a", "b", "c"):
        write_input(tmp_path / "data", name, "h5", random_counts(1), barcodes(60), ids, symbols)
    return tmp_path


def _problems(sheet: Path) -> str:
    with pytest.raises(InputError) as err:
        read_samplesheet(sheet)
    message = str(err.value)
    assert str(sheet) in message
    return message


def test_a_valid_sheet_resolves_paths_and_types(inputs: Path) -> None:
    sheet = write_sheet(
        inputs / "sheet.csv",
        [
            sheet_row("S1", "data/a.h5", sex="F", age=41),
            sheet_row("S2", "data/b.h5", timepoint_months=3, sex="M", age=37),
        ],
    )
    rows = read_samplesheet(sheet)
    assert [r.sample_id for r in rows] == ["S1", "S2"]
    assert rows[0].path == (inputs / "data" / "a.h5").resolve()
    assert rows[1].metadata["timepoint_months"] == 3 and rows[1].metadata["age"] == 37
    assert rows[0].metadata["sex"] == "F" and "path" not in rows[0].metadata


def test_missing_required_column(inputs: Path) -> None:
    sheet = inputs / "sheet.csv"
    sheet.write_text("sample_id,patient_id,timepoint_months,path\nS1,P1,0,data/a.h5\n")
    message = _problems(sheet)
    assert "missing required column(s) 'response', 'batch'" in message


def test_duplicate_sample_id(inputs: Path) -> None:
    sheet = write_sheet(
        inputs / "s.csv", [sheet_row("S1", "data/a.h5"), sheet_row("S1", "data/b.h5")]
    )
    assert "sample_id 'S1' appears 2 times (lines 2, 3)" in _problems(sheet)


@pytest.mark.parametrize("sample_id", ["S 1/x", ".x.tmp-1", "..", "-S1"])
def test_unsafe_sample_id(inputs: Path, sample_id: str) -> None:
    """A sample id names the folder samples/<id>.zarr: no path separators, no hidden names
    (a leading '.' marks staging folders, which every run clears)."""
    sheet = write_sheet(inputs / "s.csv", [sheet_row(sample_id, "data/a.h5")])
    assert (
        f"line 2: sample_id '{sample_id}' may contain only letters, digits, '_', '-' and '.', "
        "and must start with a letter, digit or '_'" in _problems(sheet)
    )


def test_sample_id_too_long_for_a_file_name(inputs: Path) -> None:
    long_id = "S" * 300
    sheet = write_sheet(inputs / "s.csv", [sheet_row(long_id, "data/a.h5")])
    assert (
        f"line 2: sample_id '{'S' * 40}...' is 300 characters long; at most 100 are allowed"
        in _problems(sheet)
    )
    ok = write_sheet(inputs / "ok.csv", [sheet_row("S" * 100, "data/a.h5")])
    assert read_samplesheet(ok)[0].sample_id == "S" * 100


@pytest.mark.parametrize("value", ["three", "-3", "nan", "inf", "-inf", "1e400"])
def test_bad_timepoint(inputs: Path, value: str) -> None:
    sheet = write_sheet(inputs / "s.csv", [sheet_row("S1", "data/a.h5", timepoint_months=value)])
    assert f"sample 'S1' (line 2): timepoint_months '{value}' is not a number >= 0" in _problems(
        sheet
    )


def test_response_outside_the_vocabulary(inputs: Path) -> None:
    sheet = write_sheet(inputs / "s.csv", [sheet_row("S1", "data/a.h5", response="partial")])
    message = _problems(sheet)
    assert (
        "sample 'S1' (line 2): response 'partial' is not one of responder, non_responder, unknown"
        in message
    )


def test_patient_with_two_responses(inputs: Path) -> None:
    sheet = write_sheet(
        inputs / "s.csv",
        [
            sheet_row("S1", "data/a.h5", patient_id="P7", response="responder"),
            sheet_row(
                "S2", "data/b.h5", patient_id="P7", response="non_responder", timepoint_months=3
            ),
        ],
    )
    message = _problems(sheet)
    assert "patient 'P7' has more than one response: non_responder (S2); responder (S1)" in message


def test_missing_and_unknown_paths(inputs: Path) -> None:
    (inputs / "data" / "notes.txt").write_text("x")
    sheet = write_sheet(
        inputs / "s.csv", [sheet_row("S1", "data/gone.h5"), sheet_row("S2", "data/notes.txt")]
    )
    message = _problems(sheet)
    assert "sample 'S1' (line 2): path 'data/gone.h5' does not exist" in message
    assert str((inputs / "data" / "gone.h5").resolve()) in message
    assert "sample 'S2' (line 3): path 'data/notes.txt' is not a 10x MTX folder" in message


def test_all_problems_are_reported_together(inputs: Path) -> None:
    sheet = write_sheet(
        inputs / "s.csv",
        [
            sheet_row("S1", "data/a.h5", response="maybe"),
            sheet_row("S1", "data/b.h5", timepoint_months="x"),
            sheet_row("S 3", "data/none.h5", batch=""),
        ],
    )
    message = _problems(sheet)
    for fragment in (
        "response 'maybe'",
        "sample_id 'S1' appears 2 times",
        "timepoint_months 'x'",
        "sample_id 'S 3' may contain only",
        "path 'data/none.h5' does not exist",
        "line 4: column 'batch' is empty",
    ):
        assert fragment in message


def test_missing_samplesheet_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_samplesheet(tmp_path / "nope.csv")


@pytest.mark.parametrize("content", ["", "\n", "   \n\n"])
def test_empty_samplesheet_file(tmp_path: Path, content: str) -> None:
    sheet = tmp_path / "s.csv"
    sheet.write_text(content)
    message = _problems(sheet)
    assert f"samplesheet {sheet} is empty; expected a header line with columns" in message


def test_an_extra_numeric_column_with_infinity_stays_a_number(inputs: Path) -> None:
    sheet = write_sheet(
        inputs / "s.csv",
        [sheet_row("S1", "data/a.h5", dose=1), sheet_row("S2", "data/b.h5", dose="inf")],
    )
    rows = read_samplesheet(sheet)
    assert rows[0].metadata["dose"] == 1.0 and rows[1].metadata["dose"] == float("inf")

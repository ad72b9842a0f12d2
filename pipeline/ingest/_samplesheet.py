"""Read and validate the samplesheet; every problem is reported at once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..labels import DESIGN_COLUMNS, RESPONSES, name_problem

REQUIRED_COLUMNS: tuple[str, ...] = (*DESIGN_COLUMNS, "path")


@dataclass(frozen=True)
class SampleRow:
    """One validated samplesheet row; ``metadata`` is every column but ``path``."""

    sample_id: str
    path: Path
    metadata: dict[str, object]


def input_format(path: Path) -> str | None:
    """'mtx', 'h5', 'h5ad' or 'zarr' by what is at ``path``; None if none of these."""
    name = path.name.lower()
    if path.is_dir():
        if name.endswith(".zarr"):
            return "zarr"
        files = {p.name for p in path.iterdir()}
        if files & {"matrix.mtx", "matrix.mtx.gz"}:
            return "mtx"
        return None
    if name.endswith(".h5ad"):
        return "h5ad"
    if name.endswith(".h5"):
        return "h5"
    return None


def _problems_of_rows(frame: pd.DataFrame, base: Path) -> list[str]:
    problems: list[str] = []
    line = frame.index + 2  # header is line 1

    for col in REQUIRED_COLUMNS:
        for i in frame.index[frame[col].str.strip() == ""]:
            problems.append(f"line {line[i]}: column '{col}' is empty")

    ids = frame["sample_id"]
    for sid, rows in frame.groupby("sample_id").groups.items():
        if sid and len(rows) > 1:
            lines = ", ".join(str(line[i]) for i in rows)
            problems.append(f"sample_id '{sid}' appears {len(rows)} times (lines {lines})")
    for i in frame.index:
        sid = ids[i]
        problem = name_problem(sid) if sid else None
        if problem:
            shown = sid if len(sid) <= 40 else sid[:40] + "..."
            problems.append(f"line {line[i]}: sample_id '{shown}' {problem}")

    months = pd.to_numeric(frame["timepoint_months"], errors="coerce")
    for i in frame.index:
        raw = frame.at[i, "timepoint_months"]
        if raw.strip() and not (np.isfinite(months[i]) and months[i] >= 0):
            problems.append(
                f"sample '{ids[i]}' (line {line[i]}): timepoint_months '{raw}' is not a "
                "number >= 0 (months since the first dose; 0 is baseline)"
            )

    allowed = ", ".join(RESPONSES)
    for i in frame.index:
        value = frame.at[i, "response"]
        if value.strip() and value not in RESPONSES:
            problems.append(
                f"sample '{ids[i]}' (line {line[i]}): response '{value}' is not one of {allowed}"
            )
    for patient, sub in frame.groupby("patient_id"):
        if patient and sub["response"].nunique() > 1:
            parts = "; ".join(
                f"{resp} ({', '.join(grp['sample_id'])})" for resp, grp in sub.groupby("response")
            )
            problems.append(f"patient '{patient}' has more than one response: {parts}")

    for i in frame.index:
        raw = frame.at[i, "path"]
        if not raw.strip():
            continue
        path = (base / raw).resolve()
        where = f"sample '{ids[i]}' (line {line[i]}): path '{raw}'"
        if not path.exists():
            problems.append(f"{where} does not exist (looked for {path})")
        elif not os.access(path, os.R_OK):
            problems.append(f"{where} is not readable ({path})")
        elif input_format(path) is None:
            problems.append(
                f"{where} is not a 10x MTX folder (matrix.mtx[.gz]), a 10x .h5, an .h5ad "
                "file or an AnnData .zarr store"
            )
    return problems


def read_samplesheet(path: str | Path) -> list[SampleRow]:
    """Validate the samplesheet at ``path`` (docs/contracts.md) and return its rows.

    Relative paths are resolved against the samplesheet's folder. Raises `InputError`
    listing every problem found.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        msg = f"samplesheet {path} does not exist"
        raise InputError(msg) from None
    except pd.errors.EmptyDataError:
        msg = (
            f"samplesheet {path} is empty; expected a header line with columns "
            f"{', '.join(REQUIRED_COLUMNS)} and one line per sample"
        )
        raise InputError(msg) from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        msg = f"samplesheet {path} cannot be read as CSV: {exc}"
        raise InputError(msg) from None
    frame.columns = [c.strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        msg = (
            f"samplesheet {path}: missing required column(s) "
            + ", ".join(f"'{c}'" for c in missing)
            + f"; expected columns {', '.join(REQUIRED_COLUMNS)} (and any others)"
        )
        raise InputError(msg)
    if frame.empty:
        msg = f"samplesheet {path} has a header but no samples"
        raise InputError(msg)
    frame = frame.apply(lambda col: col.str.strip())
    problems = _problems_of_rows(frame, path.parent)
    if problems:
        raise InputError(f"samplesheet {path}: " + "; ".join(problems), problems=problems)
    typed = frame.drop(columns="path")
    for col in typed.columns:
        if col in ("sample_id", "patient_id", "response", "batch"):
            continue
        numbers = pd.to_numeric(typed[col], errors="coerce")
        if numbers.notna().all():  # a numeric column (timepoints, age, sledai, ...)
            whole = bool(np.isfinite(numbers).all() and (numbers == numbers.round()).all())
            typed[col] = numbers.astype("int64") if whole else numbers.astype("float64")
    rows = []
    for record, meta in zip(
        frame.to_dict(orient="records"), typed.to_dict(orient="records"), strict=True
    ):
        meta = {k: (v.item() if hasattr(v, "item") else v) for k, v in meta.items()}
        rows.append(
            SampleRow(
                sample_id=record["sample_id"],
                path=(path.parent / record["path"]).resolve(),
                metadata=meta,
            )
        )
    return rows

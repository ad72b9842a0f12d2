"""``immunoprofile init DIR``: a commented config and a samplesheet to start from.

The config sets the two paths and lists every other setting commented out at its
default, with the schema's description, so that a user uncomments what they change and
the file always validates. The samplesheet has the contract's columns; given a folder
of Cell Ranger outputs, one row per sample found (its count matrix's path relative to
DIR), with the columns the data cannot tell left empty: `run` names each one missing.
"""

from __future__ import annotations

import csv
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from ..config import RunConfig
from ..errors import ImmunoprofileError

COLUMNS = ("sample_id", "patient_id", "timepoint_months", "response", "batch", "path")
# Cell Ranger's count matrices, most specific first (per sample folder)
MATRICES = (
    "outs/filtered_feature_bc_matrix.h5",
    "outs/filtered_feature_bc_matrix",
    "filtered_feature_bc_matrix.h5",
    "filtered_feature_bc_matrix",
    "sample_filtered_feature_bc_matrix.h5",  # cellranger multi: per_sample_outs/<name>/count/
    "count/sample_filtered_feature_bc_matrix.h5",
)


@dataclass(frozen=True)
class InitResult:
    config: Path
    samplesheet: Path
    n_samples: int  # rows found in the Cell Ranger folder (0: the template's example)


def _value(value: Any) -> str:
    return (
        yaml.safe_dump(value, default_flow_style=True, width=1000)
        .strip()
        .removesuffix("...")
        .strip()
    )


def _summary(model: type[BaseModel]) -> str:
    """The model's docstring's first paragraph on one line."""
    paragraph = (model.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(paragraph.replace("``", "").split())


def _section_lines(name: str, model: type[BaseModel], default: BaseModel, depth: int) -> list[str]:
    """The section commented out: removing the leading "# " of a line gives valid YAML."""
    pad = "  " * depth
    lines = [f"# {pad}# {line}" for line in textwrap.wrap(_summary(model), 84 - len(pad))]
    lines.append(f"# {pad}{name}:")
    for key, field in model.model_fields.items():
        value = getattr(default, key)
        if isinstance(value, BaseModel):
            lines += _section_lines(key, type(value), value, depth + 1)
            continue
        entry = f"# {pad}  {key}: {_value(_json(value))}"
        description = field.description or ""
        if description and len(entry) + len(description) + 4 <= 100:
            lines.append(f"{entry}  # {description}")
        else:
            wrapped = textwrap.wrap(description, 84 - len(pad))
            lines += [f"# {pad}  # {line}" for line in wrapped] + [entry]
    return lines


def _json(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    return value


def commented_config(workdir: str, samplesheet: str) -> str:
    """A config whose only set keys are the two paths; every section follows commented
    out at its defaults (the same defaults the schema has)."""
    defaults = RunConfig()
    lines = [
        "# immunoprofile run configuration, written by `immunoprofile init`.",
        "# Relative paths are relative to the folder you run immunoprofile from.",
        "# Every other setting is listed commented out at its default: uncomment a section",
        "# line and the keys you change. `immunoprofile run CONFIG --dry-run` says what would",
        "# run; configs/schema.json (in the source) is the full schema.",
        f"workdir: {_value(workdir)}",
        f"samplesheet: {_value(samplesheet)}",
    ]
    for name in RunConfig.model_fields:
        value = getattr(defaults, name)
        if isinstance(value, BaseModel):
            lines.append("")
            lines += _section_lines(name, type(value), value, 0)
        elif name not in ("workdir", "samplesheet"):
            lines.append(f"# {name}: {_value(_json(value))}")
    return "\n".join(lines) + "\n"


def _sample_id(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip("_") or "sample"


def find_cellranger_samples(folder: Path) -> list[tuple[str, Path]]:
    """(sample id, count matrix) per Cell Ranger output under ``folder``: each
    subfolder (or ``folder`` itself) holding one of `MATRICES`."""
    found = []
    candidates = [folder, *sorted(p for p in folder.rglob("*") if p.is_dir())]
    taken: set[Path] = set()
    for directory in candidates:
        if any(directory.is_relative_to(t) for t in taken):
            continue
        matrix = next((directory / m for m in MATRICES if (directory / m).exists()), None)
        if matrix is not None:
            name = directory.name
            found.append((_sample_id(name), matrix))
            taken.add(directory)
    return found


def init_project(target: Path, *, cellranger: Path | None = None) -> InitResult:
    """Write ``target``/config.yaml and ``target``/samplesheet.csv; refuses to replace
    either."""
    config, sheet = target / "config.yaml", target / "samplesheet.csv"
    existing = [str(p) for p in (config, sheet) if p.exists()]
    if existing:
        msg = f"init: {' and '.join(existing)} already exist(s); remove or choose another folder"
        raise ImmunoprofileError(msg)
    samples: list[tuple[str, Path]] = []
    if cellranger is not None:
        if not cellranger.is_dir():
            msg = f"init --cellranger {cellranger}: not a folder"
            raise ImmunoprofileError(msg)
        samples = find_cellranger_samples(cellranger)
        if not samples:
            msg = (
                f"init --cellranger {cellranger}: no Cell Ranger count matrix found (looked "
                f"for {', '.join(MATRICES)} in it and its subfolders)"
            )
            raise ImmunoprofileError(msg)
        ids = [s for s, _ in samples]
        repeated = sorted({s for s in ids if ids.count(s) > 1})
        if repeated:
            msg = f"init --cellranger {cellranger}: sample folders named alike: {repeated}"
            raise ImmunoprofileError(msg)
    target.mkdir(parents=True, exist_ok=True)
    config.write_text(commented_config("work", "samplesheet.csv"))
    with sheet.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        if samples:
            for sample_id, matrix in samples:
                path = Path(os.path.relpath(matrix.resolve(), target.resolve()))
                writer.writerow([sample_id, "", "", "", "", path.as_posix()])
        else:  # an example row
            writer.writerow(["P01_m0", "P01", "0", "unknown", "run1",
                             "counts/P01_m0/outs/filtered_feature_bc_matrix.h5"])  # fmt: skip
    return InitResult(config, sheet, len(samples))

"""The abundance table: cells per sample and cell type at both annotation levels (pure
pandas/xarray; no I/O).

Per docs/contracts.md: level `lineage` counts the QC-passed cells of each lineage, with
the sample's QC-passed cells as `total`; level `b_subset` counts the B cells of each
subset, with the sample's B cells as `total`. `unassigned` is a cell type of its own, so
that counts add up to the totals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..labels import B_SUBSETS, COUNTS_COLUMNS, DESIGN_COLUMNS, LINEAGES, UNASSIGNED

LEVEL_TYPES: dict[str, tuple[str, ...]] = {
    "lineage": (*LINEAGES, UNASSIGNED),
    "b_subset": (*B_SUBSETS, UNASSIGNED),
}


def sample_design(obs: pd.DataFrame) -> pd.DataFrame:
    """The design columns, one row per sample (first seen first), as text but
    ``timepoint_months``: from the cells' obs without a per-cell copy of the text
    (categorical columns turned to text per cell were ~0.85 GiB at 4M cells)."""
    text = {c: str for c in DESIGN_COLUMNS if c != "timepoint_months"}
    return obs[list(DESIGN_COLUMNS)].drop_duplicates("sample_id").astype(text)


def codes_in(values: pd.Series, names: Sequence[str] | pd.Index) -> np.ndarray:
    """Each value's position in ``names`` compared as text (-1: missing, or not one of
    them), through the column's categories: no per-cell strings."""
    cat = values.array if isinstance(values.dtype, pd.CategoricalDtype) else pd.Categorical(values)
    where = pd.Index(names).get_indexer(pd.Index(cat.categories).astype(str))
    codes = np.asarray(cat.codes)
    return np.where(codes >= 0, where[np.maximum(codes, 0)], -1)


def count_table(rows: np.ndarray, columns: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Cells per row x column code (cells with a code of -1 not counted), int64."""
    ok = (rows >= 0) & (columns >= 0)
    flat = rows[ok].astype(np.int64) * shape[1] + columns[ok]
    return np.bincount(flat, minlength=shape[0] * shape[1]).reshape(shape)


def abundance_counts(obs: pd.DataFrame) -> pd.DataFrame:
    """The tidy table (`sample_id, patient_id, timepoint_months, response, batch, level,
    cell_type, count, total`): every sample x cell type, zeros included.

    ``obs`` needs the design columns, `qc_pass`, `lineage` and `b_subset`.
    """
    missing = [c for c in (*DESIGN_COLUMNS, "qc_pass", "lineage", "b_subset") if c not in obs]
    if missing:
        msg = f"cell table lacks columns {missing}: run the qc and annotate stages first"
        raise ValueError(msg)
    design = sample_design(obs)
    samples = pd.Index(design["sample_id"], name="sample_id")
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    sample = codes_in(obs["sample_id"], samples)[keep]
    lineage = codes_in(obs["lineage"], LEVEL_TYPES["lineage"])[keep]
    is_b = lineage == LEVEL_TYPES["lineage"].index("B")
    frames = []
    for level, types in LEVEL_TYPES.items():
        if level == "lineage":
            rows, columns = sample, lineage
        else:
            rows, columns = sample[is_b], codes_in(obs[level], types)[keep][is_b]
        table = count_table(rows, columns, (len(samples), len(types)))
        frames.append(
            pd.DataFrame(
                {
                    "sample_id": np.repeat(samples.to_numpy(), len(types)),
                    "cell_type": np.tile(np.array(types, dtype=object), len(samples)),
                    "count": table.ravel(),
                    "total": np.repeat(table.sum(axis=1), len(types)).astype(np.int64),
                    "level": level,
                }
            )
        )
    tidy = pd.concat(frames, ignore_index=True).merge(design, on="sample_id", how="left")
    tidy["count"] = tidy["count"].astype(np.int64)
    return tidy[list(COUNTS_COLUMNS)]


def counts_dataset(tidy: pd.DataFrame) -> xr.Dataset:
    """The same counts as an xarray Dataset: per level a `(sample, <level>)` count array
    and a `sample` total, with the design as sample coordinates."""
    design = tidy[list(DESIGN_COLUMNS)].drop_duplicates("sample_id").set_index("sample_id")
    data_vars: dict[str, tuple[Any, np.ndarray]] = {}
    coords: dict[str, object] = {"sample": design.index.to_numpy()}
    for column in DESIGN_COLUMNS[1:]:
        coords[column] = ("sample", design[column].to_numpy())
    for level, types in LEVEL_TYPES.items():
        part = tidy[tidy["level"] == level]
        wide = part.pivot(index="sample_id", columns="cell_type", values="count")
        wide = wide.reindex(index=design.index, columns=list(types))
        coords[level] = list(types)
        data_vars[f"{level}_count"] = (("sample", level), wide.to_numpy(dtype=np.int64))
        totals = part.drop_duplicates("sample_id").set_index("sample_id")["total"]
        data_vars[f"{level}_total"] = ("sample", totals.reindex(design.index).to_numpy())
    return xr.Dataset(data_vars, coords=coords)

"""The abundance table: cells per sample and cell type at both annotation levels (pure
pandas/xarray; no I/O).

Per docs/contracts.md: level `lineage` counts the QC-passed cells of each lineage, with
the sample's QC-passed cells as `total`; level `b_subset` counts the B cells of each
subset, with the sample's B cells as `total`. `unassigned` is a cell type of its own, so
that counts add up to the totals.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..labels import B_SUBSETS, COUNTS_COLUMNS, DESIGN_COLUMNS, LINEAGES, UNASSIGNED

LEVEL_TYPES: dict[str, tuple[str, ...]] = {
    "lineage": (*LINEAGES, UNASSIGNED),
    "b_subset": (*B_SUBSETS, UNASSIGNED),
}


def abundance_counts(obs: pd.DataFrame) -> pd.DataFrame:
    """The tidy table (`sample_id, patient_id, timepoint_months, response, batch, level,
    cell_type, count, total`): every sample x cell type, zeros included.

    ``obs`` needs the design columns, `qc_pass`, `lineage` and `b_subset`.
    """
    missing = [c for c in (*DESIGN_COLUMNS, "qc_pass", "lineage", "b_subset") if c not in obs]
    if missing:
        msg = f"cell table lacks columns {missing}: run the qc and annotate stages first"
        raise ValueError(msg)
    text = {c: str for c in DESIGN_COLUMNS if c != "timepoint_months"}
    design = obs[list(DESIGN_COLUMNS)].astype(text).drop_duplicates("sample_id")
    samples = pd.Index(design["sample_id"], name="sample_id")
    kept = obs[obs["qc_pass"].to_numpy(dtype=bool)]
    frames = []
    for level, types in LEVEL_TYPES.items():
        cells = kept if level == "lineage" else kept[kept["lineage"].astype(str) == "B"]
        table = pd.crosstab(
            pd.Categorical(cells["sample_id"].astype(str), categories=samples),
            pd.Categorical(cells[level].astype(str), categories=types),
            dropna=False,
        ).reindex(index=samples, columns=list(types), fill_value=0)
        long = table.stack().rename("count").reset_index()
        long.columns = ["sample_id", "cell_type", "count"]
        long["total"] = long["sample_id"].map(table.sum(axis=1)).astype(np.int64)
        long["level"] = level
        frames.append(long)
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

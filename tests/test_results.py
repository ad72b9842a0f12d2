"""Per-cell results of cohort.zarr and the batch layers read together."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import pandas as pd

from pipeline.results import leiden_columns, leiden_key, read_obs
from pipeline.store import write_anndata_store


def test_leiden_columns_are_ordered_by_resolution() -> None:
    assert leiden_key(1.0) == "leiden_1" and leiden_key(0.25) == "leiden_0.25"
    assert leiden_columns(["x", "leiden_1", "leiden_0.5", "leiden_10"]) == [
        "leiden_0.5", "leiden_1", "leiden_10"
    ]  # fmt: skip


def test_obs_of_several_stores_keep_their_categories(tmp_path: Path) -> None:
    """A label the cohort lacks but a batch has (or the reverse) stays a category."""
    stores = []
    for name, labels in (("cohort", ["B", "NK"]), ("batch", ["pDC", "B"])):
        obs = pd.DataFrame({"lineage": pd.Categorical(labels), "n": [1, 2]},
                           index=[f"{name}{i}" for i in range(2)])  # fmt: skip
        write_anndata_store(tmp_path / f"{name}.zarr", ad.AnnData(obs=obs), {"kind": name})
        stores.append(tmp_path / f"{name}.zarr")
    obs = read_obs(stores, ["lineage", "n"])
    assert obs.index.tolist() == ["cohort0", "cohort1", "batch0", "batch1"]
    assert list(obs["lineage"].cat.categories) == ["B", "NK", "pDC"]
    assert obs["lineage"].tolist() == ["B", "NK", "pDC", "B"]

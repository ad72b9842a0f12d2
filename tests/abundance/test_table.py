"""The abundance table against the cells it counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.abundance import abundance_counts, counts_dataset


def _obs() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for s, (patient, month, response) in enumerate(
        [("P1", 0, "responder"), ("P1", 3, "responder"), ("P2", 0, "non_responder")]
    ):
        for _ in range(200 + 50 * s):
            lineage = rng.choice(["T_CD4", "B", "NK", "unassigned"], p=[0.5, 0.3, 0.15, 0.05])
            subset = rng.choice(["naive", "DN2", "unassigned"]) if lineage == "B" else None
            rows.append(
                {
                    "sample_id": f"{patient}_m{month}", "patient_id": patient,
                    "timepoint_months": month, "response": response, "batch": "b1",
                    "qc_pass": rng.random() > 0.1, "lineage": lineage, "b_subset": subset,
                }
            )  # fmt: skip
    return pd.DataFrame(rows)


def test_counts_and_totals_follow_the_contract() -> None:
    obs = _obs()
    tidy = abundance_counts(obs)
    assert list(tidy.columns) == [
        "sample_id", "patient_id", "timepoint_months", "response", "batch",
        "level", "cell_type", "count", "total",
    ]  # fmt: skip
    kept = obs[obs["qc_pass"]]
    for sid, cells in kept.groupby("sample_id"):
        lin = tidy[(tidy["sample_id"] == sid) & (tidy["level"] == "lineage")].set_index("cell_type")
        assert (lin["total"] == len(cells)).all() and lin["count"].sum() == len(cells)
        expected = cells["lineage"].value_counts()
        assert lin["count"].reindex(expected.index).tolist() == expected.tolist()
        assert lin.loc["pDC", "count"] == 0  # every cell type is listed, zeros included
        b = tidy[(tidy["sample_id"] == sid) & (tidy["level"] == "b_subset")].set_index("cell_type")
        n_b = int((cells["lineage"] == "B").sum())
        assert (b["total"] == n_b).all() and b["count"].sum() == n_b
        assert b.loc["DN2", "count"] == int((cells["b_subset"] == "DN2").sum())


def test_categorical_columns_count_as_their_text() -> None:
    """The stage reads obs as categoricals (a sample's design columns, the labels), a
    notebook may pass text; the counts are the same table, and a label outside the
    vocabulary or missing is not counted."""
    obs = _obs()
    as_text = abundance_counts(obs)
    categorical = obs.astype({c: "category" for c in obs.columns if obs[c].dtype == object})
    categorical["lineage"] = categorical["lineage"].cat.add_categories(["not_a_lineage"])
    pd.testing.assert_frame_equal(abundance_counts(categorical), as_text)
    odd = obs.copy()
    odd.loc[odd.index[:5], "lineage"] = ["not_a_lineage", None, "B", "B", "B"]
    odd.loc[odd.index[2:5], "b_subset"] = [None, "not_a_subset", "DN2"]
    counted = abundance_counts(odd).set_index(["level", "sample_id", "cell_type"])["count"]
    kept = odd[odd["qc_pass"]]
    first = odd["sample_id"].iloc[0]
    mine = kept[kept["sample_id"] == first]
    assert counted.loc["lineage", first].sum() == mine["lineage"].isin(
        ["T_CD4", "B", "NK", "unassigned"]).sum()  # fmt: skip
    n_subset = mine["b_subset"].isin(["naive", "DN2", "unassigned"]) & (mine["lineage"] == "B")
    assert counted.loc["b_subset", first].sum() == n_subset.sum()


def test_dataset_holds_the_same_counts_with_the_design() -> None:
    tidy = abundance_counts(_obs())
    ds = counts_dataset(tidy)
    assert ds["lineage_count"].dims == ("sample", "lineage")
    assert ds["b_subset_count"].sum().item() == tidy[tidy["level"] == "b_subset"]["count"].sum()
    np.testing.assert_array_equal(
        ds["lineage_count"].sum("lineage").to_numpy(), ds["lineage_total"].to_numpy()
    )
    assert ds["response"].sel(sample="P2_m0").item() == "non_responder"


def test_missing_annotation_is_named() -> None:
    with pytest.raises(ValueError, match=r"\['b_subset'\]"):
        abundance_counts(_obs().drop(columns="b_subset"))

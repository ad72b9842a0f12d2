"""The annotate stage's summary of the Leiden clusters by lineage."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.annotate import cluster_summary


def _crosstab_summary(obs: pd.DataFrame, finest: str) -> pd.DataFrame:
    """The summary as a crosstab of the labels as text (the stage's until session 29)."""
    both = obs[finest].notna() & obs["lineage"].notna()
    table = pd.crosstab(
        obs.loc[both, finest].astype(str).to_numpy(), obs.loc[both, "lineage"].astype(str)
    )
    return pd.DataFrame(
        {
            "cluster": table.index.astype(str),
            "n_cells": table.sum(axis=1).to_numpy(),
            "majority_lineage": table.idxmax(axis=1).to_numpy(),
            "purity": (table.max(axis=1) / table.sum(axis=1)).to_numpy(),
        }
    )


def test_the_cluster_summary_counts_as_a_crosstab_of_the_labels_would() -> None:
    rng = np.random.default_rng(3)
    n = 5_000
    lineages = ["T_CD4", "B", "NK", "mono_CD14", "unassigned", "pDC"]  # not sorted
    lineage = pd.Categorical(rng.choice(lineages[:-1], n), categories=lineages)
    clusters = [str(i) for i in range(12)]  # "10" sorts before "2" as text
    coarse = pd.Categorical(rng.choice(clusters[:3], n), categories=clusters[:3])
    fine = pd.Categorical(rng.choice(clusters[:-1], n), categories=clusters)  # "11": empty
    fine[:40] = np.nan  # QC-failed cells: no cluster, no lineage
    lineage[:60] = np.nan
    # a tie in cluster "0": two lineages with equal counts, the first by name wins
    fine[60:64] = "0"
    obs = pd.DataFrame({"leiden_0.5": coarse, "leiden_1.0": fine, "lineage": lineage})
    obs.loc[obs["leiden_1.0"] == "0", "lineage"] = np.where(
        np.arange((obs["leiden_1.0"] == "0").sum()) % 2 == 0, "T_CD4", "B"
    )
    summary = cluster_summary(obs)
    assert (summary["resolution"] == "1.0").all()
    expected = _crosstab_summary(obs, "leiden_1.0")
    got = summary.drop(columns="resolution").set_index("cluster").loc[expected["cluster"]]
    pd.testing.assert_frame_equal(got.reset_index(), expected, check_dtype=False)
    assert set(summary["cluster"]) == set(clusters[:-1])  # the empty cluster left out
    zero = summary.set_index("cluster").loc["0"]
    assert zero["majority_lineage"] == "B" and zero["purity"] == 0.5
    assert summary["n_cells"].sum() == int(
        (obs["leiden_1.0"].notna() & obs["lineage"].notna()).sum()
    )
    assert cluster_summary(obs.drop(columns=["leiden_0.5", "leiden_1.0"])).empty

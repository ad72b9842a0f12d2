"""Cell labels scored against a simulated cohort's truth (used by the tests and the
annotation benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from ..labels import B_SUBSETS, LINEAGES


@dataclass(frozen=True)
class LabelAccuracy:
    lineage_macro_f1: float
    b_macro_f1: float
    b_f1: dict[str, float]
    b_proportion_error: float  # mean |estimated - true| share within B, over samples x subsets
    lineage_proportion_error: float
    b_confusion: pd.DataFrame  # true B subset (rows) x called label of the true B cells

    def __str__(self) -> str:
        per = ", ".join(f"{k} {v:.3f}" for k, v in self.b_f1.items())
        return (
            f"lineage macro-F1 {self.lineage_macro_f1:.3f}, B macro-F1 {self.b_macro_f1:.3f} "
            f"({per}); mean proportion error: B subsets {self.b_proportion_error:.4f}, "
            f"lineages {self.lineage_proportion_error:.4f}"
        )


def read_truth_cells(samplesheet: Path | str, obs_names: pd.Index) -> pd.DataFrame:
    """The simulator's per-cell truth (``truth/cells/<sample>.csv.gz`` beside the
    samplesheet) in the order of a cohort's ``obs_names`` (``<sample_id>:<barcode>``)."""
    data = Path(samplesheet).parent
    frames = []
    for sid in pd.read_csv(samplesheet)["sample_id"]:
        t = pd.read_csv(data / "truth" / "cells" / f"{sid}.csv.gz", keep_default_na=False)
        frames.append(t.set_index(sid + ":" + t["barcode"]))
    return pd.concat(frames).loc[obs_names]


def _shares(labels: pd.Series, sample: pd.Series, vocabulary: tuple[str, ...]) -> pd.DataFrame:
    table = pd.crosstab(sample, labels).reindex(columns=list(vocabulary), fill_value=0)
    total = labels.groupby(sample, observed=True).size().reindex(table.index)
    return table.div(total, axis=0)


def label_accuracy(obs: pd.DataFrame, truth: pd.DataFrame) -> LabelAccuracy:
    """Scored over the QC-passed singlets; a cell called `unassigned` (or not called B)
    counts as an error for its true label."""
    cells = obs["qc_pass"].to_numpy(dtype=bool) & (truth["kind"] == "singlet").to_numpy()
    o, t = obs[cells], truth[cells]
    called = o["lineage"].astype(str)
    lineage_f1 = f1_score(t["lineage"], called, labels=list(LINEAGES), average="macro")
    b = (t["lineage"] == "B").to_numpy()
    b_called = o["b_subset"].astype(object).where(o["b_subset"].notna(), "not_B").astype(str)
    per = f1_score(t["b_subset"][b], b_called[b], labels=list(B_SUBSETS), average=None)
    sample = o["sample_id"].astype(str)
    true_b = _shares(t["b_subset"][b], sample[b], B_SUBSETS)
    est_b = _shares(b_called[called == "B"], sample[called == "B"], B_SUBSETS)
    true_l = _shares(t["lineage"], sample, LINEAGES)
    est_l = _shares(called, sample, LINEAGES)
    return LabelAccuracy(
        lineage_macro_f1=float(lineage_f1),
        b_macro_f1=float(np.mean(per)),
        b_f1=dict(zip(B_SUBSETS, map(float, per), strict=True)),
        b_proportion_error=float((est_b - true_b).abs().to_numpy().mean()),
        lineage_proportion_error=float((est_l - true_l).abs().to_numpy().mean()),
        b_confusion=pd.crosstab(t["b_subset"][b], b_called[b]),
    )

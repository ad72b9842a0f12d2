"""Features of the patients' baseline (month-0) samples, from the abundance counts and
the expression stage's program scores (pure pandas; no stores).

- composition: per level (lineages within the sample's QC-passed cells, B subsets within
  its B cells) the centred log-ratio of the counts with a pseudocount: ``log(count + pc)``
  minus its mean over the level's cell types. `unassigned` is left out.
- programs: the program scores (`expression/program_scores.csv`) of chosen cell types,
  one feature per cell type x program.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BASELINE = 0.0


def baseline_samples(counts: pd.DataFrame) -> pd.DataFrame:
    """One row per patient with a month-0 sample (`sample_id, patient_id, response`);
    a patient with several month-0 samples is an error."""
    samples = counts.drop_duplicates("sample_id")
    first = samples[samples["timepoint_months"].astype(float) == BASELINE]
    twice = first["patient_id"][first["patient_id"].duplicated()].unique()
    if len(twice):
        msg = (f"patients {', '.join(map(str, twice[:5]))} have more than one month-0 sample; "
               "expected one baseline sample per patient")  # fmt: skip
        raise ValueError(msg)
    return first[["sample_id", "patient_id", "response"]].reset_index(drop=True)


def composition_features(counts: pd.DataFrame, *, pseudocount: float) -> pd.DataFrame:
    """Patients (index: `patient_id`) x features (``lineage:T_CD4``, ``b_subset:DN2``, ...)
    of the month-0 samples of the tidy ``counts`` (counts.csv of docs/contracts.md)."""
    base = baseline_samples(counts)
    rows = counts[
        counts["sample_id"].isin(base["sample_id"]) & (counts["cell_type"] != "unassigned")
    ]
    wide = rows.pivot_table(index="sample_id", columns=["level", "cell_type"], values="count",
                            aggfunc="sum", fill_value=0, observed=True)  # fmt: skip
    parts = []
    for level in ("lineage", "b_subset"):
        if level not in wide.columns.get_level_values(0):
            continue
        block = np.log(wide[level].astype(float) + pseudocount)
        block = block.sub(block.mean(axis=1), axis=0)
        block.columns = [f"{level}:{c}" for c in block.columns]
        parts.append(block)
    table = pd.concat(parts, axis=1)
    patient = base.set_index("sample_id")["patient_id"]
    table.index = pd.Index(patient.loc[table.index].to_numpy(), name="patient_id")
    return table.sort_index()


def program_features(
    scores: pd.DataFrame, counts: pd.DataFrame, *, cell_types: list[str]
) -> pd.DataFrame:
    """Patients x features (``program:B:type_I_interferon``, ...) from the month-0
    samples' program scores of ``cell_types``; a patient whose baseline sample lacks a
    score (too few cells of the type) has NaN there."""
    base = baseline_samples(counts).set_index("sample_id")
    part = scores[scores["sample_id"].isin(base.index) & scores["cell_type"].isin(cell_types)]
    if part.empty:
        return pd.DataFrame(index=pd.Index([], name="patient_id"))
    wide = part.pivot_table(index="sample_id", columns=["cell_type", "program"], values="score",
                            aggfunc="mean", observed=True)  # fmt: skip
    wide.columns = [f"program:{ct}:{p}" for ct, p in wide.columns]
    wide.index = pd.Index(base.loc[wide.index, "patient_id"].to_numpy(), name="patient_id")
    return wide.sort_index()


def usable_features(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """``table`` without the features that cannot inform a model (constant across the
    patients, or missing for some), and those left out with the reason."""
    dropped: dict[str, str] = {}
    for name in table.columns:
        values = table[name]
        if values.isna().any():
            dropped[name] = f"missing for {int(values.isna().sum())} of {len(values)} patients"
        elif values.nunique() < 2 or float(values.std(ddof=0)) < 1e-12:
            dropped[name] = "constant across the patients"
    return table.drop(columns=list(dropped)), dropped

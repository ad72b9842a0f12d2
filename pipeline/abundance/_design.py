"""Design matrix and contrasts of the abundance models (pure pandas/numpy).

Fixed effects ``response * timepoint`` with treatment coding, named as lme4 names them
(``(Intercept)``, ``responsenon_responder``, ``timepoint3``,
``responsenon_responder:timepoint3``, ...): responders at baseline are the reference.
Patients with ``response = unknown`` get a level of their own, so their samples inform
the patient and sample variances but none of the contrasts, which compare responders and
non-responders only (DESIGN.md's names: ``response@month{t}``, ``time{t}@responder``,
``time{t}@non_responder``, ``response:time{t}``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd

RESPONSES = ("responder", "non_responder", "unknown")
TimeCoding = Literal["factor", "continuous"]


class AbundanceDesignError(ValueError):
    """A design the abundance models cannot fit (the message says why)."""


@dataclass(frozen=True)
class ModelDesign:
    """One design for every cell type: rows are samples (in ``samples`` order)."""

    samples: pd.DataFrame  # sample_id, patient_id, timepoint_months, response
    x: np.ndarray
    columns: tuple[str, ...]
    patient: np.ndarray  # integer codes
    contrasts: pd.DataFrame  # contrast name x column: the linear combinations
    time: TimeCoding
    n_patients: dict[str, int]
    df: pd.Series  # per contrast: denominator degrees of freedom (between-within)

    def cell_weights(self) -> pd.DataFrame | None:
        """Contrast x design cell (response, month): each contrast as a combination of cell
        means (timepoint as a factor only; None for continuous time)."""
        if self.time != "factor":
            return None
        keys = self.samples[["response", "timepoint_months"]].astype(str).agg("@".join, axis=1)
        first = ~keys.duplicated().to_numpy()
        means = self.x[first]
        weights = np.linalg.lstsq(means.T, self.contrasts.to_numpy().T, rcond=None)[0].T
        weights[np.abs(weights) < 1e-9] = 0.0
        return pd.DataFrame(weights, index=self.contrasts.index, columns=keys[first].to_numpy())

    @property
    def n_unknown_patients(self) -> int:
        """Patients in the models but in no response contrast."""
        return self.n_patients.get("unknown", 0)


def _check(samples: pd.DataFrame) -> None:
    bad = sorted(set(samples["response"]) - set(RESPONSES))
    if bad:
        msg = f"column 'response' has values {bad}; expected one of {list(RESPONSES)}"
        raise AbundanceDesignError(msg)
    per_patient = samples.groupby("patient_id")["response"].nunique()
    mixed = per_patient[per_patient > 1].index.tolist()
    if mixed:
        msg = f"patients {mixed[:5]} have more than one 'response' value; expected one each"
        raise AbundanceDesignError(msg)
    patients = samples["patient_id"].unique()
    if patients.size < 2:
        msg = (f"the abundance models need samples of at least 2 patients; got "
               f"{patients.size} ({', '.join(map(str, patients))})")  # fmt: skip
        raise AbundanceDesignError(msg)
    for group in RESPONSES[:2]:
        if not (samples["response"] == group).any():
            msg = (f"no patient has response '{group}': responders and non-responders are "
                   "both needed to compare them (check the samplesheet's 'response' column)")  # fmt: skip
            raise AbundanceDesignError(msg)
    if not (samples["timepoint_months"] == 0).any():
        msg = "no baseline samples (timepoint_months 0): contrasts are relative to baseline"
        raise AbundanceDesignError(msg)


def model_design(samples: pd.DataFrame, *, time: TimeCoding = "factor") -> ModelDesign:
    """The fixed-effect design ``response * timepoint`` and DESIGN.md's contrasts.

    ``samples`` has one row per sample with `sample_id`, `patient_id`,
    `timepoint_months` and `response`. Raises `AbundanceDesignError` for designs that
    cannot be fitted: a single patient, no responders or no non-responders, no baseline,
    a timepoint without samples of one group.
    """
    samples = samples.reset_index(drop=True).astype(
        {"sample_id": str, "patient_id": str, "response": str}
    )
    _check(samples)
    response = samples["response"].astype(str).to_numpy()
    months = samples["timepoint_months"].to_numpy(dtype=float)
    timepoints = sorted({float(t) for t in months})
    for t in timepoints:
        for group in RESPONSES[:2]:
            if not np.any((months == t) & (response == group)):
                msg = (f"no {group} samples at month {t:g}: the design cannot separate "
                       "response from time there; drop that timepoint or add samples")  # fmt: skip
                raise AbundanceDesignError(msg)
    levels = [g for g in RESPONSES[1:] if np.any(response == g)]
    cols: dict[str, np.ndarray] = {"(Intercept)": np.ones(len(samples))}
    for g in levels:
        cols[f"response{g}"] = (response == g).astype(float)
    if time == "factor":
        time_cols = {f"timepoint{t:g}": (months == t).astype(float) for t in timepoints[1:]}
    elif time == "continuous":
        time_cols = {"timepoint_months": months} if len(timepoints) > 1 else {}
    else:
        msg = f"time coding {time!r} is not 'factor' or 'continuous'"
        raise AbundanceDesignError(msg)
    cols.update(time_cols)
    for name, values in time_cols.items():
        for g in levels:
            inter = (response == g) * values
            if np.any(inter):
                cols[f"response{g}:{name}"] = inter
    names = tuple(cols)
    x = np.column_stack(list(cols.values()))
    if np.linalg.matrix_rank(x) < x.shape[1]:
        msg = f"the design {list(names)} is rank deficient; check the samplesheet's design"
        raise AbundanceDesignError(msg)
    patient_codes, _ = pd.factorize(samples["patient_id"])
    n_patients = samples.drop_duplicates("patient_id")["response"].value_counts()
    contrasts = _contrasts(names, [int(t) if t.is_integer() else t for t in timepoints], time)
    return ModelDesign(
        samples=samples,
        x=x,
        columns=names,
        patient=patient_codes.astype(np.int64),
        contrasts=contrasts,
        time=time,
        n_patients={str(k): int(v) for k, v in n_patients.items()},
        df=_between_within_df(x, names, patient_codes, contrasts),
    )


def _between_within_df(x, names, patient, contrasts: pd.DataFrame) -> pd.Series:
    """Denominator degrees of freedom by the between-within rule (SAS ``DDFM=BETWITHIN``,
    glmmTMB/nlme): a contrast that involves a patient-level column (constant within every
    patient: intercept, response) gets patients - rank(patient-level columns); one of
    within-patient columns only gets observations - patients - their rank beyond those."""
    n_patients = int(patient.max()) + 1
    between = [j for j in range(x.shape[1])
               if np.all(np.bincount(patient, weights=x[:, j] ** 2, minlength=n_patients)
                         * np.bincount(patient, minlength=n_patients)
                         == np.bincount(patient, weights=x[:, j], minlength=n_patients) ** 2)]  # fmt: skip
    rank_between = np.linalg.matrix_rank(x[:, between])
    df_between = max(n_patients - rank_between, 1)
    df_within = max(x.shape[0] - n_patients - (x.shape[1] - rank_between), 1)
    uses_between = np.abs(contrasts.to_numpy()[:, between]).sum(axis=1) > 0
    return pd.Series(np.where(uses_between, df_between, df_within), index=contrasts.index,
                     dtype=float)  # fmt: skip


def _contrasts(names: tuple[str, ...], timepoints: list, time: TimeCoding) -> pd.DataFrame:
    nr = "responsenon_responder"

    def vec(**weights: float) -> np.ndarray:
        v = np.zeros(len(names))
        for key, w in weights.items():
            v[names.index(key)] += w
        return v

    def time_terms(t) -> tuple[str, float]:  # the column of month t and its weight
        return (f"timepoint{t:g}", 1.0) if time == "factor" else ("timepoint_months", float(t))

    rows: dict[str, np.ndarray] = {}
    for t in timepoints:
        if t == 0:
            rows["response@month0"] = vec(**{nr: 1.0})
            continue
        col, w = time_terms(t)
        rows[f"response@month{t:g}"] = vec(**{nr: 1.0, f"{nr}:{col}": w})
    for t in timepoints[1:]:
        col, w = time_terms(t)
        rows[f"time{t:g}@responder"] = vec(**{col: w})
        rows[f"time{t:g}@non_responder"] = vec(**{col: w, f"{nr}:{col}": w})
        rows[f"response:time{t:g}"] = vec(**{f"{nr}:{col}": w})
    order = sorted(rows, key=lambda c: (not c.startswith("response@"), c.startswith("response:")))
    return pd.DataFrame([rows[c] for c in order], index=order, columns=list(names))

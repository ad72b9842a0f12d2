"""Design matrix and contrasts of the abundance models (pure pandas/numpy).

Fixed effects ``response * timepoint`` with treatment coding, named as lme4 names them
(``(Intercept)``, ``responsenon_responder``, ``timepoint3``,
``responsenon_responder:timepoint3``, ...): responders at baseline are the reference.
Patients with ``response = unknown`` get a level of their own, so their samples inform
the patient and sample variances but none of the contrasts, which compare responders and
non-responders only (the names of docs/contracts.md: ``response@month{t}``, ``time{t}@responder``,
``time{t}@non_responder``, ``response:time{t}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    # the contrasts of docs/contracts.md of these timepoints that cannot be estimated, and why (they
    # are not in ``contrasts``, or are there with no degrees of freedom left)
    not_estimable: dict[str, str] = field(default_factory=dict)
    # adjustment columns after the design's own (e.g. processing batch): in no contrast
    covariates: tuple[str, ...] = ()

    def cell_weights(self) -> pd.DataFrame | None:
        """Contrast x design cell (response, month): each contrast as a combination of cell
        means (timepoint as a factor only; None for continuous time)."""
        if self.time != "factor":
            return None
        keys = self.samples[["response", "timepoint_months"]].astype(str).agg("@".join, axis=1)
        first = ~keys.duplicated().to_numpy()
        own = [j for j, c in enumerate(self.columns) if c not in self.covariates]
        means = self.x[first][:, own]
        lmat = self.contrasts.to_numpy()[:, own]
        weights = np.linalg.lstsq(means.T, lmat.T, rcond=None)[0].T
        weights[np.abs(weights) < 1e-9] = 0.0
        return pd.DataFrame(weights, index=self.contrasts.index, columns=keys[first].to_numpy())

    @property
    def n_unknown_patients(self) -> int:
        """Patients in the models but in no response contrast."""
        return self.n_patients.get("unknown", 0)


def _check_values(samples: pd.DataFrame) -> None:
    bad = sorted(set(samples["response"]) - set(RESPONSES))
    if bad:
        msg = f"column 'response' has values {bad}; expected one of {list(RESPONSES)}"
        raise AbundanceDesignError(msg)
    per_patient = samples.groupby("patient_id")["response"].nunique()
    mixed = per_patient[per_patient > 1].index.tolist()
    if mixed:
        msg = f"patients {mixed[:5]} have more than one 'response' value; expected one each"
        raise AbundanceDesignError(msg)


def _one_patient(samples: pd.DataFrame) -> str | None:
    patients = samples["patient_id"].unique()
    if patients.size < 2:
        return (f"the abundance models need samples of at least 2 patients; got "
                f"{patients.size} ({', '.join(map(str, patients))})")  # fmt: skip
    return None


def _check(samples: pd.DataFrame) -> None:
    _check_values(samples)
    one = _one_patient(samples)
    if one is not None:
        raise AbundanceDesignError(one)
    for group in RESPONSES[:2]:
        if not (samples["response"] == group).any():
            msg = (f"no patient has response '{group}': responders and non-responders are "
                   "both needed to compare them (check the samplesheet's 'response' column)")  # fmt: skip
            raise AbundanceDesignError(msg)
    if not (samples["timepoint_months"] == 0).any():
        msg = "no baseline samples (timepoint_months 0): contrasts are relative to baseline"
        raise AbundanceDesignError(msg)


def model_design(samples: pd.DataFrame, *, time: TimeCoding = "factor") -> ModelDesign:
    """The fixed-effect design ``response * timepoint`` and the contrasts of docs/contracts.md.

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
    contrasts = _contrasts(names, _months(timepoints), time)
    df = _between_within_df(x, names, patient_codes, contrasts)
    return _assemble(samples, x, names, contrasts, time, df)


def _assemble(
    samples: pd.DataFrame,
    x: np.ndarray,
    columns: tuple[str, ...],
    contrasts: pd.DataFrame,
    time: TimeCoding,
    df: pd.Series,
    missing: dict[str, str] | None = None,
) -> ModelDesign:
    """The design record; contrasts without degrees of freedom join ``missing``."""
    patient_codes, _ = pd.factorize(samples["patient_id"])
    n_patients = samples.drop_duplicates("patient_id")["response"].value_counts()
    return ModelDesign(
        samples=samples,
        x=x,
        columns=columns,
        patient=patient_codes.astype(np.int64),
        contrasts=contrasts,
        time=time,
        n_patients={str(k): int(v) for k, v in n_patients.items()},
        df=df.clip(lower=1),
        not_estimable={**(missing or {}), **_no_degrees_of_freedom(df, n_patients)},
    )


def _months(timepoints: list[float]) -> list:
    return [int(t) if float(t).is_integer() else t for t in timepoints]


def _no_degrees_of_freedom(df: pd.Series, n_patients: pd.Series) -> dict[str, str]:
    """Contrasts whose test has no degrees of freedom left (a pilot: one patient per
    response group), with the reason; their estimates would be numbers without meaning."""
    counts = ", ".join(f"{n_patients[g]} {g}" for g in RESPONSES if g in n_patients)
    out = {}
    for contrast, value in df.items():
        if value > 0:
            continue
        if contrast.startswith("response@"):
            out[str(contrast)] = (
                f"patients per response group ({counts}) leave no degrees of freedom: "
                "the groups' difference cannot be told from patient-to-patient variation"
            )
        else:
            out[str(contrast)] = (
                "no samples beyond one per patient and design cell: change over time "
                "cannot be told from sample-to-sample variation"
            )
    return out


def contrast_names(timepoints: list[float]) -> list[str]:
    """The contrasts of docs/contracts.md for these timepoints (months), in the tests' order."""
    return _contrast_order(_months(sorted(timepoints)))


def _contrast_order(timepoints: list) -> list[str]:
    rows = [f"response@month{t:g}" for t in timepoints]
    for t in timepoints[1:]:
        rows += [f"time{t:g}@responder", f"time{t:g}@non_responder", f"response:time{t:g}"]
    return sorted(rows, key=lambda c: (not c.startswith("response@"), c.startswith("response:")))


def _cells_of(contrast: str, baseline: float) -> list[tuple[str, float]]:
    """The (response, month) design cells a contrast compares."""
    r, nr = RESPONSES[0], RESPONSES[1]
    if contrast.startswith("response@month"):
        t = float(contrast.removeprefix("response@month"))
        return [(nr, t), (r, t)]
    if contrast.startswith("response:time"):
        t = float(contrast.removeprefix("response:time"))
        return [(nr, t), (nr, baseline), (r, t), (r, baseline)]
    month, group = contrast.removeprefix("time").split("@")
    return [(group, float(month)), (group, baseline)]


def estimable_design(
    samples: pd.DataFrame, *, time: TimeCoding = "factor"
) -> tuple[ModelDesign | None, dict[str, str]]:
    """The design to fit, and every contrast of docs/contracts.md of the samples' timepoints that
    cannot be estimated with the reason (small and degenerate cohorts: a pilot, one
    group, one timepoint, ``unknown`` responses only).

    A complete design (both groups at every timepoint, at least 2 patients) is
    `model_design`'s. Otherwise, with time as a factor, the models are fitted on cell
    means (one column per observed response x month) and a contrast is estimated when
    the cells it compares were observed; with continuous time, or when nothing can be
    estimated, the design is None. Values that are not a design (a response outside
    the vocabulary, a patient with two responses) raise `AbundanceDesignError`.
    """
    samples = samples.reset_index(drop=True).astype(
        {"sample_id": str, "patient_id": str, "response": str}
    )
    _check_values(samples)
    timepoints = sorted({float(t) for t in samples["timepoint_months"]})
    names = contrast_names(timepoints)
    design: ModelDesign | None
    try:
        design = model_design(samples, time=time)
    except AbundanceDesignError as err:
        reason = _one_patient(samples)
        if reason is not None or time != "factor":
            return None, dict.fromkeys(names, reason or str(err))
        design = _cell_means_design(samples, timepoints, names)
    if design is None:
        known = "no patient has response 'responder' or 'non_responder'"
        return None, dict.fromkeys(names, known)
    return design, {c: design.not_estimable[c] for c in names if c in design.not_estimable}


def _cell_means_design(
    samples: pd.DataFrame, timepoints: list[float], names: list[str]
) -> ModelDesign | None:
    response = samples["response"].to_numpy()
    months = samples["timepoint_months"].to_numpy(dtype=float)
    cells = sorted({(g, t) for g, t in zip(response, months, strict=True)},
                   key=lambda c: (RESPONSES.index(c[0]), c[1]))  # fmt: skip
    if not any(g in RESPONSES[:2] for g, _ in cells):
        return None
    columns = tuple(f"{g}@month{t:g}" for g, t in cells)
    x = np.column_stack([((response == g) & (months == t)).astype(float) for g, t in cells])
    baseline = 0.0
    groups = set(response)
    rows: dict[str, np.ndarray] = {}
    missing: dict[str, str] = {}
    for contrast in names:
        need = _cells_of(contrast, baseline)
        absent = [c for c in need if c not in cells]
        if absent:
            why = sorted({f"no patient has response '{g}'" if g not in groups
                          else f"no {g} samples at month {t:g}" for g, t in absent})  # fmt: skip
            missing[contrast] = "; ".join(why)
            continue
        v = np.zeros(len(cells))
        sign = [1.0, -1.0, -1.0, 1.0] if contrast.startswith("response:") else [1.0, -1.0]
        for cell, w in zip(need, sign, strict=True):
            v[cells.index(cell)] += w
        rows[contrast] = v
    contrasts = pd.DataFrame(list(rows.values()), index=list(rows), columns=list(columns))
    patient_codes, _ = pd.factorize(samples["patient_id"])
    df = _cell_means_df(x, patient_codes, samples, contrasts)
    return _assemble(samples, x, columns, contrasts, "factor", df, missing)


def _cell_means_df(
    x: np.ndarray, patient: np.ndarray, samples: pd.DataFrame, contrasts: pd.DataFrame
) -> pd.Series:
    """The between-within rule for cell-means columns: the patient-level space is that of
    the response groups (each patient is in one), so comparisons of groups at a month
    get patients - groups, changes within groups observations - patients - the rest."""
    n_patients = int(patient.max()) + 1
    n_groups = samples.drop_duplicates("patient_id")["response"].nunique()
    df_between = n_patients - n_groups
    df_within = x.shape[0] - n_patients - (x.shape[1] - n_groups)
    between = [c.startswith("response@") for c in contrasts.index]
    return pd.Series(np.where(between, df_between, df_within), index=contrasts.index,
                     dtype=float)  # fmt: skip


def _patient_level(x: np.ndarray, patient: np.ndarray) -> list[int]:
    """The columns of ``x`` that are constant within every patient."""
    n = int(patient.max()) + 1
    size = np.bincount(patient, minlength=n)
    return [j for j in range(x.shape[1])
            if np.allclose(np.bincount(patient, weights=x[:, j] ** 2, minlength=n) * size,
                           np.bincount(patient, weights=x[:, j], minlength=n) ** 2)]  # fmt: skip


def with_covariate(
    design: ModelDesign, values: pd.Series, name: str
) -> tuple[ModelDesign, str | None]:
    """``design`` with a categorical adjustment (e.g. the processing batch: one value per
    sample, in the design's sample order) as treatment-coded columns that no contrast
    uses (``covariates`` names them). The design comes back unchanged when the covariate
    has one level (reason None), and with the reason why not when it is confounded with
    the design (the columns would be rank deficient) or would leave a contrast without
    degrees of freedom.

    Degrees of freedom: a column constant within every patient is patient-level and
    costs the between-patient contrasts one, any other costs the within-patient ones
    (the between-within rule of `_between_within_df`)."""
    values = pd.Series(values).astype(str).reset_index(drop=True)
    if len(values) != design.x.shape[0]:
        msg = f"{len(values)} values of {name!r} for a design of {design.x.shape[0]} samples"
        raise AbundanceDesignError(msg)
    levels = sorted(values.unique())
    if len(levels) < 2:
        return design, None
    extra = np.column_stack([(values == level).to_numpy(dtype=float) for level in levels[1:]])
    x = np.hstack([design.x, extra])
    if np.linalg.matrix_rank(x) < x.shape[1]:
        return design, (f"{name} is confounded with response and time (its columns are "
                        f"linear combinations of theirs): not adjusted for {name}")  # fmt: skip
    columns = (*design.columns, *(f"{name}{level}" for level in levels[1:]))
    contrasts = design.contrasts.reindex(columns=list(columns), fill_value=0.0)
    before = _patient_level(design.x, design.patient)
    after = _patient_level(x, design.patient)
    added_between = int(
        np.linalg.matrix_rank(x[:, after]) - np.linalg.matrix_rank(design.x[:, before])
    )
    added_within = extra.shape[1] - added_between
    uses_between = np.abs(design.contrasts.to_numpy()[:, before]).sum(axis=1) > 0
    df = design.df - np.where(uses_between, added_between, added_within)
    if (df <= 0).any():
        return design, (f"too few samples to adjust for {name} ({len(levels)} levels) and "
                        "keep degrees of freedom for every contrast: not adjusted")  # fmt: skip
    adjusted = ModelDesign(
        samples=design.samples, x=x, columns=columns, patient=design.patient,
        contrasts=contrasts, time=design.time, n_patients=design.n_patients, df=df,
        not_estimable=design.not_estimable,
        covariates=(*design.covariates, *columns[len(design.columns):]),
    )  # fmt: skip
    return adjusted, None


def _between_within_df(x, names, patient, contrasts: pd.DataFrame) -> pd.Series:
    """Denominator degrees of freedom by the between-within rule (SAS ``DDFM=BETWITHIN``,
    glmmTMB/nlme): a contrast that involves a patient-level column (constant within every
    patient: intercept, response) gets patients - rank(patient-level columns); one of
    within-patient columns only gets observations - patients - their rank beyond those."""
    n_patients = int(patient.max()) + 1
    between = _patient_level(x, patient)
    rank_between = np.linalg.matrix_rank(x[:, between])
    df_between = n_patients - rank_between
    df_within = x.shape[0] - n_patients - (x.shape[1] - rank_between)
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
    order = [c for c in _contrast_order(timepoints) if c in rows]
    return pd.DataFrame([rows[c] for c in order], index=order, columns=list(names))

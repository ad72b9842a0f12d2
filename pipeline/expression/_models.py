"""Designs and negative-binomial GLM fits of one cell type's pseudobulk (PyDESeq2).

Two fits per cell type, each with the contrast names of docs/contracts.md:

- **across patients** (``response@month{t}``): ``response * timepoint`` over every
  sample (treatment coding, `pipeline.abundance.estimable_design`: its cell-means
  fallback and its reasons for contrasts a small design cannot estimate), batch as a
  covariate where it is not confounded. Samples of one patient at different months
  compare groups at one month only, so no patient term is needed for these contrasts;
  the dispersion is pooled over the months.
- **patients blocked** (``time{t}@responder``, ``time{t}@non_responder``,
  ``response:time{t}``): DESeq2's "individuals nested within groups" design, one
  column per patient (with two or more samples) and one per response group x later
  month: each group's change from baseline is estimated within patients, so the
  patients' own expression levels cancel.

PyDESeq2 (DESeq2's method: median-of-ratios size factors, trended and shrunken
dispersions, Wald tests, Cook's distance outlier refits) fits each design; q-values are
Benjamini-Hochberg within one cell type x contrast over the genes with a p-value.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..abundance import bh_qvalues, contrast_names, estimable_design

RESPONSES = ("responder", "non_responder", "unknown")


@dataclass(frozen=True)
class FitDesign:
    """One fit's samples, design matrix and contrasts (rows of ``x`` follow ``samples``)."""

    name: str  # "across_patients" or "patients_blocked"
    samples: pd.DataFrame
    x: pd.DataFrame  # sample x column
    contrasts: pd.DataFrame  # contrast x column
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class CellTypeDesigns:
    fits: list[FitDesign]
    not_estimable: dict[str, str] = field(default_factory=dict)


def _full_rank(x: np.ndarray) -> bool:
    return bool(x.size) and int(np.linalg.matrix_rank(x)) == x.shape[1]


def _with_batch(x: pd.DataFrame, batch: pd.Series, what: str) -> tuple[pd.DataFrame, list[str]]:
    """``x`` with treatment-coded batch columns when the design stays of full rank."""
    levels = sorted(set(batch.astype(str)))
    if len(levels) < 2:
        return x, []
    extra = pd.DataFrame(
        {f"batch{b}": (batch.astype(str).to_numpy() == b).astype(float) for b in levels[1:]},
        index=x.index,
    )
    both = pd.concat([x, extra], axis=1)
    if not _full_rank(both.to_numpy()):
        return x, [f"{what}: processing batch is confounded with the design; left out"]
    if both.shape[0] <= both.shape[1]:
        return x, [f"{what}: no degrees of freedom left for processing batch; left out"]
    return both, []


def _across_patients(samples: pd.DataFrame, batch: bool) -> tuple[FitDesign | None, dict]:
    design, missing = estimable_design(samples)
    wanted = [c for c in contrast_names(sorted(set(samples["timepoint_months"].astype(float))))
              if c.startswith("response@")]  # fmt: skip
    missing = {c: r for c, r in missing.items() if c in wanted}
    if design is None:
        return None, missing
    x = pd.DataFrame(design.x, columns=list(design.columns), index=samples["sample_id"])
    if x.shape[0] <= x.shape[1]:
        reason = (f"{x.shape[0]} samples for {x.shape[1]} design columns leave no replicates "
                  "to estimate the dispersion")  # fmt: skip
        return None, {**missing, **dict.fromkeys([c for c in wanted if c not in missing], reason)}
    notes: list[str] = []
    if batch:
        x, notes = _with_batch(x, samples["batch"], "across patients")
    keep = [c for c in design.contrasts.index if c in wanted and c not in missing]
    contrasts = design.contrasts.loc[keep].reindex(columns=x.columns, fill_value=0.0)
    if contrasts.empty:
        return None, missing
    return FitDesign("across_patients", samples, x, contrasts, tuple(notes)), missing


def _patients_blocked(samples: pd.DataFrame, batch: bool) -> tuple[FitDesign | None, dict]:
    months = sorted(set(samples["timepoint_months"].astype(float)))
    wanted = [c for c in contrast_names(months) if not c.startswith("response@")]
    if not wanted:
        return None, {}
    per_patient = samples.groupby("patient_id")["sample_id"].transform("size")
    paired = samples[per_patient.to_numpy() >= 2].reset_index(drop=True)
    if paired.empty:
        reason = (
            "no patient has samples at two timepoints: change within patients cannot be estimated"
        )
        return None, dict.fromkeys(wanted, reason)
    month = paired["timepoint_months"].to_numpy(dtype=float)
    response = paired["response"].astype(str).to_numpy()
    patients = list(dict.fromkeys(paired["patient_id"].astype(str)))
    cols = {f"patient{p}": (paired["patient_id"].astype(str).to_numpy() == p).astype(float)
            for p in patients}  # fmt: skip
    missing: dict[str, str] = {}
    have: dict[tuple[str, float], str] = {}
    for g in RESPONSES:
        for t in months[1:]:
            at_t = set(paired.loc[(response == g) & (month == t), "patient_id"])
            at_0 = set(paired.loc[(response == g) & (month == months[0]), "patient_id"])
            if at_t & at_0:
                name = f"{g}:month{t:g}"
                cols[name] = ((response == g) & (month == t)).astype(float)
                have[g, t] = name
    x = pd.DataFrame(cols, index=paired["sample_id"].to_numpy())
    rows: dict[str, pd.Series] = {}
    for t in months[1:]:
        for g in RESPONSES[:2]:
            contrast = f"time{t:g}@{g}"
            if (g, t) in have:
                rows[contrast] = pd.Series({have[g, t]: 1.0})
            else:
                missing[contrast] = (f"no {g} patient has samples at month {months[0]:g} "
                                     f"and month {t:g}")  # fmt: skip
        inter = f"response:time{t:g}"
        if ("non_responder", t) in have and ("responder", t) in have:
            rows[inter] = pd.Series({have["non_responder", t]: 1.0, have["responder", t]: -1.0})
        else:
            missing[inter] = "; ".join(
                missing.get(f"time{t:g}@{g}", "") for g in RESPONSES[:2]
                if f"time{t:g}@{g}" in missing
            )  # fmt: skip
    if not rows:
        return None, missing
    if not _full_rank(x.to_numpy()) or x.shape[0] <= x.shape[1]:
        reason = "the patients-blocked design leaves no residual degrees of freedom"
        return None, {**missing, **dict.fromkeys(rows, reason)}
    notes: list[str] = []
    if batch:
        x, notes = _with_batch(x, paired["batch"], "patients blocked")
    contrasts = pd.DataFrame(rows).T.reindex(columns=x.columns, fill_value=0.0).fillna(0.0)
    return FitDesign("patients_blocked", paired, x, contrasts, tuple(notes)), missing


def cell_type_designs(samples: pd.DataFrame, *, batch: bool = True) -> CellTypeDesigns:
    """The fits of one cell type's samples (`sample_id`, `patient_id`,
    `timepoint_months`, `response`, `batch`) and the contrasts they cannot estimate."""
    samples = samples.reset_index(drop=True).astype(
        {"sample_id": str, "patient_id": str, "response": str, "batch": str}
    )
    fits, missing = [], {}
    for build in (_across_patients, _patients_blocked):
        fit, why = build(samples, batch)
        missing.update(why)
        if fit is not None:
            fits.append(fit)
    return CellTypeDesigns(fits, missing)


DE_COLUMNS = ["gene", "contrast", "log2fc", "lfc_se", "pvalue", "qvalue", "base_mean",
              "n_samples"]  # fmt: skip


def fit_deseq2(
    counts: np.ndarray, genes: list[str], fit: FitDesign, *, batched: bool = True
) -> tuple[pd.DataFrame, list[str]]:
    """PyDESeq2 on ``counts`` (samples of ``fit`` x genes): one row per gene and contrast,
    and the notes of the fit (size factors, warnings). ``batched``: its per-gene solvers
    batched over genes (`BatchedInference`); False: PyDESeq2's own, gene by gene."""
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.default_inference import DefaultInference
    from pydeseq2.ds import DeseqStats

    from ._inference import BatchedInference

    inference = BatchedInference() if batched else DefaultInference(n_cpus=1)

    notes: list[str] = []
    frame = pd.DataFrame(np.asarray(counts, dtype=np.int64), index=fit.x.index, columns=genes)
    meta = fit.samples.set_index("sample_id").loc[fit.x.index]
    sf = "ratio"
    if not (frame.to_numpy() > 0).all(axis=0).any():
        sf = "poscounts"  # DESeq2's advice when every gene has a zero somewhere
        notes.append(f"{fit.name}: every gene is zero in some sample; poscounts size factors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dds = DeseqDataSet(counts=frame, metadata=meta, design=fit.x, size_factors_fit_type=sf,
                           inference=inference, quiet=True, low_memory=True)  # fmt: skip
        dds.deseq2()
        tables = []
        for contrast, weights in fit.contrasts.iterrows():
            stats = DeseqStats(dds, contrast=weights.to_numpy(dtype=float), cooks_filter=True,
                               independent_filter=False, inference=inference, quiet=True)  # fmt: skip
            stats.summary()
            res = stats.results_df
            table = pd.DataFrame({
                "gene": genes,
                "contrast": contrast,
                "log2fc": res["log2FoldChange"].to_numpy(dtype=float),
                "lfc_se": res["lfcSE"].to_numpy(dtype=float),
                "pvalue": res["pvalue"].to_numpy(dtype=float),
                "base_mean": res["baseMean"].to_numpy(dtype=float),
                "n_samples": len(frame),
            })  # fmt: skip
            table["qvalue"] = bh_qvalues(table["pvalue"].to_numpy())
            tables.append(table[DE_COLUMNS])
    for w in caught:
        text = str(w.message).splitlines()[0]
        if issubclass(w.category, UserWarning | RuntimeWarning):
            notes.append(f"{fit.name}: {text}")
    return pd.concat(tables, ignore_index=True), list(dict.fromkeys(notes))

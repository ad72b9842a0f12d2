"""Fit the abundance models of every cell type and denominator and test the contrasts
(pure: tidy counts in, tables out).

Models per cell type: the binomial GLMM (``glmm``; `_glmm.py`) and the propeller-style
linear mixed model (``propeller``; `_propeller.py`). Denominators: lineages within all
QC-passed cells (``PBMC``), B subsets within B cells (``B``) and within all QC-passed
cells (``PBMC``). Benjamini-Hochberg q-values across cell types within each contrast,
denominator and method. `unassigned` is counted in the table but not tested.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import norm
from scipy.stats import t as t_dist

from ..labels import DESIGN_COLUMNS, UNASSIGNED
from ..runtime import one_blas_thread
from ._design import ModelDesign, TimeCoding, contrast_names, estimable_design
from ._glmm import fit_binomial_glmm
from ._propeller import Transform, fit_propeller

TEST_COLUMNS = ("cell_type", "denominator", "contrast", "estimate", "ci_low", "ci_high",
                "pvalue", "qvalue", "method")  # fmt: skip
METHODS = ("glmm", "propeller")
MODEL_TABLES = (("lineage", "PBMC"), ("b_subset", "B"), ("b_subset", "PBMC"))


@dataclass(frozen=True)
class AbundanceResult:
    """``tests``: tests.csv of docs/contracts.md; ``fits``: one row per model (variances,
    convergence, the optimizer's notes and fallbacks); ``summary``: the design and what
    was left out; ``warnings``: cell types not fitted and models that did not converge;
    ``uncertainty``: with label draws (`fit_with_label_draws`), each pooled interval
    beside the hard-label one."""

    tests: pd.DataFrame
    fits: pd.DataFrame
    summary: dict
    warnings: tuple[str, ...] = field(default_factory=tuple)
    uncertainty: pd.DataFrame | None = None  # label draws: pooled beside hard intervals


def sample_design(counts: pd.DataFrame) -> pd.DataFrame:
    """One row per sample: its design columns, in the table's order."""
    cols = [c for c in DESIGN_COLUMNS if c != "batch"]  # batch is not in the models
    return counts[cols].drop_duplicates("sample_id").reset_index(drop=True)


def model_tables(counts: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Per (level, denominator): sample x cell type counts and the sample totals."""
    out = {}
    pbmc = counts[counts["level"] == "lineage"].drop_duplicates("sample_id")
    pbmc_total = pbmc.set_index("sample_id")["total"]
    for level, denominator in MODEL_TABLES:
        part = counts[counts["level"] == level]
        wide = part.pivot(index="sample_id", columns="cell_type", values="count")
        if denominator == "PBMC":
            total = pbmc_total.reindex(wide.index)
        else:
            total = part.drop_duplicates("sample_id").set_index("sample_id")["total"]
        wide = wide.drop(columns=[UNASSIGNED], errors="ignore")
        out[(level, denominator)] = wide.assign(_total=total.reindex(wide.index).to_numpy())
    return out


def contrast_table(
    beta: np.ndarray, vcov: np.ndarray, contrasts: pd.DataFrame, df: pd.Series | None = None
) -> pd.DataFrame:
    """Wald estimate, 95% CI and two-sided p-value of each contrast row: t with the given
    degrees of freedom per contrast, or z (lme4's ``summary``) when ``df`` is None; with
    the standard error ``se`` and the degrees of freedom ``df`` (NaN: z)."""
    lmat = contrasts.to_numpy()
    est = lmat @ beta
    se = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", lmat, vcov, lmat), 0.0))
    dof = np.full(len(est), np.nan) if df is None else df.reindex(contrasts.index).to_numpy()
    dist = norm if df is None else t_dist(dof)
    half = dist.ppf(0.975) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2.0 * dist.sf(np.abs(est / se))
    return pd.DataFrame({"contrast": contrasts.index, "estimate": est, "ci_low": est - half,
                         "ci_high": est + half, "pvalue": p, "se": se, "df": dof})  # fmt: skip


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size:
        order = ok[np.argsort(p[ok])]
        ranked = p[order] * ok.size / np.arange(1, ok.size + 1)
        q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


def _inestimable(design: ModelDesign, count: np.ndarray, total: np.ndarray):
    """Design cells (response x month) where the type has no cells, or only it, in every
    sample: the log-odds there is infinite, so contrasts using that cell are not
    estimable (the fit's other contrasts are unaffected). None when there are none."""
    weights = design.cell_weights()
    if weights is None:
        return None
    keys = design.samples[["response", "timepoint_months"]].astype(str).agg("@".join, axis=1)
    frame = pd.DataFrame({"key": keys.to_numpy(), "count": count, "rest": total - count})
    sums = frame.groupby("key")[["count", "rest"]].sum()
    bad = sums.index[(sums["count"] == 0) | (sums["rest"] == 0)].tolist()
    if not bad:
        return None
    hit = weights[bad].abs().sum(axis=1) > 0
    where = ", ".join(f"{k.split('@')[0]} at month {k.split('@')[1]}" for k in bad)
    return f"all or none of the cells in {where}", list(weights.index[hit])


def _fit_one(method: str, count, total, design: ModelDesign, transform: Transform):
    if method == "glmm":
        g = fit_binomial_glmm(count, total, design.x, design.patient)
        info = {"sd_patient": g.sd_patient, "sd_sample": g.sd_sample, "converged": g.converged,
                "optimizer": g.optimizer, "loglik": g.loglik}  # fmt: skip
        return g.beta, g.vcov, info, g.warnings
    p = fit_propeller(count, total, design.x, design.patient, transform=transform)
    info = {"sd_patient": p.sd_patient, "sd_sample": p.sd_residual, "converged": p.converged,
            "optimizer": "REML", "loglik": np.nan}  # fmt: skip
    return p.beta, p.vcov, info, p.warnings


def _not_estimable_rows(
    names: list[str],
    design: ModelDesign | None,
    cell_type: str,
    denominator: str,
    methods: tuple[str, ...],
) -> pd.DataFrame:
    """NaN rows for the contrasts the design cannot estimate (tests.csv lists every
    contrast; summary.json and the report say why)."""
    fitted = set() if design is None else set(design.contrasts.index) - set(design.not_estimable)
    blank = [c for c in names if c not in fitted]
    if not blank:
        return pd.DataFrame(columns=TEST_COLUMNS)
    return pd.DataFrame([
        {"cell_type": cell_type, "denominator": denominator, "contrast": c, "method": m,
         "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan, "pvalue": np.nan}
        for m in methods for c in blank
    ])  # fmt: skip


@one_blas_thread  # many small fits (see `pipeline.runtime`)
def fit_abundance_models(
    counts: pd.DataFrame,
    *,
    time: TimeCoding = "factor",
    methods: tuple[str, ...] = METHODS,
    transform: Transform = "logit",
    only: tuple[str, str] | None = None,
    standard_errors: bool = False,
    skip: frozenset[tuple[str, str]] = frozenset(),
) -> AbundanceResult:
    """Fit every cell type's models and test the contrasts of docs/contracts.md.

    ``counts`` is the tidy table of `abundance_counts`. Every contrast of the design's
    timepoints gets a row per cell type, denominator and method; one the design cannot
    estimate (a pilot, one response group, one timepoint, `unknown` only:
    `estimable_design`) is NaN, and ``summary['not_estimable']`` and the warnings say
    why. Cell types with zero counts in every sample are left out with a warning, and
    models that did not converge are reported with the fallback used. Raises
    `AbundanceDesignError` only for values that are no design (a response outside the
    vocabulary, a patient with two). ``only = (cell_type, denominator)`` fits one model.
    ``standard_errors`` keeps each contrast's ``se`` and ``df`` (NaN: z) in ``tests``
    (the label draws' pooling needs them; q-values are then left to the caller).
    ``skip`` names (cell type, denominator) models not to fit (no rows, no notes): a
    label draw's models whose data equal the hard labels'.
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        msg = f"unknown abundance methods {unknown}; expected some of {list(METHODS)}"
        raise ValueError(msg)
    samples = sample_design(counts)
    full, not_estimable = estimable_design(samples, time=time)
    names = contrast_names(sorted({float(t) for t in samples["timepoint_months"]}))
    rows, fits, notes = [], [], []
    for contrast, reason in not_estimable.items():
        notes.append(f"{contrast}: not estimable, {reason}")
    for (level, denominator), wide in model_tables(counts).items():
        if only is not None:
            if denominator != only[1] or only[0] not in wide.columns:
                continue
            wide = wide[[only[0], "_total"]]
        kept = samples[samples["sample_id"].map(wide["_total"]).fillna(0).to_numpy() > 0]
        design, lost = (full, not_estimable) if len(kept) == len(samples) else (
            estimable_design(kept, time=time))  # fmt: skip
        for contrast in sorted(set(lost) - set(not_estimable)):
            notes.append(f"{contrast} within {denominator}: not estimable, {lost[contrast]}")
        for cell_type in wide.columns.drop("_total"):
            if (cell_type, denominator) in skip:
                continue
            if wide[cell_type].sum() == 0:
                notes.append(f"{cell_type} within {denominator}: not fitted, zero cells in "
                             "every sample")  # fmt: skip
                continue
            blank = _not_estimable_rows(names, design, cell_type, denominator, methods)
            if not blank.empty:
                rows.append(blank)
            if design is None or set(design.contrasts.index) <= set(design.not_estimable):
                continue
            total = wide["_total"].reindex(design.samples["sample_id"]).to_numpy(dtype=float)
            count = wide[cell_type].reindex(design.samples["sample_id"]).to_numpy(dtype=float)
            for method in methods:
                beta, vcov, info, fit_notes = _fit_one(method, count, total, design, transform)
                if not info["converged"]:
                    notes.append(f"{cell_type} within {denominator} ({method}): did not "
                                 f"converge; {'; '.join(fit_notes) or 'no fallback left'}")  # fmt: skip
                fits.append({"cell_type": cell_type, "level": level, "denominator": denominator,
                             "method": method, "n_samples": len(total), **info,
                             "notes": "; ".join(fit_notes)})  # fmt: skip
                table = contrast_table(beta, vcov, design.contrasts, design.df)
                table = table[~table["contrast"].isin(list(design.not_estimable))]
                empty = _inestimable(design, count, total) if method == "glmm" else None
                if empty:  # propeller's pseudo-count keeps its estimates finite
                    cols = ["estimate", "ci_low", "ci_high", "pvalue", "se"]
                    table.loc[table["contrast"].isin(empty[1]), cols] = np.nan
                    notes.append(f"{cell_type} within {denominator} (glmm): {empty[0]}; "
                                 f"{', '.join(empty[1])} not estimable (NaN)")  # fmt: skip
                rows.append(table.assign(cell_type=cell_type, denominator=denominator,
                                         method=method))  # fmt: skip
    tests = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=TEST_COLUMNS)
    tests["qvalue"] = np.nan
    for _, idx in tests.groupby(["denominator", "contrast", "method"]).groups.items():
        tests.loc[idx, "qvalue"] = bh_qvalues(tests.loc[idx, "pvalue"].to_numpy())
    patients = samples.drop_duplicates("patient_id")["response"].value_counts()
    n_unknown = int(patients.get("unknown", 0))
    summary = {
        "time": time,
        "methods": list(methods),
        "transform": transform,
        "patients": {str(k): int(v) for k, v in patients.items()},
        "samples": len(samples),
        "excluded_from_response_contrasts": {
            "patients": n_unknown,
            "samples": int((samples["response"] == "unknown").sum()),
        },
        "contrasts": names,
        "not_estimable": not_estimable,
    }
    if n_unknown:
        notes.insert(0, f"{n_unknown} patients with response 'unknown' "
                        "enter the models but not the response contrasts")  # fmt: skip
    return AbundanceResult(
        tests=tests.reindex(columns=[*TEST_COLUMNS, *(("se", "df") if standard_errors else ())]),
        fits=pd.DataFrame(fits),
        summary=summary,
        warnings=tuple(notes),
    )


def concordance(tests: pd.DataFrame, *, alpha: float = 0.05) -> pd.DataFrame:
    """GLMM against propeller per denominator: correlation of the estimates over cell
    types x contrasts, and how often the two agree on q < alpha."""
    out = []
    for denominator, part in tests.groupby("denominator"):
        wide = part.pivot_table(index=["cell_type", "contrast"], columns="method",
                                values=["estimate", "qvalue"], dropna=False)  # fmt: skip
        wide = wide.reindex(columns=pd.MultiIndex.from_product(
            [["estimate", "qvalue"], ["glmm", "propeller"]]))  # fmt: skip
        both = wide["estimate"].notna().all(axis=1)
        if both.sum() < 2:  # nothing to compare (a pilot design: no contrast estimable)
            continue
        wide = wide[both]
        a, b = wide["estimate"]["glmm"], wide["estimate"]["propeller"]
        sig_a, sig_b = wide["qvalue"]["glmm"] < alpha, wide["qvalue"]["propeller"] < alpha
        out.append({"denominator": denominator, "n": len(wide),
                    "pearson_r": float(np.corrcoef(a, b)[0, 1]),
                    "significance_agreement": float((sig_a == sig_b).mean()),
                    "significant_glmm": int(sig_a.sum()),
                    "significant_propeller": int(sig_b.sum())})  # fmt: skip
    return pd.DataFrame(out)

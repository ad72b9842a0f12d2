"""The neighbourhoods' count models: per neighbourhood, the project's binomial GLMM
(`pipeline.abundance.fit_binomial_glmm`: cells of the neighbourhood out of the sample's
cells, patient and sample random intercepts, the abundance design and contrasts), fitted
on a chunk of neighbourhoods at a time (pure; no I/O).

The sample-level random intercept is the overdispersion term (a logit-normal binomial),
so no negative-binomial model is needed for it; the null calibration is measured in
docs/benchmarks.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..abundance import ModelDesign, contrast_table, fit_binomial_glmm
from ..runtime import one_blas_thread

MAX_SD = 10.0  # a random-effect sd beyond this (log-odds scale) is a degenerate fit


@dataclass(frozen=True)
class ChunkFits:
    """One chunk's results: neighbourhoods x contrasts arrays (NaN: not estimable) and one
    record per neighbourhood of how its fit went."""

    estimate: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    pvalue: np.ndarray
    fits: pd.DataFrame  # sd_patient, sd_sample, converged, notes


def estimable_contrasts(design: ModelDesign) -> list[str]:
    """The design's contrasts that can be estimated, in its order."""
    return [c for c in design.contrasts.index if c not in design.not_estimable]


def _design_cells(design: ModelDesign) -> tuple[np.ndarray, list[str], pd.DataFrame | None]:
    weights = design.cell_weights()
    keys = design.samples[["response", "timepoint_months"]].astype(str).agg("@".join, axis=1)
    codes, names = pd.factorize(keys)
    return codes, list(names), weights


def _empty_cells(count, total, codes, names, weights, contrasts: list[str]) -> np.ndarray:
    """Which contrasts use a design cell where the neighbourhood has none (or all) of the
    cells of every sample: its log-odds there is infinite."""
    hit = np.zeros(len(contrasts), dtype=bool)
    if weights is None:
        return hit
    inside = np.bincount(codes, weights=count, minlength=len(names))
    rest = np.bincount(codes, weights=total - count, minlength=len(names))
    bad = [names[i] for i in np.flatnonzero((inside == 0) | (rest == 0))]
    if bad:
        hit = weights.loc[contrasts, bad].abs().sum(axis=1).to_numpy() > 0
    return hit


@one_blas_thread  # many small fits (see `pipeline.runtime`)
def fit_neighbourhoods(counts: np.ndarray, totals: np.ndarray, design: ModelDesign) -> ChunkFits:
    """Fit every row of ``counts`` (neighbourhoods x the design's samples) out of
    ``totals`` (the samples' cells) and test the design's estimable contrasts. A fit that
    did not converge, or whose random-effect sd passed `MAX_SD`, gives NaN for every
    contrast (its numbers mean nothing: most often a neighbourhood of one patient's or a
    few samples' cells, whose variance diverges; fits.csv says so), and a
    contrast using a design cell where the neighbourhood has no cells gives NaN."""
    contrasts = estimable_contrasts(design)
    m, c = counts.shape[0], len(contrasts)
    out = {key: np.full((m, c), np.nan) for key in ("estimate", "ci_low", "ci_high", "pvalue")}
    codes, names, weights = _design_cells(design)
    totals = np.asarray(totals, dtype=float)
    records = []
    for i in range(m):
        count = np.asarray(counts[i], dtype=float)
        fit = fit_binomial_glmm(count, totals, design.x, design.patient)
        table = contrast_table(fit.beta, fit.vcov, design.contrasts, design.df)
        table = table.set_index("contrast").loc[contrasts]
        empty = _empty_cells(count, totals, codes, names, weights, contrasts)
        degenerate = max(fit.sd_patient, fit.sd_sample) > MAX_SD
        if not fit.converged or degenerate:  # e.g. one patient's or sample's cells only
            empty[:] = True
        for key in out:
            values = table[key].to_numpy(dtype=float)
            values[empty] = np.nan
            out[key][i] = values
        notes = list(fit.warnings)
        if degenerate:
            notes.append(f"a random-effect sd above {MAX_SD:g} (the cells of a few samples "
                         "only): not tested")  # fmt: skip
        records.append({"sd_patient": fit.sd_patient, "sd_sample": fit.sd_sample,
                        "converged": fit.converged and not degenerate,
                        "notes": "; ".join(notes)})  # fmt: skip
    return ChunkFits(**out, fits=pd.DataFrame(records, columns=[
        "sd_patient", "sd_sample", "converged", "notes"]))  # fmt: skip

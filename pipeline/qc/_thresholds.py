"""Per-sample adaptive QC thresholds (median +/- k MADs) and hard bounds (pure pandas).

Following single-cell best practices (Heumos et al., Nat Rev Genet 2023): a cell is an
outlier of its sample when log1p total counts, log1p genes detected or the share of its
top-20 genes lie more than ``nmads`` median absolute deviations from the sample's median,
or its mitochondrial percentage lies more than ``nmads_mt`` MADs above the median.
The top-20 share is taken over the non-immunoglobulin genes when that metric is present
(`pct_counts_in_top_20_non_ig_genes`), so that plasmablasts are not removed as
low-complexity cells.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from ..config import QCConfig


def _mad(values: pd.Series) -> float:
    return float(np.median(np.abs(values - np.median(values))))


def _outside(values: pd.Series, groups: pd.Series, nmads: float, side: str) -> pd.Series:
    med = values.groupby(groups, observed=True).transform("median")
    mad = values.groupby(groups, observed=True).transform(_mad)
    low = values < med - nmads * mad
    high = values > med + nmads * mad
    return {"both": low | high, "low": low, "high": high}[side]


def qc_flags(metrics: pd.DataFrame, sample: pd.Series, rules: QCConfig) -> pd.DataFrame:
    """Boolean flag per reason, ``qc_reason`` (';'-joined) and ``qc_pass`` per cell."""
    log_counts = np.log1p(metrics["total_counts"])
    log_genes = np.log1p(metrics["n_genes_by_counts"])
    top = metrics.get("pct_counts_in_top_20_non_ig_genes", metrics["pct_counts_in_top_20_genes"])
    mt = metrics["pct_counts_mt"]
    flags = pd.DataFrame(index=metrics.index)
    flags["low_counts"] = _outside(log_counts, sample, rules.nmads, "low") | (
        metrics["total_counts"] < rules.min_counts
    )
    flags["high_counts"] = _outside(log_counts, sample, rules.nmads, "high")
    if rules.max_counts is not None:
        flags["high_counts"] |= metrics["total_counts"] > rules.max_counts
    flags["low_genes"] = _outside(log_genes, sample, rules.nmads, "low") | (
        metrics["n_genes_by_counts"] < rules.min_genes
    )
    flags["high_genes"] = _outside(log_genes, sample, rules.nmads, "high")
    if rules.max_genes is not None:
        flags["high_genes"] |= metrics["n_genes_by_counts"] > rules.max_genes
    flags["top20_outlier"] = _outside(top, sample, rules.nmads, "both")
    flags["high_mt"] = _outside(mt, sample, rules.nmads_mt, "high") | (mt > rules.max_pct_mt)
    return flags


def reasons(flags: pd.DataFrame) -> pd.Series:
    """';'-joined names of the flags set per cell; '' for cells that pass (categorical,
    its categories sorted: one string per combination of flags, not per cell)."""
    names = np.array(flags.columns)
    values = flags.to_numpy(dtype=bool)
    combos, codes = np.unique(values, axis=0, return_inverse=True)
    labels = np.array([";".join(names[row]) for row in combos], dtype=object)
    order = np.argsort(labels, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    categorical = pd.Categorical.from_codes(rank[codes.ravel()], categories=labels[order])
    return pd.Series(categorical, index=flags.index)


def qc_summary(obs: pd.DataFrame) -> pd.DataFrame:
    """Per sample: cells, kept, removed by each reason, medians of the metrics."""
    reason_cols = [c for c in obs.columns if c.startswith("qc_flag_")]
    grouped = obs.groupby("sample_id", observed=True)
    summary = pd.DataFrame(
        {
            "n_cells": grouped.size(),
            "n_kept": grouped["qc_pass"].sum(),
            "median_total_counts": grouped["total_counts"].median(),
            "median_genes": grouped["n_genes_by_counts"].median(),
            "median_pct_mt": grouped["pct_counts_mt"].median(),
        }
    )
    for col in reason_cols:
        summary[f"n_{col.removeprefix('qc_flag_')}"] = grouped[col].sum()
    summary["fraction_kept"] = summary["n_kept"] / summary["n_cells"]
    return summary.reset_index()

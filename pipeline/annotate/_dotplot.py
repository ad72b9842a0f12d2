"""Marker dot-plot tables: per label, each feature's mean log1p(CP10K) and the share
of cells expressing it (per-chunk sums on the workers, added in the driver)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from distributed import Client

from ._markers import FeatureMap


def dot_sums(
    features: sp.csr_matrix,
    rows: np.ndarray,
    cols: np.ndarray,
    size: np.ndarray,
    codes: np.ndarray,
    n_labels: int,
) -> np.ndarray:
    """Per label: cells, sum of log1p(CP10K) and cells expressing, for each feature."""
    x = features[rows][:, cols].toarray()
    out = np.zeros((3, n_labels, x.shape[1]))
    onehot = np.zeros((len(codes), n_labels))
    valid = codes >= 0
    onehot[np.flatnonzero(valid), codes[valid]] = 1
    out[0] = onehot.sum(axis=0)[:, None]
    out[1] = onehot.T @ np.log1p(x / size[:, None])
    out[2] = onehot.T @ (x > 0)
    return out


def cohort_dotplot(
    client: Client,
    futures: list[Any],
    local: list[np.ndarray],
    kept_rows: list[np.ndarray],
    cols: np.ndarray,
    size: np.ndarray,
    codes_all: np.ndarray,
    names: tuple[str, ...],
    fmap: FeatureMap,
) -> pd.DataFrame:
    """Mean log1p(CP10K) and fraction expressing of every feature per called label:
    ``codes_all`` the cells' codes into ``names`` (the level's labels and unassigned),
    in the order of the chunks' rows ``local``."""
    parts, start = [], 0
    for fut, loc, r in zip(futures, local, kept_rows, strict=True):
        codes = codes_all[start : start + len(loc)].astype(np.int64)
        start += len(loc)
        parts.append(
            client.submit(dot_sums, fut, loc, cols, size[r[loc]], codes, len(names), pure=False)
        )
    return dot_table(np.sum(client.gather(parts), axis=0), names, fmap)


def dot_table(sums: np.ndarray, names: tuple[str, ...], fmap: FeatureMap) -> pd.DataFrame:
    n = np.maximum(sums[0], 1)
    rows = []
    for i, label in enumerate(names):
        if sums[0, i, 0] == 0:
            continue
        for j, feature in enumerate(fmap.features):
            rows.append(
                {
                    "label": label,
                    "feature": feature,
                    "mean_log_cp10k": float(sums[1, i, j] / n[i, j]),
                    "fraction_expressing": float(sums[2, i, j] / n[i, j]),
                    "n_cells": int(sums[0, i, j]),
                }
            )
    return pd.DataFrame(rows)

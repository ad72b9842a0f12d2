"""Highly variable genes (seurat_v3) and PCA from summed moments (pure numpy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.linalg import eigh

from ..moments import Moments


def mean_var(moments: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """n, per-gene mean and variance (ddof=1) from (n, sum, sum of squares)."""
    n = moments[0, 0]
    mean = moments[1] / n
    var = (moments[2] - n * mean**2) / (n - 1)
    return n, mean, np.maximum(var, 0.0)


def clip_values(moments: Moments, n_batches: int, span: float) -> tuple[np.ndarray, np.ndarray]:
    """Seurat v3's per-batch regularized sd (loess of log10 var on log10 mean) and clip value.

    Returns (reg_std, clip) each (n_batches, n_genes), as in scanpy's `seurat_v3` flavor.
    """
    from skmisc.loess import loess

    n_genes = next(iter(moments.values())).shape[1]
    reg_std = np.ones((n_batches, n_genes))
    clip = np.full((n_batches, n_genes), np.inf)
    for b, m in moments.items():
        n, mean, var = mean_var(m)
        not_const = var > 0
        fitted = np.zeros(n_genes)
        model = loess(np.log10(mean[not_const]), np.log10(var[not_const]), span=span, degree=2)
        model.fit()
        fitted[not_const] = model.outputs.fitted_values
        reg_std[b] = np.sqrt(10**fitted)
        clip[b] = reg_std[b] * np.sqrt(n) + mean
    return reg_std, clip


def seurat_v3_table(
    moments: Moments,
    clipped: Moments,
    reg_std: np.ndarray,
    gene_ids: pd.Index,
    n_top_genes: int,
) -> pd.DataFrame:
    """scanpy's `highly_variable_genes(flavor='seurat_v3', batch_key=...)` from moments."""
    batches = sorted(moments)
    total = np.sum([moments[b] for b in batches], axis=0)
    _, means, variances = mean_var(total)
    norm = []
    for b in batches:
        n, mean, _ = mean_var(moments[b])
        s, s2 = clipped[b][1], clipped[b][2]
        norm.append((1 / ((n - 1) * reg_std[b] ** 2)) * (n * mean**2 + s2 - 2 * s * mean))
    norm_vars = np.vstack(norm)
    ranks = np.argsort(np.argsort(-norm_vars, axis=1), axis=1).astype(np.float32)
    nbatches = (ranks < n_top_genes).sum(axis=0)
    ranks[ranks >= n_top_genes] = np.nan
    median_rank = np.ma.median(np.ma.masked_invalid(ranks), axis=0).filled(np.nan)
    df = pd.DataFrame(
        {
            "means": means,
            "variances": variances,
            "variances_norm": norm_vars.mean(axis=0),
            "highly_variable_rank": median_rank,
            "highly_variable_nbatches": nbatches,
        },
        index=gene_ids,
    )
    order = df.sort_values(
        ["highly_variable_rank", "highly_variable_nbatches"],
        ascending=[True, False],
        na_position="last",
        kind="stable",
    ).index
    df["highly_variable"] = False
    df.loc[order[:n_top_genes], "highly_variable"] = True
    return df


def pca_from_gram(
    n: float, sums: np.ndarray, g: np.ndarray, n_comps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, components (genes x n_comps), variances and variance ratios from X'X.

    Covariance = (X'X - n mean mean') / (n - 1); its top eigenvectors are the principal
    axes. Signs are fixed so that each component's largest loading is positive.
    """
    mean = sums / n
    cov = (g - n * np.outer(mean, mean)) / (n - 1)
    k = min(n_comps, cov.shape[0])
    values, vectors = eigh(cov, subset_by_index=[cov.shape[0] - k, cov.shape[0] - 1])
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(k)])
    vectors = vectors * signs
    return mean, vectors, values, values / np.trace(cov)


def pca_from_products(
    n: float,
    sums: np.ndarray,
    squares: float,
    basis: np.ndarray,
    product: np.ndarray,
    n_comps: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean, components, variances, variance ratios and the mixing matrix (q x n_comps:
    components = basis @ mixing) by Rayleigh-Ritz on ``basis``.

    ``basis`` (genes x q, orthonormal columns, q > n_comps) spans nearly the top
    eigenvectors of the covariance (the axes of a subsample); ``product`` is X'X basis of
    every cell, ``sums`` and ``squares`` their column sums and sum of squares. The
    covariance restricted to the basis, Q'CQ (q x q), gives the components within its
    span, so two axes of near-equal variance are resolved by the whole cohort rather than
    rotated by the subsample. Variances are Ritz values (at most the exact ones); ratios
    are against the exact total variance. Signs as `pca_from_gram`.
    """
    mean = sums / n
    cq = (product - n * np.outer(mean, mean @ basis)) / (n - 1)
    small = basis.T @ cq
    small = (small + small.T) / 2
    k = min(n_comps, small.shape[0])
    values, w = eigh(small, subset_by_index=[small.shape[0] - k, small.shape[0] - 1])
    order = np.argsort(values)[::-1]
    values, mixing = values[order], w[:, order]
    vectors = basis @ mixing
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(k)])
    vectors, mixing = vectors * signs, mixing * signs
    total = (squares - n * float(mean @ mean)) / (n - 1)
    return mean, vectors, values, values / total, mixing


@dataclass(frozen=True)
class PcaLoadings:
    """The PCA the cohort's cells were projected with; add-batch projects new cells with
    the same centre and components. Stored as var ``pca_mean`` and varm ``PCs``."""

    hvg: np.ndarray  # positions of the highly variable genes among the cohort's genes
    centre: np.ndarray  # the HVGs' mean log-normalized value
    components: np.ndarray  # HVGs x components

    def to_record(self, n_genes: int) -> tuple[np.ndarray, np.ndarray]:
        """(the ``pca_mean`` column: genes, NaN off the HVGs; the ``PCs`` matrix: genes x
        components, float32, 0 off the HVGs)."""
        centre = np.full(n_genes, np.nan)
        centre[self.hvg] = self.centre
        loadings = np.zeros((n_genes, self.components.shape[1]), dtype=np.float32)
        loadings[self.hvg] = self.components
        return centre, loadings

    @classmethod
    def from_record(cls, var: pd.DataFrame, loadings: np.ndarray) -> PcaLoadings:
        """The loadings from a stored var table (``highly_variable``, ``pca_mean``) and
        ``PCs`` matrix, as `to_record` wrote them."""
        hvg = np.flatnonzero(var["highly_variable"].to_numpy())
        return cls(hvg, var["pca_mean"].to_numpy()[hvg], np.asarray(loadings)[hvg])

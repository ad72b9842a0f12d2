"""Report figures of the neighbourhoods stage (matplotlib; pure functions returning a
Figure, nothing saved)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..labels import B_SUBSETS, LINEAGES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

UP, DOWN, NOT_CALLED = "#d95f02", "#1f77b4", "#b0b0b0"


def nhood_groups(tests: pd.DataFrame) -> pd.Series:
    """Each row's group: ``B: <subset>`` for B-majority neighbourhoods with a majority
    subset, else the majority lineage."""
    lineage = tests["lineage"].fillna("").astype(str)
    subset = tests["b_subset"].fillna("").astype(str)
    b = (lineage == "B") & (subset != "")
    return pd.Series(np.where(b, "B: " + subset, lineage.replace("", "mixed")), index=tests.index)


def _order(groups: pd.Series) -> list[str]:
    known = [f"B: {s}" for s in B_SUBSETS] + [x for x in LINEAGES if x != "B"] + ["B", "mixed"]
    present = set(groups)
    return [g for g in known if g in present] + sorted(present - set(known))


def beeswarm_plot(tests: pd.DataFrame, *, alpha: float, title: str = "") -> Figure:
    """One contrast's neighbourhood estimates (log odds ratios) grouped by majority label:
    a point per neighbourhood, jittered within its group, coloured when its spatial FDR
    is below ``alpha`` (orange higher, blue lower)."""
    from ..runtime import pyplot

    plt = pyplot()
    groups = nhood_groups(tests)
    order = _order(groups)
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * len(order) + 1.5))
    rng = np.random.default_rng(0)
    est = tests["estimate"].to_numpy(dtype=float)
    fdr = tests["spatial_fdr"].to_numpy(dtype=float)
    called = np.nan_to_num(fdr, nan=1.0) < alpha
    colours = np.where(~called, NOT_CALLED, np.where(est > 0, UP, DOWN))
    for i, group in enumerate(order):
        on = (groups == group).to_numpy() & np.isfinite(est)
        y = i + rng.uniform(-0.3, 0.3, on.sum())
        ax.scatter(est[on], y, s=6, c=colours[on], linewidths=0, alpha=0.8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(order)), order)
    ax.invert_yaxis()
    ax.set_xlabel("log odds ratio (neighbourhood)")
    n_called = int(called.sum())
    ax.set_title(f"{title}: {n_called} of {len(tests)} neighbourhoods at spatial FDR < {alpha:g}")
    fig.tight_layout()
    return fig


def nhood_umap_plot(
    cells: np.ndarray, index_positions: np.ndarray, estimate: np.ndarray, called: np.ndarray,
    *, title: str = "", max_cells: int = 50_000,
) -> Figure:  # fmt: skip
    """The cells' UMAP in light grey (at most ``max_cells``, a seeded subsample) and each
    neighbourhood at its index cell: coloured by its estimate when called (red higher,
    blue lower), a small grey dot otherwise."""
    from ..runtime import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    keep = np.all(np.isfinite(cells), axis=1)
    pts = cells[keep]
    if len(pts) > max_cells:
        pts = pts[np.random.default_rng(0).choice(len(pts), max_cells, replace=False)]
    ax.scatter(pts[:, 0], pts[:, 1], s=1, c="#e6e6e6", linewidths=0, rasterized=True)
    off = ~called
    ax.scatter(index_positions[off, 0], index_positions[off, 1], s=3, c=NOT_CALLED, linewidths=0)
    if called.any():
        limit = float(np.nanmax(np.abs(estimate[called]))) or 1.0
        dots = ax.scatter(index_positions[called, 0], index_positions[called, 1], s=14,
                          c=estimate[called], cmap="RdBu_r", vmin=-limit, vmax=limit,
                          linewidths=0.2, edgecolors="black")  # fmt: skip
        fig.colorbar(dots, ax=ax, label="log odds ratio")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)
    fig.tight_layout()
    return fig

"""Report figures of the expression stage (matplotlib; pure functions returning a Figure).

Input is `expression/de.csv` (DESIGN.md's columns).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DE_COLUMNS = ("cell_type", "gene", "contrast", "log2fc", "pvalue", "qvalue")


def volcano_grid(de: pd.DataFrame, *, contrast: str, alpha: float = 0.05, label: int = 5,
                 max_panels: int = 6) -> Figure:  # fmt: skip
    """One volcano plot per cell type for ``contrast``: log2 fold change against -log10 p,
    genes at q < ``alpha`` in colour and the ``label`` smallest q-values named; the cell
    types with the most such genes first (at most ``max_panels``)."""
    from ..runtime import pyplot

    missing = [c for c in DE_COLUMNS if c not in de.columns]
    if missing:
        raise ValueError(f"DE table lacks columns {missing}")
    part = de[(de["contrast"] == contrast) & de["pvalue"].notna()]
    if part.empty:
        raise ValueError(f"DE table has no tested genes for contrast {contrast!r}")
    calls = part.assign(hit=part["qvalue"] < alpha).groupby("cell_type", sort=False)["hit"].sum()
    types = calls.sort_values(ascending=False, kind="stable").index[:max_panels].tolist()
    plt = pyplot()
    cols = min(3, len(types))
    rows = int(np.ceil(len(types) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax, cell_type in zip(axes.ravel(), types, strict=False):
        t = part[part["cell_type"] == cell_type]
        y = -np.log10(np.maximum(t["pvalue"].to_numpy(dtype=float), 1e-300))
        hit = (t["qvalue"] < alpha).to_numpy()
        ax.scatter(t["log2fc"][~hit], y[~hit], s=4, c="#bdbdbd", linewidths=0)
        ax.scatter(t["log2fc"][hit], y[hit], s=8, c="#d95f02", linewidths=0)
        for row in t.nsmallest(label, "qvalue").itertuples():
            if row.qvalue < alpha:
                ax.annotate(str(row.gene), (row.log2fc, -np.log10(max(row.pvalue, 1e-300))),
                            fontsize=7, xytext=(2, 2), textcoords="offset points")  # fmt: skip
        ax.axvline(0, color="#888888", lw=0.6)
        ax.set_title(f"{cell_type}: {int(hit.sum())} genes at q < {alpha:g}", fontsize=9)
        ax.set_xlabel("log2 fold change")
        ax.set_ylabel("-log10 p")
    for ax in axes.ravel()[len(types) :]:
        ax.set_visible(False)
    fig.suptitle(contrast, fontsize=10)
    fig.tight_layout()
    return fig

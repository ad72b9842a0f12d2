"""The marker dot plot of one annotation level (matplotlib; no pipeline state)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def marker_dotplot(table: pd.DataFrame, *, title: str):  # -> matplotlib Figure
    """Labels (rows) x marker features (columns): dot area = fraction of the label's cells
    expressing the feature, colour = mean log1p(CP10K) scaled to the feature's maximum."""
    from ..runtime import pyplot

    plt = pyplot()

    mean = table.pivot(index="label", columns="feature", values="mean_log_cp10k")
    frac = table.pivot(index="label", columns="feature", values="fraction_expressing")
    features = list(dict.fromkeys(table["feature"]))
    labels = list(dict.fromkeys(table["label"]))
    mean, frac = mean.loc[labels, features], frac.loc[labels, features]
    scaled = mean / np.maximum(mean.max(axis=0), 1e-9)
    n_cells = table.groupby("label")["n_cells"].first().loc[labels]
    fig, ax = plt.subplots(figsize=(0.32 * len(features) + 3.0, 0.38 * len(labels) + 2.0))
    yy, xx = np.meshgrid(np.arange(len(labels)), np.arange(len(features)), indexing="ij")
    dots = ax.scatter(
        xx.ravel(), yy.ravel(), s=260 * frac.to_numpy().ravel(), c=scaled.to_numpy().ravel(),
        cmap="Reds", vmin=0, vmax=1, edgecolors="grey", linewidths=0.3,
    )  # fmt: skip
    ax.set_xticks(range(len(features)), features, rotation=90, fontsize=9)
    ax.set_yticks(
        range(len(labels)), [f"{lab} (n={n:,})" for lab, n in n_cells.items()], fontsize=9
    )
    ax.set_xlim(-0.7, len(features) - 0.3)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_xlabel("marker feature")
    ax.set_title(title, fontsize=11)
    bar = fig.colorbar(dots, ax=ax, shrink=0.6, pad=0.01)
    bar.set_label("mean log1p(CP10K), scaled per feature", fontsize=8)
    for share in (0.25, 0.5, 1.0):
        ax.scatter([], [], s=260 * share, c="lightgrey", edgecolors="grey", label=f"{share:.0%}")
    ax.legend(title="cells expressing", loc="upper left", bbox_to_anchor=(1.12, 1.0),
              fontsize=8, title_fontsize=8, frameon=False)  # fmt: skip
    fig.tight_layout()
    return fig

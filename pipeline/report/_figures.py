"""The report's own figures (matplotlib; data in, figures out, no I/O).

UMAPs of a million cells are drawn from a subsample stratified by sample (every sample
keeps its share), rasterized, so that the embedded PNGs stay small.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..runtime import pyplot
from ..sampling import rows_by_value

plt = pyplot()


def umap_panels(
    umap: np.ndarray,
    obs: pd.DataFrame,
    keys: list[str],
    *,
    max_points: int = 100_000,
    seed: int = 0,
    ncols: int = 3,
) -> Figure:
    """One UMAP panel per obs column in ``keys`` (categorical colours, legend beside)."""
    ok = np.isfinite(umap).all(axis=1)
    rows = np.flatnonzero(ok)
    if rows.size > max_points:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_points, replace=False))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.4 * nrows), squeeze=False)
    size = max(0.5, min(8.0, 30_000 / max(rows.size, 1)))
    shuffle = np.random.default_rng(seed)
    for ax, key in zip(axes.ravel(), keys, strict=False):
        raw = obs[key].to_numpy()[rows]
        missing = pd.isna(raw)
        values = np.where(missing, "", raw.astype(str))
        cats = sorted(set(values[~missing]), key=_natural)
        cmap = plt.get_cmap("tab20" if len(cats) > 10 else "tab10")
        palette = {c: cmap(i % cmap.N) for i, c in enumerate(cats)}
        grey = (0.85, 0.85, 0.85, 1.0)
        colours = np.array(
            [grey if m else palette[v] for v, m in zip(values, missing, strict=True)]
        )
        # missing values (e.g. B subsets of non-B cells) first, as a grey background; the
        # rest in random order, so that no category hides another by being drawn last
        order = np.concatenate(
            [np.flatnonzero(missing), shuffle.permutation(np.flatnonzero(~missing))]
        )
        ax.scatter(
            umap[rows[order], 0],
            umap[rows[order], 1],
            s=size,
            c=colours[order],
            linewidths=0,
            rasterized=True,
        )
        handles = [
            Line2D([], [], marker="o", linestyle="", color=palette[c], label=c) for c in cats
        ]
        if missing.any():
            handles.insert(0, Line2D([], [], marker="o", linestyle="", color=grey, label="(none)"))
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("UMAP 1")
        ax.set_ylabel("UMAP 2")
        ax.set_xticks([])
        ax.set_yticks([])
        if len(cats) <= 30:
            ax.legend(
                handles=handles,
                fontsize=7,
                frameon=False,
                loc="center left",
                bbox_to_anchor=(1.0, 0.5),
            )
        else:
            ax.text(0.01, 0.01, f"{len(cats)} categories", transform=ax.transAxes, fontsize=8)
    for ax in axes.ravel()[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle(f"UMAP ({rows.size:,} of {ok.sum():,} cells drawn)", fontsize=11)
    fig.tight_layout()
    return fig


def _natural(value: str) -> tuple[float, str]:
    try:
        return (float(value), "")
    except ValueError:
        return (float("inf"), value)


def qc_distributions(obs: pd.DataFrame) -> Figure:
    """Per sample: total counts, genes and mitochondrial share of every cell (boxes),
    kept and removed cells side by side."""
    metrics = [
        ("total_counts", "UMI counts per cell", True),
        ("n_genes_by_counts", "genes per cell", True),
        ("pct_counts_mt", "mitochondrial counts (%)", False),
    ]
    samples, by_sample = rows_by_value(obs["sample_id"])
    width = max(8.0, 0.12 * len(samples) + 3)
    fig, axes = plt.subplots(len(metrics), 1, figsize=(width, 2.6 * len(metrics)), sharex=True)
    kept = obs["qc_pass"].to_numpy(dtype=bool)
    for ax, (col, label, log) in zip(axes, metrics, strict=True):
        values = obs[col].to_numpy(dtype=float)
        for flag, colour, shift in ((True, "tab:blue", -0.2), (False, "tab:red", 0.2)):
            data = [values[rows[kept[rows] == flag]] for rows in by_sample]
            data = [d if d.size else np.array([np.nan]) for d in data]
            ax.boxplot(
                data,
                positions=np.arange(len(samples)) + shift,
                widths=0.35,
                showfliers=False,
                patch_artist=True,
                boxprops={"facecolor": colour, "alpha": 0.5},
                medianprops={"color": "black"},
            )
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
    axes[-1].set_xticks(np.arange(len(samples)))
    axes[-1].set_xticklabels(samples, rotation=90, fontsize=6 if len(samples) > 40 else 8)
    axes[-1].set_xlabel("sample")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.5) for c in ("tab:blue", "tab:red")]
    axes[0].legend(handles, ["kept", "removed"], frameon=False, fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


def confidence_histograms(obs: pd.DataFrame) -> Figure:
    """Label confidence of the annotated cells, per level, by label."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, level in zip(axes, ("lineage", "b_subset"), strict=True):
        conf = obs[f"{level}_confidence"].to_numpy(dtype=float)
        names, rows = rows_by_value(obs[level])
        for lab, at in sorted(zip(names, rows, strict=True), key=lambda pair: pair[0]):
            scored = conf[at][np.isfinite(conf[at])]
            if scored.size == 0:
                continue
            ax.hist(
                scored,
                bins=np.linspace(0, 1, 21),
                histtype="step",
                label=lab,
                linewidth=1.2,
            )
        ax.set_xlabel(f"{level.replace('_', ' ')} confidence (posterior of the label)")
        ax.set_ylabel("cells")
        ax.set_yscale("log")
        ax.legend(fontsize=7, frameon=False, ncol=2)
    fig.tight_layout()
    return fig


def own_umap(embedding: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """A 2-D UMAP of the rows of ``embedding`` alone (e.g. the B cells' integrated PCs):
    the graph stage's own steps on them (15 exact nearest neighbours, umap-learn's fuzzy
    simplicial set and layout, one thread), seeded."""
    from ..graph import knn_graphs, nearest_neighbors, umap_layout

    points = np.asarray(embedding, dtype=np.float32)
    if points.shape[0] < 20:
        return np.zeros((0, 2), dtype=np.float32)
    _, connectivities = knn_graphs(
        nearest_neighbors(points, 15, exact_knn_below=points.shape[0] + 1)
    )
    return umap_layout(connectivities, points, seed=seed)

"""Report figures of the expression stage (matplotlib; pure functions returning a Figure).

Inputs are `expression/de.csv` (the columns of docs/contracts.md), the pseudobulk AnnData and
`expression/program_scores.csv`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._pseudobulk import gene_names

if TYPE_CHECKING:
    import anndata as ad
    from matplotlib.figure import Figure

DE_COLUMNS = ("cell_type", "gene", "contrast", "log2fc", "pvalue", "qvalue")


def _panels(n: int, size: tuple[float, float]) -> tuple[Figure, np.ndarray]:
    """A figure of ``n`` panels, three to a row, each ``size`` inches; unused ones hidden."""
    from ..runtime import pyplot

    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig, axes = pyplot().subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows),
                                  squeeze=False)  # fmt: skip
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    return fig, axes


def volcano_grid(de: pd.DataFrame, *, contrast: str, alpha: float = 0.05, label: int = 5,
                 max_panels: int = 6) -> Figure:  # fmt: skip
    """One volcano plot per cell type for ``contrast``: log2 fold change against -log10 p,
    genes at q < ``alpha`` in colour and the ``label`` smallest q-values named; the cell
    types with the most such genes first (at most ``max_panels``)."""

    missing = [c for c in DE_COLUMNS if c not in de.columns]
    if missing:
        raise ValueError(f"DE table lacks columns {missing}")
    part = de[(de["contrast"] == contrast) & de["pvalue"].notna()]
    if part.empty:
        raise ValueError(f"DE table has no tested genes for contrast {contrast!r}")
    calls = part.assign(hit=part["qvalue"] < alpha).groupby("cell_type", sort=False)["hit"].sum()
    types = calls.sort_values(ascending=False, kind="stable").index[:max_panels].tolist()
    fig, axes = _panels(len(types), (4.2, 3.6))
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
    fig.suptitle(contrast, fontsize=10)
    fig.tight_layout()
    return fig


def sample_order(obs: pd.DataFrame) -> pd.DataFrame:
    """``obs`` (one row per sample: `response`, `timepoint_months`, `patient_id`) in the
    order a reader compares them: responders, non-responders, then unknown; by month within
    a group, by patient within a month."""
    rank = {"responder": 0, "non_responder": 1}
    key = obs["response"].astype(str).map(rank).fillna(2)
    return (obs.assign(_g=key.to_numpy())
            .sort_values(["_g", "timepoint_months", "patient_id"], kind="stable")
            .drop(columns="_g"))  # fmt: skip


def top_genes_heatmap(pseudobulk: ad.AnnData, de: pd.DataFrame, *, cell_type: str,
                      contrast: str, n_genes: int = 30) -> Figure:  # fmt: skip
    """The ``n_genes`` genes with the smallest q-values of ``contrast`` in ``cell_type``
    across that cell type's modelled samples: log2 CPM of the pseudobulk (1 added),
    centred and scaled per gene, columns ordered by response group, month and patient
    (`sample_order`), a strip above saying which group and month each column is."""
    from ..runtime import pyplot

    part = de[(de["cell_type"] == cell_type) & (de["contrast"] == contrast)]
    part = part[part["pvalue"].notna()].nsmallest(n_genes, ["qvalue", "pvalue"])
    if part.empty:
        raise ValueError(f"DE table has no tested genes of {cell_type!r} for {contrast!r}")
    obs = pseudobulk.obs
    rows = (obs["cell_type"].astype(str) == cell_type).to_numpy()
    if "in_models" in obs:
        rows &= obs["in_models"].to_numpy(dtype=bool)
    if not rows.any():
        raise ValueError(f"the pseudobulk has no modelled samples of {cell_type!r}")
    names = pd.Index(gene_names(pseudobulk.var))
    columns = names.get_indexer(part["gene"].astype(str))
    if (columns < 0).any():
        missing = part["gene"].astype(str)[columns < 0].tolist()[:5]
        raise ValueError(f"genes {missing} of the DE table are not in the pseudobulk")
    samples = sample_order(obs[rows].reset_index(drop=True).assign(_row=np.flatnonzero(rows)))
    x = np.asarray(pseudobulk.X[samples["_row"].to_numpy()], dtype=float)
    cpm = x / np.maximum(x.sum(axis=1, keepdims=True), 1) * 1e6
    y = np.log2(cpm[:, columns] + 1).T
    z = (y - y.mean(axis=1, keepdims=True)) / np.maximum(y.std(axis=1, keepdims=True), 1e-9)
    plt = pyplot()
    height = 1.2 + 0.16 * len(columns)
    fig, (strip, ax) = plt.subplots(2, 1, figsize=(min(3 + 0.09 * len(samples), 14), height),
                                    sharex=True, height_ratios=[0.6, len(columns) / 4 + 1])  # fmt: skip
    group = samples["response"].astype(str).map({"responder": 0, "non_responder": 1}).fillna(2)
    month = samples["timepoint_months"].astype(float).to_numpy()
    strip.imshow(np.vstack([group.to_numpy(dtype=float), month / max(month.max(), 1) + 3]),
                 aspect="auto", cmap="tab20", vmin=0, vmax=5, interpolation="nearest")  # fmt: skip
    strip.set_yticks([0, 1], ["group", "month"], fontsize=7)
    for k, (g, m) in enumerate(zip(group, month, strict=True)):
        if k == 0 or (g, m) != (group.iloc[k - 1], month[k - 1]):
            label = {0: "R", 1: "NR"}.get(int(g), "?")
            strip.text(k - 0.4, 0, label, fontsize=6, va="center")
            strip.text(k - 0.4, 1, f"m{m:g}", fontsize=6, va="center")
    image = ax.imshow(np.clip(z, -2.5, 2.5), aspect="auto", cmap="RdBu_r", vmin=-2.5, vmax=2.5,
                      interpolation="nearest")  # fmt: skip
    ax.set_yticks(np.arange(len(columns)), part["gene"].astype(str), fontsize=6)
    ax.set_xticks([])
    ax.set_xlabel(f"{len(samples)} samples: responders (R) then non-responders (NR), by month")
    fig.colorbar(image, ax=[strip, ax], shrink=0.6, label="log2 CPM, z-score per gene")
    fig.suptitle(f"{cell_type}: top {len(columns)} genes of {contrast}", fontsize=9)
    return fig


def program_trajectories(scores: pd.DataFrame, samples: pd.DataFrame, *, cell_type: str,
                         programs: list[str] | None = None) -> Figure:  # fmt: skip
    """One panel per program: its score in ``cell_type`` per patient over the months (thin
    lines, coloured by response group) and each group's mean (thick). ``scores`` is
    `expression/program_scores.csv`, ``samples`` has one row per sample (`sample_id,
    patient_id, timepoint_months, response`)."""

    part = scores[scores["cell_type"].astype(str) == cell_type]
    if part.empty:
        raise ValueError(f"no program scores for {cell_type!r}")
    design = samples[["sample_id", "patient_id", "timepoint_months", "response"]]
    part = part.merge(design.drop_duplicates("sample_id"), on="sample_id", how="inner")
    names = programs or list(dict.fromkeys(part["program"]))
    colours = {"responder": "#1b9e77", "non_responder": "#d95f02"}
    fig, axes = _panels(len(names), (3.6, 3.0))
    for ax, program in zip(axes.ravel(), names, strict=False):
        p = part[part["program"] == program]
        for (_patient, response), t in p.groupby(
            ["patient_id", "response"], sort=True, observed=True
        ):
            t = t.sort_values("timepoint_months")
            ax.plot(t["timepoint_months"], t["score"], lw=0.6, alpha=0.45, marker="o", ms=2,
                    color=colours.get(str(response), "#999999"))  # fmt: skip
        for response, t in p.groupby("response", sort=True, observed=True):
            mean = t.groupby("timepoint_months")["score"].mean()
            ax.plot(mean.index, mean.to_numpy(), lw=2.2, color=colours.get(str(response), "#999999"),
                    label=str(response))  # fmt: skip
        ax.set_title(str(program), fontsize=9)
        ax.set_xlabel("month")
        ax.set_ylabel("score")
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(f"Program scores per patient in {cell_type}", fontsize=10)
    fig.tight_layout()
    return fig

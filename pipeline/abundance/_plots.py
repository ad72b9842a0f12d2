"""Report figures of the abundance stage: trajectories, forest plots of the contrasts and
per-sample composition (matplotlib; pure functions returning a Figure, nothing saved).

Inputs are the tidy counts (`abundance/counts.csv`) and the tests table
(`abundance/tests.csv`) of docs/contracts.md.
"""

from __future__ import annotations

import math
import re
from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..labels import COUNTS_COLUMNS, RESPONSES, UNASSIGNED
from ._table import LEVEL_TYPES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

GROUP_COLOURS = {"responder": "#1f77b4", "non_responder": "#d95f02"}  # others: grey
UNASSIGNED_COLOUR = "#c7c7c7"
TEST_COLUMNS = ("cell_type", "denominator", "contrast", "estimate", "ci_low", "ci_high")
DENOMINATOR_LABEL = {"B": "% of B cells", "PBMC": "% of QC-passed PBMC"}
_MONTHS = r"(\d+(?:\.\d+)?)"
_CONTRAST_ORDER = (
    re.compile(rf"response@month{_MONTHS}"),
    re.compile(rf"time{_MONTHS}@responder"),
    re.compile(rf"time{_MONTHS}@non_responder"),
    re.compile(rf"response:time{_MONTHS}"),
)


def _pyplot():
    from ..runtime import pyplot

    return pyplot()


def _require(table: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{what} table lacks columns {missing}")


def _check_level(level: str) -> None:
    if level not in LEVEL_TYPES:
        raise ValueError(f"level {level!r} is not one of {list(LEVEL_TYPES)}")


def _group_rank(response: object) -> int:
    return RESPONSES.index(response) if response in RESPONSES else len(RESPONSES)


def _group_colour(response: object) -> str:
    return GROUP_COLOURS.get(str(response), "#7f7f7f")


def _type_order(present: list[str], level: str | None) -> list[str]:
    """The known cell types of the level in their contract order, then the others."""
    known = [t for t in LEVEL_TYPES.get(level or "", ()) if t in present]
    return known + [t for t in dict.fromkeys(present) if t not in known]


def _level_rows(counts: pd.DataFrame, level: str) -> pd.DataFrame:
    rows = counts[counts["level"] == level].copy()
    if rows.empty:
        raise ValueError(f"counts table has no rows of level {level!r}")
    rows["sample_id"] = rows["sample_id"].astype(str)
    rows["response"] = rows["response"].fillna("unknown").astype(str)
    return rows


def _proportions(counts: pd.DataFrame, *, level: str, denominator: str) -> pd.DataFrame:
    """The level's rows with `proportion` = count / denominator total (samples whose total
    is 0 dropped). `denominator` is `B` (b_subset within B cells) or `PBMC` (within the
    sample's QC-passed cells, the `total` of its lineage rows)."""
    _require(counts, COUNTS_COLUMNS, "counts")
    _check_level(level)
    allowed = ("PBMC",) if level == "lineage" else ("B", "PBMC")
    if denominator not in allowed:
        msg = f"denominator {denominator!r} is not valid for level {level!r}: use {allowed}"
        raise ValueError(msg)
    rows = _level_rows(counts, level)
    if level == "b_subset" and denominator == "PBMC":
        lineage = _level_rows(counts, "lineage").groupby("sample_id")["total"].first()
        rows["total"] = rows["sample_id"].map(lineage)
        if rows["total"].isna().any():
            raise ValueError("denominator 'PBMC' needs the lineage rows of every sample")
    rows = rows[rows["total"] > 0]
    rows["proportion"] = rows["count"] / rows["total"]
    return rows


def trajectory_plot(
    counts: pd.DataFrame,
    *,
    level: str,
    denominator: str,
    cell_types: list[str] | None = None,
) -> Figure:
    """One panel per cell type: x = timepoint (months), y = % of the denominator; a thin line
    per patient coloured by response group and a bold line per group for the median over
    patients at each timepoint.

    Parameters
    ----------
    counts
        The tidy counts table.
    level
        `lineage` or `b_subset`.
    denominator
        `B` or `PBMC` (`lineage` takes `PBMC` only).
    cell_types
        The panels, in order; default the level's cell types except `unassigned`.
    """
    from matplotlib.lines import Line2D

    props = _proportions(counts, level=level, denominator=denominator)
    present = list(dict.fromkeys(props["cell_type"].astype(str)))
    if cell_types is None:
        all_types = list(dict.fromkeys(counts.loc[counts["level"] == level, "cell_type"]))
        cell_types = [t for t in _type_order(all_types, level) if t != UNASSIGNED]
    absent = [t for t in cell_types if t not in present]
    if absent or not cell_types:
        raise ValueError(f"cell types {absent} have no {level!r} rows with a non-zero total")
    props["percent"] = 100.0 * props["proportion"]
    keys = ["cell_type", "response", "patient_id", "timepoint_months"]
    per_patient = props.groupby(keys)["percent"].mean().reset_index()
    groups = sorted(per_patient["response"].unique(), key=lambda g: (_group_rank(g), g))
    times = sorted(props["timepoint_months"].unique())
    n_cols = min(4, len(cell_types))
    n_rows = math.ceil(len(cell_types) / n_cols)
    plt = _pyplot()
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(3.4 * n_cols + 0.6, 2.8 * n_rows + 1.3),
        squeeze=False, sharex=True, layout="constrained",
    )  # fmt: skip
    for ax in axes.ravel()[len(cell_types) :]:
        fig.delaxes(ax)
    for ax, cell_type in zip(axes.ravel(), cell_types, strict=False):
        part = per_patient[per_patient["cell_type"] == cell_type]
        for (group, patient), line in part.groupby(["response", "patient_id"], sort=False):
            line = line.sort_values("timepoint_months")
            ax.plot(
                line["timepoint_months"], line["percent"], color=_group_colour(group),
                alpha=0.35, lw=0.8, marker="o", ms=2.5, gid=f"patient:{patient}",
            )  # fmt: skip
        medians = part.groupby(["response", "timepoint_months"])["percent"].median()
        for group in groups:
            if group in medians.index.get_level_values(0):
                med = medians.loc[group]
                ax.plot(
                    med.index, med.to_numpy(), color=_group_colour(group), lw=2.4,
                    marker="o", ms=4.5, zorder=3, gid=f"median:{group}",
                )  # fmt: skip
        ax.set_title(cell_type, fontsize=11)
        ax.set_xticks(times)
        ax.tick_params(labelsize=9, labelbottom=True)
        ax.set_xlabel("timepoint (months)", fontsize=9)
        ax.set_ylabel(DENOMINATOR_LABEL[denominator], fontsize=9)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3, lw=0.5)
    n_patients = per_patient.groupby("response")["patient_id"].nunique()
    names = {g: f"{g} median ({k} patient{'s' if k > 1 else ''})" for g, k in n_patients.items()}
    handles = [
        Line2D([], [], color=_group_colour(g), lw=2.4, marker="o", ms=4.5, label=names[g])
        for g in groups
    ]
    handles.append(Line2D([], [], color="grey", alpha=0.5, lw=0.8, label="one patient"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), n_cols),
               fontsize=9, frameon=False)  # fmt: skip
    fig.suptitle(f"{level} over time ({DENOMINATOR_LABEL[denominator]})", fontsize=13)
    return fig


def _contrast_key(contrast: str) -> tuple[int, float, str]:
    for rank, pattern in enumerate(_CONTRAST_ORDER):
        match = pattern.fullmatch(contrast)
        if match:
            return rank, float(match.group(1)), contrast
    return len(_CONTRAST_ORDER), 0.0, contrast


def _contrast_caption(contrast: str) -> str:
    rank, month, _ = _contrast_key(contrast)
    t = f"month {month:g}"
    captions = (f"non-responders vs responders, {t}", f"{t} vs 0, responders",
                f"{t} vs 0, non-responders", f"change to {t}: non-resp. minus resp.")  # fmt: skip
    return captions[rank] if rank < len(captions) else ""


def _select_tests(tests: pd.DataFrame, denominator: str, method: str) -> pd.DataFrame:
    _require(tests, (*TEST_COLUMNS, "qvalue", "method"), "tests")
    rows = tests[(tests["denominator"] == denominator) & (tests["method"] == method)].copy()
    if rows.empty:
        pairs = tests[["denominator", "method"]].drop_duplicates().to_numpy().tolist()
        msg = f"no tests with denominator {denominator!r} and method {method!r}; have {pairs}"
        raise ValueError(msg)
    rows["label"] = rows["cell_type"].astype(str)
    if "level" in rows and rows.duplicated(["contrast", "label"]).any():
        rows["label"] = rows["label"] + " (" + rows["level"].astype(str) + ")"
    return rows


def _row_order(rows: pd.DataFrame) -> list[str]:
    """Row labels: lineages, then B subsets (contract order), then any other cell type."""
    known = list(dict.fromkeys([*LEVEL_TYPES["lineage"][:-1], *LEVEL_TYPES["b_subset"]]))
    pairs = rows[["cell_type", "label"]].astype(str).drop_duplicates("label")
    rank = [known.index(t) if t in known else len(known) for t in pairs["cell_type"]]
    return [label for _, label in sorted(zip(rank, pairs["label"], strict=True))]


def _draw_forest(ax: Axes, rows: pd.DataFrame, labels: list[str], contrast: str) -> None:
    """One contrast on `ax`: row i (top to bottom) is labels[i]."""
    from matplotlib.transforms import blended_transform_factory

    tested = set(rows["label"])
    rows = rows.drop_duplicates("label").set_index("label").reindex(labels)
    y = np.arange(len(labels), dtype=float)
    est = rows["estimate"].to_numpy(dtype=float)
    low, high = rows["ci_low"].to_numpy(dtype=float), rows["ci_high"].to_numpy(dtype=float)
    q = rows["qvalue"].to_numpy(dtype=float)
    fitted, significant = np.isfinite(est), np.isfinite(est) & (q < 0.05)
    has_ci = fitted & np.isfinite(low) & np.isfinite(high)
    ax.axvline(0.0, color="black", lw=0.8, zorder=1)
    ax.hlines(y[has_ci], low[has_ci], high[has_ci], color="#4d4d4d", lw=1.4, zorder=2)
    plain = fitted & ~significant
    ax.scatter(est[plain], y[plain], s=36, facecolors="white", edgecolors="#1a1a1a",
               zorder=3, gid="estimate:ns", label="q ≥ 0.05")  # fmt: skip
    ax.scatter(est[significant], y[significant], s=110, marker="*", color="#b2182b",
               zorder=3, gid="estimate:significant", label="q < 0.05")  # fmt: skip
    reach = np.concatenate([np.abs(est[fitted]), np.abs(low[has_ci]), np.abs(high[has_ci])])
    half = 1.15 * float(reach.max()) if reach.size and reach.max() > 0 else 1.0
    ax.set_xlim(-half, half)
    right = blended_transform_factory(ax.transAxes, ax.transData)
    for i in range(len(labels)):
        if not fitted[i]:
            word = "not fitted" if labels[i] in tested else "not tested"
            ax.text(0.5, y[i], word, transform=right, ha="center", va="center",
                    fontsize=8, style="italic", color="grey")  # fmt: skip
        if labels[i] not in tested:
            continue
        text = f"q={q[i]:.2g}" if np.isfinite(q[i]) else "q=NA"
        ax.text(1.02, y[i], text, transform=right, ha="left", va="center", fontsize=8,
                fontweight="bold" if significant[i] else "normal")  # fmt: skip
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_yticks(y, labels, fontsize=9)
    ax.tick_params(axis="x", labelsize=9)
    ax.set_xlabel("log-odds ratio (95% CI)", fontsize=9)
    caption = _contrast_caption(contrast)
    ax.set_title(f"{contrast}\n{caption}" if caption else contrast, fontsize=10)
    ax.grid(axis="x", alpha=0.3, lw=0.5)


def forest_plot(
    tests: pd.DataFrame, *, contrast: str, denominator: str, method: str = "glmm"
) -> Figure:
    """Estimates (log-odds ratio) with 95% CIs of one contrast, one row per cell type; a
    star marks q < 0.05, the q-value is written at the right, unfitted models say so."""
    rows = _select_tests(tests, denominator, method)
    rows = rows[rows["contrast"] == contrast]
    if rows.empty:
        have = sorted(tests["contrast"].unique())
        raise ValueError(
            f"no tests of contrast {contrast!r} (denominator {denominator!r}); have {have}"
        )
    labels = _row_order(rows)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 0.32 * len(labels) + 1.8), layout="constrained")
    _draw_forest(ax, rows, labels, contrast)
    fig.legend(loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    fig.suptitle(f"denominator {denominator}, method {method}", fontsize=11)
    return fig


def forest_grid(
    tests: pd.DataFrame,
    *,
    denominator: str,
    method: str = "glmm",
    contrasts: list[str] | None = None,
) -> Figure:
    """Several contrasts, three per row, sharing the cell-type rows. Default: the contrasts
    present, `response@month*` by month, then `time*@responder`, `time*@non_responder`,
    `response:time*` (others last)."""
    rows = _select_tests(tests, denominator, method)
    present = list(dict.fromkeys(rows["contrast"].astype(str)))
    if contrasts is None:
        contrasts = sorted(present, key=_contrast_key)
    absent = [c for c in contrasts if c not in present]
    if absent or not contrasts:
        raise ValueError(f"contrasts {absent} have no tests with denominator {denominator!r}")
    rows = rows[rows["contrast"].isin(contrasts)]
    labels = _row_order(rows)
    plt = _pyplot()
    ncols = min(len(contrasts), 3)
    nrows = -(-len(contrasts) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, sharey=True, squeeze=False, layout="constrained",
        figsize=(3.2 * ncols + 1.6, nrows * (0.32 * len(labels) + 1.6) + 0.6),
    )  # fmt: skip
    for i, ax in enumerate(axes.ravel()):
        if i >= len(contrasts):
            fig.delaxes(ax)
            continue
        _draw_forest(ax, rows[rows["contrast"] == contrasts[i]], labels, contrasts[i])
        if i % ncols:
            ax.tick_params(axis="y", labelleft=False)
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    fig.suptitle(f"Contrasts (denominator {denominator}, method {method})", fontsize=12)
    return fig


def _type_colours(types: list[str]) -> dict[str, str]:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
    palette = [to_hex(tab10(i)) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
    palette += [to_hex(tab20(i)) for i in range(1, 20, 2) if i != 15]
    named = [t for t in types if t != UNASSIGNED]
    colours = {t: palette[i % len(palette)] for i, t in enumerate(named)}
    return {**colours, UNASSIGNED: UNASSIGNED_COLOUR}


def composition_plot(counts: pd.DataFrame, *, level: str) -> Figure:
    """One stacked bar per sample: each cell type's share of the level's total
    (`unassigned` in grey), samples ordered by response group, patient and timepoint, the
    group shown as a coloured strip above the bars. Samples with total 0 are marked."""
    from matplotlib.ticker import PercentFormatter

    _require(counts, COUNTS_COLUMNS, "counts")
    _check_level(level)
    rows = _level_rows(counts, level)
    design = rows.drop_duplicates("sample_id").copy()
    design["rank"] = design["response"].map(_group_rank)
    design = design.sort_values(["rank", "response", "patient_id", "timepoint_months"])
    samples = design["sample_id"].tolist()
    wide = rows.pivot_table(index="sample_id", columns="cell_type", values="count", aggfunc="sum")
    totals = rows.groupby("sample_id")["total"].first().reindex(samples)
    types = _type_order(list(wide.columns), level)
    types = [t for t in types if t != UNASSIGNED] + [t for t in types if t == UNASSIGNED]
    share = wide.reindex(index=samples, columns=types).fillna(0).div(totals, axis=0)
    share = share.replace([np.inf, -np.inf], np.nan).fillna(0.0)  # total 0: an empty bar
    colours = _type_colours(types)
    n = len(samples)
    width = max(7.0, 0.13 * n + 3.5)  # inches; about width / (n + 8) per bar
    plt = _pyplot()
    fig, (strip, ax) = plt.subplots(
        2, 1, sharex=True, figsize=(width, 5.5), layout="constrained",
        gridspec_kw={"height_ratios": [1, 12]},
    )  # fmt: skip
    x, bottom = np.arange(n), np.zeros(n)
    for cell_type in types:
        height = share[cell_type].to_numpy(dtype=float)
        ax.bar(x, height, bottom=bottom, width=0.85, color=colours[cell_type],
               label=cell_type, linewidth=0)  # fmt: skip
        bottom += height
    for i in np.flatnonzero(totals.to_numpy() <= 0):
        ax.text(x[i], 0.5, "no cells", rotation=90, ha="center", va="center", fontsize=6,
                color="grey")  # fmt: skip
    groups = design["response"].to_numpy()
    strip.bar(x, 1.0, width=1.0, color=[_group_colour(g) for g in groups], linewidth=0)
    starts = [0, *(np.flatnonzero(groups[1:] != groups[:-1]) + 1), n]
    for a, b in pairwise(starts):
        fits = [t for t in (f"{groups[a]} (n={b - a})", str(groups[a]), "")
                if 0.075 * len(t) <= (b - a) * width / (n + 8)]  # fmt: skip
        strip.text((a + b - 1) / 2, 0.5, fits[0], ha="center", va="center", fontsize=8,
                   color="white", fontweight="bold", clip_on=True)  # fmt: skip
        if a > 0:
            ax.axvline(a - 0.5, color="black", lw=1.0)
    strip.set_ylim(0, 1)
    strip.set_yticks([])
    strip.tick_params(axis="x", bottom=False)
    for side in strip.spines.values():
        side.set_visible(False)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xticks(x, samples, rotation=90, fontsize=5 if n > 40 else 8)
    ax.tick_params(axis="y", labelsize=9)
    ax.set_xlabel(f"sample (ordered by response group, patient, timepoint; n={n})")
    within = "B cells" if level == "b_subset" else "QC-passed cells"
    ax.set_ylabel(f"share of the sample's {within} (%)")
    ax.legend(title="cell type", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              title_fontsize=9, frameon=False)  # fmt: skip
    fig.suptitle(f"{level} composition per sample", fontsize=12)
    return fig

"""Label uncertainty in the abundance models: label draws and Rubin's rules (numpy /
pandas; no I/O here: with a Dask client the draws run in tasks, which read the stored
probabilities through the Dask arrays the stage hands in).

The annotate stage stores every cell's label probabilities (obsm
``lineage_probabilities``, ``b_subset_probabilities``: the level's labels, then
``unassigned``). A cell called with probability 0.55 is, in the hard-label analysis,
counted as fully as one called with 0.99. Here the analysis is repeated over ``M`` label
sets drawn from those probabilities (multiple imputation of the labels) and the ``M``
fits are combined by Rubin's rules: the pooled estimate is the mean, its variance the
mean within-draw variance plus ``(1 + 1/M)`` times the between-draw variance, with
Barnard and Rubin's (1999) degrees of freedom. Where labels are uncertain the draws
disagree and the intervals widen; where they are certain the result is the hard-label
one.

Drawing is hierarchical, as the labels are: each QC-passed cell's lineage is drawn from
its lineage probabilities; a cell drawn ``B`` then draws its B subset from its subset
probabilities, or is an ``unassigned`` B cell when it has none (the annotate stage models
subsets only among the cells it called B). Cells without stored probabilities (batch
layers written before the probabilities were stored) keep their hard labels.
The cells are drawn in blocks of `DRAW_ROWS` in their stored order, each block's
generator seeded by the seed and the block's number (`draw_tables`): the draws are the
same in this process and in a task per block on the workers (the stage's way: the
driver holds the cells' label and sample codes, never their probabilities).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
from scipy.stats import t as t_dist

from ..labels import B_SUBSETS, COUNTS_COLUMNS, LINEAGES, UNASSIGNED
from ._design import TimeCoding
from ._models import (
    METHODS,
    TEST_COLUMNS,
    AbundanceResult,
    bh_qvalues,
    fit_abundance_models,
    model_tables,
)
from ._propeller import Transform
from ._table import codes_in, sample_design

if TYPE_CHECKING:
    from distributed import Client

LEVEL_LABELS = {"lineage": (*LINEAGES, UNASSIGNED), "b_subset": (*B_SUBSETS, UNASSIGNED)}
POOL_KEYS = ["cell_type", "denominator", "contrast", "method"]


DRAW_ROWS = 262_144  # cells whose cumulative probabilities are built at a time


@dataclass(frozen=True)
class LabelProbabilities:
    """A level's label probabilities as `probability_matrix` has them, kept as stored
    (float32) with the hard labels' codes and built into float64 rows a block at a time
    (`rows`): at 4M cells the float64 matrices and their cumulative copy were 0.9 GiB
    in the driver."""

    codes: np.ndarray  # each cell's hard label in the level's vocabulary (-1: none)
    stored: Any  # cells x labels as stored (numpy, or Dask: read by tasks); NaN rows: none
    width: int
    key: str = ""  # the obsm key (for errors)

    def block(self, start: int, stop: int, stored: np.ndarray | None = None) -> LabelProbabilities:
        """The cells ``start:stop`` (``stored``: their stored rows, read elsewhere)."""
        if stored is None and self.stored is not None:
            stored = np.asarray(self.stored[start:stop])
        return LabelProbabilities(self.codes[start:stop], stored, self.width, self.key)

    def check(self) -> None:
        """A labelled cell's stored row of zeros is an error that names the obsm key."""
        if self.stored is None:
            return
        bad = 0
        for a in range(0, len(self.codes), DRAW_ROWS):
            block = np.asarray(self.stored[a : a + DRAW_ROWS])
            stored = (self.codes[a : a + DRAW_ROWS] >= 0) & np.isfinite(block).all(axis=1)
            bad += int((block[stored].astype(np.float64).sum(axis=1) <= 0).sum())
        if bad:
            msg = f"obsm {self.key} has rows of zeros for {bad} labelled cells"
            raise ValueError(msg)

    def rows(self, index: np.ndarray) -> np.ndarray:
        """The float64 rows ``index``: normalized stored probabilities where the cell has
        a label and a stored row, the hard label one-hot where it has no stored row,
        zeros where it has no label."""
        codes = self.codes[index]
        out = np.zeros((len(index), self.width))
        hard = codes >= 0
        out[np.flatnonzero(hard), codes[hard]] = 1.0
        if self.stored is not None:
            block = self.stored[index]
            stored = hard & np.isfinite(block).all(axis=1)
            rows = block[stored].astype(np.float64)
            rows /= rows.sum(axis=1, keepdims=True)
            out[stored] = rows
        return out


def label_probabilities(labels: pd.Series, probabilities: Any, level: str) -> LabelProbabilities:
    """The cells' label probabilities at ``level`` from their hard ``labels`` and the
    stored matrix (cells x the level's labels + unassigned; None: the hard labels only;
    a Dask array: read by the tasks that draw, which check it), checked: a wrong shape,
    or a labelled cell's stored row of zeros, is an error that names the obsm key."""
    vocabulary = LEVEL_LABELS[level]
    codes = pd.Categorical(labels.astype(object), categories=vocabulary).codes
    key = f"{level}_probabilities"
    if probabilities is not None:
        if not isinstance(probabilities, da.Array):
            probabilities = np.asarray(probabilities)
        if probabilities.shape != (len(codes), len(vocabulary)):
            msg = (
                f"obsm {key} has shape {probabilities.shape}; expected "
                f"{(len(codes), len(vocabulary))} (cells x {list(vocabulary)})"
            )
            raise ValueError(msg)
    prob = LabelProbabilities(np.asarray(codes), probabilities, len(vocabulary), key)
    if not isinstance(probabilities, da.Array):
        prob.check()
    return prob


def probability_matrix(
    labels: pd.Series, probabilities: np.ndarray | None, level: str
) -> np.ndarray:
    """Each cell's label probabilities (float64, cells x the level's labels + unassigned):
    the stored ones, and a one-hot row of the hard label where there are none (NaN rows,
    or no stored matrix); zero rows for cells without a label at this level."""
    prob = label_probabilities(labels, probabilities, level)
    return prob.rows(np.arange(len(prob.codes)))


def _draw(cumulative: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label code per row of cumulative probabilities (rows ending at 1)."""
    u = rng.random((cumulative.shape[0], 1))
    return np.minimum((cumulative < u).sum(axis=1), cumulative.shape[1] - 1)


class _Rows:
    """Rows of a whole in-memory probability matrix (`probability_matrix`'s)."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix

    def block(self, start: int, stop: int) -> _Rows:
        return _Rows(self.matrix[start:stop])

    def rows(self, index: np.ndarray) -> np.ndarray:
        return self.matrix[index]


def draw_tables(
    lineage: LabelProbabilities | _Rows,
    subset: LabelProbabilities | _Rows,
    sample: np.ndarray,
    keep: np.ndarray,
    *,
    n_samples: int,
    n_draws: int,
    seed: int,
    block: int,
) -> np.ndarray:
    """The counts of ``n_draws`` hierarchical label draws of one block of cells (at most
    `DRAW_ROWS`): draws x samples x (lineage labels, then B-subset labels), the B
    subsets counted among the cells drawn ``B``. ``sample``: the block's cells' sample
    codes; ``keep``: their QC flags. Seeded by ``seed`` and the block's number, so a
    block's draws are the same wherever it is computed (a task, or this process)."""
    if isinstance(lineage, LabelProbabilities):
        lineage.check()
    if isinstance(subset, LabelProbabilities):
        subset.check()
    n_lin, n_sub = len(LEVEL_LABELS["lineage"]), len(LEVEL_LABELS["b_subset"])
    b_code = LEVEL_LABELS["lineage"].index("B")
    kept = np.flatnonzero(keep)
    sample = np.asarray(sample, dtype=np.int64)[kept]
    lin_cum = np.cumsum(lineage.rows(kept), axis=1)
    sub_rows = subset.rows(kept)
    has_subset = np.flatnonzero(sub_rows.sum(axis=1) > 0)
    sub_cum = np.cumsum(sub_rows[has_subset], axis=1)
    del sub_rows
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(11, block)))
    out = np.zeros((n_draws, n_samples, n_lin + n_sub), dtype=np.int64)
    for d in range(n_draws):
        drawn = _draw(lin_cum, rng)
        sub = np.full(drawn.size, n_sub - 1)  # unassigned B cells unless drawn below
        sub[has_subset] = _draw(sub_cum, rng)
        out[d, :, :n_lin] = np.bincount(
            sample * n_lin + drawn, minlength=n_samples * n_lin
        ).reshape(n_samples, n_lin)
        is_b = drawn == b_code
        out[d, :, n_lin:] = np.bincount(
            sample[is_b] * n_sub + sub[is_b], minlength=n_samples * n_sub
        ).reshape(n_samples, n_sub)
    return out


def _task_part(prob: LabelProbabilities | _Rows, start: int, stop: int) -> tuple[Any, Any]:
    """A block's probabilities for a task: without the stored rows, and those rows apart
    (a Dask array's slice: read by the task)."""
    if isinstance(prob, _Rows):
        return prob.block(start, stop), None
    stored = None if prob.stored is None else prob.stored[start:stop]
    return LabelProbabilities(prob.codes[start:stop], None, prob.width, prob.key), stored


def _block_task(
    lineage: LabelProbabilities | _Rows,
    lin_stored: np.ndarray | None,
    subset: LabelProbabilities | _Rows,
    sub_stored: np.ndarray | None,
    sample: np.ndarray,
    keep: np.ndarray,
    options: dict[str, int],
) -> np.ndarray:
    """`draw_tables` in a task, the block's stored rows given apart (`_task_part`)."""

    def joined(prob: LabelProbabilities | _Rows, stored: np.ndarray | None) -> Any:
        if stored is None or not isinstance(prob, LabelProbabilities):
            return prob
        return LabelProbabilities(prob.codes, np.asarray(stored), prob.width, prob.key)

    return draw_tables(joined(lineage, lin_stored), joined(subset, sub_stored), sample, keep,
                       **options)  # fmt: skip


def _summed_tables(
    lineage: LabelProbabilities | _Rows,
    subset: LabelProbabilities | _Rows,
    sample: np.ndarray,
    keep: np.ndarray,
    *,
    n_samples: int,
    n_draws: int,
    seed: int,
    client: Client | None,
) -> np.ndarray:
    """`draw_tables` of every block of `DRAW_ROWS` cells, summed; with a ``client``, a
    task per block on its workers, which read the stored probabilities themselves when
    they are Dask arrays (the driver holds only the cells' label and sample codes)."""
    starts = range(0, len(keep), DRAW_ROWS)
    total = np.zeros((n_draws, n_samples, sum(map(len, LEVEL_LABELS.values()))), np.int64)
    options = {"n_samples": n_samples, "n_draws": n_draws, "seed": seed}
    if client is None:
        for block, a in enumerate(starts):
            b = a + DRAW_ROWS
            total += draw_tables(lineage.block(a, b), subset.block(a, b), sample[a:b],
                                 keep[a:b], block=block, **options)  # fmt: skip
        return total
    tasks = []
    for block, a in enumerate(starts):
        b = a + DRAW_ROWS
        lin, sub = _task_part(lineage, a, b), _task_part(subset, a, b)
        tasks.append(
            dask.delayed(_block_task, pure=True)(
                *lin, *sub, sample[a:b], keep[a:b], {**options, "block": block}
            )
        )
    for future in client.compute(tasks):  # each a block's small tables
        total += future.result()
        future.release()
    return total


def draw_counts(
    obs: pd.DataFrame,
    lineage_prob: np.ndarray | LabelProbabilities,
    b_prob: np.ndarray | LabelProbabilities,
    *,
    n_draws: int,
    seed: int,
    client: Client | None = None,
) -> Iterator[pd.DataFrame]:
    """``n_draws`` tidy count tables (the columns of `abundance_counts`), each from one
    hierarchical draw of every QC-passed cell's labels.

    ``obs`` has the design columns and ``qc_pass``; ``lineage_prob`` and ``b_prob`` are
    `probability_matrix`'s for every cell of ``obs`` (rows of QC-failed cells ignored),
    or `label_probabilities`' (stored rows in memory or a Dask array). The cells are
    drawn in blocks of `DRAW_ROWS` (`draw_tables`, each seeded by its number); with a
    ``client`` a task per block on its workers: the same tables.
    """
    design = sample_design(obs)
    samples = pd.Index(design["sample_id"])
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    sample = codes_in(obs["sample_id"], samples)
    lin = lineage_prob if isinstance(lineage_prob, LabelProbabilities) else _Rows(lineage_prob)
    sub = b_prob if isinstance(b_prob, LabelProbabilities) else _Rows(b_prob)
    tables = _summed_tables(lin, sub, sample, keep, n_samples=len(samples), n_draws=n_draws,
                            seed=seed, client=client)  # fmt: skip
    n_lin = len(LEVEL_LABELS["lineage"])
    for d in range(n_draws):
        frames = []
        for level, table in (("lineage", tables[d, :, :n_lin]), ("b_subset", tables[d, :, n_lin:])):
            width = table.shape[1]
            frames.append(pd.DataFrame({
                "sample_id": np.repeat(samples.to_numpy(), width),
                "cell_type": np.tile(LEVEL_LABELS[level], len(samples)),
                "count": table.ravel().astype(np.int64),
                "total": np.repeat(table.sum(axis=1), width).astype(np.int64),
                "level": level,
            }))  # fmt: skip
        tidy = pd.concat(frames, ignore_index=True).merge(design, on="sample_id", how="left")
        yield tidy[list(COUNTS_COLUMNS)]


def rubin_pool(tests: list[pd.DataFrame]) -> pd.DataFrame:
    """Combine per-draw contrast tables (with ``se`` and ``df`` columns: the
    complete-data standard error and degrees of freedom, NaN df for a z test) by Rubin's
    rules: one row per cell type, denominator, contrast and method with the pooled
    ``estimate``, 95% ``ci_low``/``ci_high`` and ``pvalue`` from a t distribution with
    Barnard-Rubin degrees of freedom, and ``fmi`` (the fraction of the variance due to
    the labels' uncertainty) and ``n_draws`` (draws with a finite estimate). A row with a
    finite estimate in fewer than half of the draws (or fewer than two) is NaN."""
    m_all = len(tests)
    stacked = pd.concat(tests, ignore_index=True)
    finite = np.isfinite(stacked["estimate"]) & np.isfinite(stacked["se"])
    stacked = stacked.assign(
        _est=stacked["estimate"].where(finite),
        _var=(stacked["se"] ** 2).where(finite),
        _n=finite.astype(int),
    )
    grouped = stacked.groupby(POOL_KEYS, sort=False)
    pooled = grouped.agg(
        estimate=("_est", "mean"),
        within=("_var", "mean"),
        between=("_est", "var"),
        n_draws=("_n", "sum"),
        df_com=("df", "first"),
    ).reset_index()
    m = pooled["n_draws"].to_numpy(dtype=float)
    ok = m >= max(2, m_all / 2)
    within = pooled["within"].to_numpy()
    between = np.nan_to_num(pooled["between"].to_numpy())
    df_com = pooled["df_com"].to_numpy(dtype=float)
    df_com = np.where(np.isfinite(df_com), df_com, np.inf)  # a z test: infinite
    with np.errstate(divide="ignore", invalid="ignore"):
        extra = (1.0 + 1.0 / m) * between
        total = within + extra
        lam = np.where(total > 0, extra / total, 0.0)
        lam = np.where(lam > 1e-12, lam, 0.0)
        df_old = np.where(lam > 0, (m - 1.0) / lam**2, np.inf)
        df_obs = np.where(
            np.isfinite(df_com), (df_com + 1) / (df_com + 3) * df_com * (1 - lam), np.inf
        )
        df = 1.0 / (1.0 / df_old + 1.0 / df_obs)
        # every draw gave the same counts: the complete-data test (Barnard-Rubin's small-
        # sample factor would otherwise shrink the df with no label uncertainty at all)
        df = np.where(lam > 0, df, df_com)
        se = np.sqrt(total)
        p = 2 * t_dist.sf(np.abs(pooled["estimate"].to_numpy()) / se, df)
    est = np.where(ok, pooled["estimate"].to_numpy(), np.nan)
    half = t_dist.ppf(0.975, df) * se
    return pd.DataFrame({
        **{k: pooled[k].to_numpy() for k in POOL_KEYS},
        "estimate": est,
        "ci_low": np.where(ok, est - half, np.nan),
        "ci_high": np.where(ok, est + half, np.nan),
        "pvalue": np.where(ok, p, np.nan),
        "fmi": np.where(ok, lam, np.nan),
        "n_draws": pooled["n_draws"].to_numpy(),
    })  # fmt: skip


def fit_with_label_draws(
    obs: pd.DataFrame,
    lineage_prob: np.ndarray | LabelProbabilities,
    b_prob: np.ndarray | LabelProbabilities,
    *,
    hard_counts: pd.DataFrame,
    n_draws: int,
    seed: int,
    time: TimeCoding = "factor",
    methods: tuple[str, ...] = METHODS,
    transform: Transform = "logit",
    client: Client | None = None,
) -> AbundanceResult:
    """`fit_abundance_models` over ``n_draws`` label draws (`draw_counts`), pooled by
    Rubin's rules (`rubin_pool`), with BH q-values as the hard-label analysis has them.
    With a Dask ``client`` the labels are drawn on its workers, a task per block of
    cells (`draw_counts`), and the draws' models fitted there, a task per draw.

    ``hard_counts`` (`abundance_counts` of the called labels) is fitted too: the result's
    ``uncertainty`` table sets each pooled interval beside the hard-label one (with the
    fraction of missing information ``fmi``), and ``summary['labels']`` records the draws
    and the share of cells whose drawn label differs from the called one.
    """
    options = {"time": time, "methods": methods, "transform": transform}
    drawn_tables = list(
        draw_counts(obs, lineage_prob, b_prob, n_draws=n_draws, seed=seed, client=client)
    )
    hard_tables = model_tables(hard_counts)
    # a draw's models whose data are the hard labels' are not fitted again
    skips = [_unchanged(hard_tables, model_tables(d)) for d in drawn_tables]
    if client is not None:
        futures = [client.submit(_fit_draw, d, options, skip, pure=False)
                   for d, skip in zip(drawn_tables, skips, strict=True)]  # fmt: skip
    hard = fit_abundance_models(hard_counts, standard_errors=True, **options)  # type: ignore[arg-type]
    fitted = client.gather(futures) if client is not None else [
        _fit_draw(d, options, skip) for d, skip in zip(drawn_tables, skips, strict=True)]  # fmt: skip
    hard_rows = hard.tests.set_index(["cell_type", "denominator"])
    per_draw, fits, notes = [], [], list(hard.warnings)
    changed: dict[str, list[float]] = {"lineage": [], "b_subset": []}
    for i, (drawn, result, skip) in enumerate(zip(drawn_tables, fitted, skips, strict=True)):
        same = hard_rows.loc[hard_rows.index.isin(list(skip))].reset_index()
        parts = [t for t in (result.tests, same) if len(t)]
        per_draw.append(pd.concat(parts, ignore_index=True) if parts else result.tests)
        fits.append(result.fits.assign(draw=i))
        notes += [f"label draw {i}: {n}" for n in result.warnings if n not in hard.warnings]
        for level in changed:
            changed[level].append(_relabelled(hard_counts, drawn, level))
    pooled = rubin_pool(per_draw)
    pooled["qvalue"] = np.nan
    for _, idx in pooled.groupby(["denominator", "contrast", "method"]).groups.items():
        pooled.loc[idx, "qvalue"] = bh_qvalues(pooled.loc[idx, "pvalue"].to_numpy())
    hard_ci = hard.tests[[*POOL_KEYS, "estimate", "ci_low", "ci_high"]]
    side = pooled.merge(hard_ci, on=POOL_KEYS, how="left", suffixes=("", "_hard"))
    lost = side["estimate"].isna() & side["estimate_hard"].notna()
    for row in side[lost].itertuples():
        notes.append(f"{row.cell_type} within {row.denominator} ({row.method}), {row.contrast}: "
                     f"estimable in {row.n_draws} of {n_draws} label draws only; left out (NaN)")  # fmt: skip
    width = (side["ci_high"] - side["ci_low"]) / (side["ci_high_hard"] - side["ci_low_hard"])
    uncertainty = side[[*POOL_KEYS, "estimate", "ci_low", "ci_high", "estimate_hard",
                        "ci_low_hard", "ci_high_hard", "fmi", "n_draws"]].assign(width_ratio=width)  # fmt: skip
    summary = {
        **hard.summary,
        "labels": {
            "method": "draws",
            "label_draws": n_draws,
            "seed": seed,
            # mean share of the counted cells whose drawn label is not the called one
            "relabelled_share": {k: round(float(np.mean(v)), 4) for k, v in changed.items()},
            "median_fmi": {
                str(d): round(float(g["fmi"].median()), 4) for d, g in pooled.groupby("denominator")
            },
        },
    }
    return AbundanceResult(
        tests=pooled[list(TEST_COLUMNS)],
        fits=pd.concat(fits, ignore_index=True),
        summary=summary,
        warnings=tuple(dict.fromkeys(notes)),
        uncertainty=uncertainty,
    )


def _fit_draw(drawn: pd.DataFrame, options: dict, skip: frozenset) -> AbundanceResult:
    return fit_abundance_models(drawn, standard_errors=True, skip=skip, **options)


def _unchanged(hard: dict, drawn: dict) -> frozenset[tuple[str, str]]:
    """(cell type, denominator) whose counts and totals in every sample are the same in
    a draw as with the hard labels."""
    out = set()
    for key, wide in hard.items():
        denominator = key[1]
        other = drawn[key].reindex(index=wide.index, columns=wide.columns)
        if not np.array_equal(wide["_total"].to_numpy(), other["_total"].to_numpy()):
            continue
        equal = (wide == other).all(axis=0)
        out |= {(c, denominator) for c in wide.columns.drop("_total") if equal[c]}
    return frozenset(out)


def _relabelled(hard: pd.DataFrame, drawn: pd.DataFrame, level: str) -> float:
    """A lower bound of the share of cells relabelled by a draw: half the summed absolute
    count differences over the level's sample x cell-type table, over its cells."""
    a = hard[hard["level"] == level].set_index(["sample_id", "cell_type"])["count"]
    b = drawn[drawn["level"] == level].set_index(["sample_id", "cell_type"])["count"]
    diff = (a - b.reindex(a.index).fillna(0)).abs().sum() / 2
    return float(diff / max(a.sum(), 1))

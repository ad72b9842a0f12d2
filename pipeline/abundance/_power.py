"""Calibration and power of the abundance models, from count tables simulated directly
(`pipeline.simulate.simulate_count_table`), in parallel on a Dask cluster.

- Type-I error: cohorts of the study's size under the simulator's null (no planted
  effect; the configured patient and sample variability); every cell type, denominator
  and contrast is tested and the share of p < alpha is reported per contrast.
- Power: one cell type gets a planted difference between the groups (non-responders
  minus responders, log-odds, at every timepoint); the share of cohorts where each
  contrast has p < alpha, against the number of patients.

Each task simulates and fits a batch of cohorts with its own seeds (derived from
``power.seed``, the kind of run, the cohort size and the cohort's index) and returns
rejection counts only, so results do not depend on how tasks land on workers.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from ..config import PlantedEffect, PowerConfig, SimulationConfig
from ..simulate import simulate_count_table
from ._models import fit_abundance_models

TYPE1_TARGET = (0.03, 0.07)


@dataclass(frozen=True)
class PowerResult:
    type1: pd.DataFrame  # method, contrast: tests, rejections, rate, ci_low, ci_high
    type1_by_cell_type: pd.DataFrame
    power: pd.DataFrame  # method, n_patients, contrast: cohorts, rejections, power, ci
    seconds: float


def cohort_seed(seed: int, kind: int, n_patients: int, index: int) -> int:
    """The simulator seed of one cohort."""
    return int(np.random.SeedSequence([seed, kind, n_patients, index]).generate_state(1)[0])


def _rejections(tests: pd.DataFrame, alpha: float, keys: list[str]) -> pd.DataFrame:
    rejected = tests.assign(tests=1, rejections=(tests["pvalue"] < alpha).astype(int))
    return rejected.groupby(keys, as_index=False)[["tests", "rejections"]].sum()


def null_batch(
    sim: SimulationConfig, cfg: PowerConfig, indices: list[int], *, time_coding: str = "factor"
) -> pd.DataFrame:
    """Rejections per method, cell type, denominator and contrast over null cohorts."""
    null = sim.model_copy(update={"effects": [], "extra_patients": 0})
    frames = []
    for i in indices:
        cohort = simulate_count_table(
            null.model_copy(update={"seed": cohort_seed(cfg.seed, 0, null.n_patients, i)})
        )
        result = fit_abundance_models(cohort, methods=tuple(cfg.methods), time=time_coding)  # type: ignore[arg-type]
        frames.append(result.tests)
    keys = ["method", "cell_type", "denominator", "contrast"]
    return _rejections(pd.concat(frames, ignore_index=True), cfg.alpha, keys)


def power_batch(
    sim: SimulationConfig, cfg: PowerConfig, n_patients: int, indices: list[int]
) -> pd.DataFrame:
    """Rejections per method and contrast for ``cfg.cell_type`` with the planted effect."""
    effect = PlantedEffect(
        cell_type=cfg.cell_type,
        group="non_responder",
        log_ratio={t: cfg.effect for t in sim.timepoints_months},
    )
    planted = sim.model_copy(
        update={"effects": [effect], "extra_patients": 0, "n_patients": n_patients}
    )
    frames = []
    for i in indices:
        cohort = simulate_count_table(
            planted.model_copy(update={"seed": cohort_seed(cfg.seed, 1, n_patients, i)})
        )
        result = fit_abundance_models(
            cohort, methods=tuple(cfg.methods), only=(cfg.cell_type, cfg.denominator)
        )
        frames.append(result.tests.assign(n_patients=n_patients))
    return _rejections(pd.concat(frames, ignore_index=True), cfg.alpha,
                       ["method", "n_patients", "contrast"])  # fmt: skip


def wilson_interval(k: np.ndarray, n: np.ndarray, level: float = 0.95):
    """Wilson score interval of a binomial proportion k / n."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    z = norm.ppf(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)


def _with_rates(table: pd.DataFrame, rate: str) -> pd.DataFrame:
    low, high = wilson_interval(table["rejections"], table["tests"])
    return table.assign(**{rate: table["rejections"] / table["tests"]}, ci_low=low, ci_high=high)


def _batches(n: int, size: int) -> list[list[int]]:
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def run_power(sim: SimulationConfig, cfg: PowerConfig, *, client) -> PowerResult:
    """Type-I error over ``cfg.n_cohorts`` null cohorts and power over
    ``cfg.power_cohorts`` cohorts per size in ``cfg.patients``, on the client's workers."""
    start = time.perf_counter()
    null_futures = [
        client.submit(null_batch, sim, cfg, idx, pure=False)
        for idx in _batches(cfg.n_cohorts, cfg.cohorts_per_task)
    ]
    power_futures = [
        client.submit(power_batch, sim, cfg, n, idx, pure=False)
        for n in cfg.patients
        for idx in _batches(cfg.power_cohorts, cfg.cohorts_per_task)
    ]
    null = pd.concat(client.gather(null_futures), ignore_index=True)
    by_type = null.groupby(["method", "cell_type", "denominator", "contrast"], as_index=False)[
        ["tests", "rejections"]
    ].sum()
    pooled = by_type.groupby(["method", "contrast"], as_index=False)[["tests", "rejections"]].sum()
    powered = pd.concat(client.gather(power_futures), ignore_index=True)
    powered = powered.groupby(["method", "n_patients", "contrast"], as_index=False)[
        ["tests", "rejections"]
    ].sum()
    powered = _with_rates(powered.rename(columns={"tests": "cohorts"}).assign(
        tests=lambda d: d["cohorts"]), "power").drop(columns="tests")  # fmt: skip
    return PowerResult(
        type1=_with_rates(pooled, "rate"),
        type1_by_cell_type=_with_rates(by_type, "rate"),
        power=powered,
        seconds=time.perf_counter() - start,
    )


def power_plot(power: pd.DataFrame, *, cell_type: str, effect: float, denominator: str):
    """Power of the response contrasts against the number of patients (one line each)."""
    from ..runtime import pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    part = power[power["contrast"].str.startswith("response@")]
    for (method, contrast), rows in part.groupby(["method", "contrast"]):
        rows = rows.sort_values("n_patients")
        ax.errorbar(rows["n_patients"], rows["power"],
                    yerr=np.clip([rows["power"] - rows["ci_low"],
                                  rows["ci_high"] - rows["power"]], 0, None),
                    marker="o", capsize=3, label=f"{contrast} ({method})")  # fmt: skip
    ax.axhline(0.8, color="grey", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("patients in the cohort (half non-responders)")
    ax.set_ylabel("power (share of cohorts with p < alpha)")
    ax.set_title(f"{cell_type} within {denominator}: non-responders {effect:+.2f} log-odds",
                 fontsize=11)  # fmt: skip
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig

"""Pseudobulk counts of one cell type simulated directly (no cells): the calibration and
benchmark oracle of the expression models, with the cohort design of `design_cohort`.

Per sample and gene, the summed counts of ``cells`` cells of the type (that number varies
with the sample's size) are negative binomial around ``cells x base level x patient
factor x batch factor``: the patient factor has sd ``expression_patient_sd`` on the log
scale, as in the cell-level simulator, and the dispersion of a sum of ``n`` cells with
gene dispersion phi (log-normal around 0.2, as there) is phi / n. No differences are
planted unless asked: `simulate_planted_pseudobulk` multiplies the means of some genes
(drawn among those with an expected sum of at least 10, with their own seeded generator)
by 2^log2 fold in one group at the listed months: the power oracle.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..config import PlantedExpression, SimulationConfig
from ._design import design_cohort


def simulate_pseudobulk(
    cfg: SimulationConfig, *, cells: int = 100, mean_umi: float = 3500.0
) -> tuple[pd.DataFrame, np.ndarray]:
    """The samples (`sample_id, patient_id, timepoint_months, response, batch`) and their
    counts (samples x ``cfg.n_genes``, int64) of one cell type of ~``cells`` cells each."""
    samples, counts, _ = simulate_planted_pseudobulk(cfg, [], cells=cells, mean_umi=mean_umi)
    return samples, counts


def simulate_planted_pseudobulk(
    cfg: SimulationConfig, planted: list[PlantedExpression], *, cells: int = 100,
    mean_umi: float = 3500.0,
) -> tuple[pd.DataFrame, np.ndarray, list[np.ndarray]]:  # fmt: skip
    """As `simulate_pseudobulk`, with the ``planted`` changes (their ``group``,
    ``log2_fold`` per month and ``n_genes``; ``cell_type`` and ``genes`` are not used:
    this is one cell type of numbered genes); also the planted genes' indices, one array
    per change (disjoint)."""
    design = design_cohort(cfg)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(8,)))
    samples = pd.DataFrame(
        [
            (s.sample_id, s.patient_id, s.timepoint_months, s.response, s.batch)
            for s in design.samples
        ],
        columns=["sample_id", "patient_id", "timepoint_months", "response", "batch"],
    )
    patients = {p: i for i, p in enumerate(dict.fromkeys(samples["patient_id"]))}
    batches = {b: i for i, b in enumerate(sorted(set(samples["batch"])))}
    n_genes = cfg.n_genes
    level = np.exp(rng.normal(0.0, 1.6, n_genes))
    level *= mean_umi / level.sum()
    phi = np.exp(rng.normal(np.log(0.2), 0.4, n_genes))
    patient = rng.normal(0.0, cfg.expression_patient_sd, (len(patients), n_genes))
    batch = rng.normal(0.0, cfg.batch_effect_sd * 0.2, (len(batches), n_genes))
    n_cells = np.maximum(5, np.round(cells * np.array([s.n_cells for s in design.samples])
                                     / cfg.cells_per_sample))  # fmt: skip
    p_index = samples["patient_id"].map(patients).to_numpy()
    b_index = samples["batch"].map(batches).to_numpy()
    mu = (n_cells[:, None] * level * np.exp(patient[p_index] + batch[b_index])
          * rng.lognormal(0.0, 0.2, len(samples))[:, None])  # fmt: skip
    chosen = _plant(mu, samples, planted, level * cells, seed=cfg.seed)
    disp = phi[None, :] / n_cells[:, None]
    counts = rng.poisson(rng.gamma(1.0 / disp, disp * mu))
    return samples, counts.astype(np.int64), chosen


def _plant(mu: np.ndarray, samples: pd.DataFrame, planted: list[PlantedExpression],
           expected: np.ndarray, *, seed: int) -> list[np.ndarray]:  # fmt: skip
    """Scale ``mu`` in place for every planted change; the genes chosen for each."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(9,)))
    pool = rng.permutation(np.flatnonzero(expected >= 10))
    need = sum(p.n_genes for p in planted)
    if need > pool.size:
        msg = f"{need} planted genes asked for; only {pool.size} are expressed enough"
        raise ValueError(msg)
    chosen, start = [], 0
    month = samples["timepoint_months"].to_numpy(dtype=float)
    group = samples["response"].astype(str).to_numpy()
    for p in planted:
        genes = np.sort(pool[start : start + p.n_genes])
        start += p.n_genes
        rows = np.ones(len(samples), dtype=bool) if p.group == "all" else group == p.group
        for t, fold in p.log2_fold.items():
            at = np.flatnonzero(rows & (month == float(t)))
            mu[np.ix_(at, genes)] *= 2.0**fold
        chosen.append(genes)
    return chosen

"""Recall and false discovery proportion of the expression models by simulation: pseudobulk
cohorts (`pipeline.simulate.simulate_planted_pseudobulk`) with two planted changes, a
baseline difference (non-responders, month 0: `response@month0`) and a fall under
treatment (responders, months 3 and 6: `time6@responder`), fitted as the stage fits a
cell type (filterByExpr, both designs, BH within contrast)."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from ..config import PlantedExpression, SimulationConfig
from ._kernels import filter_by_expr
from ._models import cell_type_designs, fit_deseq2

TARGETS = ("response@month0", "time6@responder")
POWER_COLUMNS = ["n_patients", "log2_fold", "seed", "contrast", "planted", "tested_planted",
                 "calls", "true_calls", "recall", "fdp", "null_p05", "null_p001", "balanced",
                 "seconds"]  # fmt: skip


def planted_changes(
    log2_fold: float, n_genes: int, *, balanced: bool = False
) -> list[PlantedExpression]:
    """The two planted changes of `TARGETS`, ``n_genes`` genes each; ``balanced``: half
    of each change's genes go the other way (four changes: the two halves of each target
    in turn)."""
    up = {0: log2_fold}
    down = {3: -log2_fold, 6: -log2_fold}
    if not balanced:
        return [
            PlantedExpression(
                cell_type="DN2", group="non_responder", log2_fold=up, n_genes=n_genes
            ),
            PlantedExpression(
                cell_type="naive", group="responder", log2_fold=down, n_genes=n_genes
            ),
        ]
    half, rest = n_genes // 2, n_genes - n_genes // 2
    flip = {t: -v for t, v in up.items()}, {t: -v for t, v in down.items()}
    return [
        PlantedExpression(cell_type="DN2", group="non_responder", log2_fold=up, n_genes=half),
        PlantedExpression(cell_type="DN2", group="non_responder", log2_fold=flip[0], n_genes=rest),
        PlantedExpression(cell_type="naive", group="responder", log2_fold=down, n_genes=half),
        PlantedExpression(cell_type="naive", group="responder", log2_fold=flip[1], n_genes=rest),
    ]


def power_cohort(sim: SimulationConfig, log2_fold: float, *, n_planted: int = 50,
                 cells: int = 100, alpha: float = 0.05,
                 balanced: bool = False) -> pd.DataFrame:  # fmt: skip
    """One simulated cohort (``sim``: patients, genes, seed, batches) fitted: per target
    contrast the planted genes, the calls at q < ``alpha``, recall (calls among the
    planted genes over the planted genes) and false discovery proportion (calls outside
    them over all calls; 0 without calls), and the share of p-values below 0.05 and
    0.001 among the genes planted in neither change (``balanced``: `planted_changes`)."""
    from ..simulate import simulate_planted_pseudobulk

    t = time.perf_counter()
    samples, counts, chosen = simulate_planted_pseudobulk(
        sim, planted_changes(log2_fold, n_planted, balanced=balanced), cells=cells
    )
    if balanced:  # the two halves of each target
        chosen = [np.concatenate(chosen[:2]), np.concatenate(chosen[2:])]
    any_planted = {f"g{i}" for i in np.concatenate(chosen)}
    rows = pd.Index(samples["sample_id"])
    plans = cell_type_designs(samples)
    first = plans.fits[0]
    keep = filter_by_expr(counts[rows.get_indexer(first.x.index)], first.x.to_numpy())
    genes = [f"g{i}" for i in np.flatnonzero(keep)]
    tables = [fit_deseq2(counts[rows.get_indexer(f.x.index)][:, keep], genes, f)[0]
              for f in plans.fits]  # fmt: skip
    de = pd.concat(tables, ignore_index=True)
    out = []
    for contrast, truth in zip(TARGETS, chosen, strict=True):
        part = de[de["contrast"] == contrast]
        planted = {f"g{i}" for i in truth}
        called = set(part.loc[part["qvalue"] < alpha, "gene"])
        null_p = part.loc[~part["gene"].isin(any_planted), "pvalue"].dropna().to_numpy()
        true_calls = len(called & planted)
        out.append({
            "n_patients": sim.n_patients, "log2_fold": log2_fold, "seed": sim.seed,
            "contrast": contrast, "planted": len(planted),
            "tested_planted": int(part["gene"].isin(planted).sum()),
            "calls": len(called), "true_calls": true_calls,
            "recall": true_calls / len(planted),
            "fdp": (len(called) - true_calls) / len(called) if called else 0.0,
            "null_p05": float((null_p < 0.05).mean()), "null_p001": float((null_p < 0.001).mean()),
            "balanced": balanced,
            "seconds": round(time.perf_counter() - t, 2),
        })  # fmt: skip
    return pd.DataFrame(out, columns=POWER_COLUMNS)

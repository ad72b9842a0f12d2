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
                 "calls", "true_calls", "recall", "fdp", "seconds"]  # fmt: skip


def planted_changes(log2_fold: float, n_genes: int) -> list[PlantedExpression]:
    """The two planted changes of `TARGETS`, ``n_genes`` genes each."""
    return [
        PlantedExpression(cell_type="DN2", group="non_responder", log2_fold={0: log2_fold},
                          n_genes=n_genes),
        PlantedExpression(cell_type="naive", group="responder",
                          log2_fold={3: -log2_fold, 6: -log2_fold}, n_genes=n_genes),
    ]  # fmt: skip


def power_cohort(sim: SimulationConfig, log2_fold: float, *, n_planted: int = 50,
                 cells: int = 100, alpha: float = 0.05) -> pd.DataFrame:  # fmt: skip
    """One simulated cohort (``sim``: patients, genes, seed, batches) fitted: per target
    contrast the planted genes, the calls at q < ``alpha``, recall (calls among the
    planted genes over the planted genes) and false discovery proportion (calls outside
    them over all calls; 0 without calls)."""
    from ..simulate import simulate_planted_pseudobulk

    t = time.perf_counter()
    samples, counts, chosen = simulate_planted_pseudobulk(
        sim, planted_changes(log2_fold, n_planted), cells=cells
    )
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
        true_calls = len(called & planted)
        out.append({
            "n_patients": sim.n_patients, "log2_fold": log2_fold, "seed": sim.seed,
            "contrast": contrast, "planted": len(planted),
            "tested_planted": int(part["gene"].isin(planted).sum()),
            "calls": len(called), "true_calls": true_calls,
            "recall": true_calls / len(planted),
            "fdp": (len(called) - true_calls) / len(called) if called else 0.0,
            "seconds": round(time.perf_counter() - t, 2),
        })  # fmt: skip
    return pd.DataFrame(out, columns=POWER_COLUMNS)

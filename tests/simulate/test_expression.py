"""Planted differential expression and patient-to-patient expression variation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.config import PlantedExpression, SimulationConfig
from pipeline.simulate import SimulationResult
from pipeline.simulate._counts import plan_cells, simulate_counts
from pipeline.simulate._expression import (
    apply_log_shift,
    build_expression_model,
    draw_planted_genes,
)


def _pseudobulk(model, shift: np.ndarray, cell_type: str, seed: int, n: int = 4000) -> np.ndarray:
    """Mean counts per cell of ``n`` singlets of one type under the shifted profiles."""
    probs = np.zeros(len(model.cell_types))
    probs[model.cell_types.index(cell_type)] = 1.0
    rng = np.random.default_rng(seed)
    plan = plan_cells(rng, model, n_cells=n, type_probs=probs, median_umi=3500, umi_sdlog=0.1,
                      doublet_rate=0.0, low_quality_rate=0.0, ifn_score=0.0, ifn_strength=0.0)  # fmt: skip
    profiles = apply_log_shift(model.profiles, shift)
    x = simulate_counts(np.random.SeedSequence(seed), model, profiles, plan)
    return np.asarray(x.sum(axis=0)).ravel() / n


def test_planted_genes_change_by_their_fold_only_where_planted() -> None:
    model = build_expression_model(3000, seed=2)
    effect = PlantedExpression(cell_type="DN2", group="non_responder", log2_fold={0: 1.0},
                               n_genes=15)  # fmt: skip
    shifts, chosen = draw_planted_genes(model, [effect], seed=2, patient_sd=0.0)
    genes = chosen[0][2]
    assert genes.size == 15 and chosen[0][1] == "DN2"
    shape = model.profiles.shape
    nr = shifts.log_shift(*shape, patient_index=0, group="non_responder", month=0)
    r = shifts.log_shift(*shape, patient_index=0, group="responder", month=0)
    later = shifts.log_shift(*shape, patient_index=0, group="non_responder", month=3)
    assert not r.any() and not later.any()
    dn2 = model.cell_types.index("DN2")
    assert np.allclose(nr[dn2, genes], np.log(2.0)) and np.count_nonzero(nr) == 15
    with_effect = _pseudobulk(model, nr, "DN2", seed=1)
    without = _pseudobulk(model, r, "DN2", seed=1)
    ratio = with_effect[genes].sum() / without[genes].sum()
    assert ratio == pytest.approx(2.0, rel=0.1)
    others = np.setdiff1d(np.flatnonzero(without > 0.5), genes)
    assert with_effect[others].sum() / without[others].sum() == pytest.approx(1.0, abs=0.03)


def test_patients_differ_by_the_configured_sd_and_keep_their_profile_over_time() -> None:
    model = build_expression_model(3000, seed=2)
    shifts, _ = draw_planted_genes(model, [], seed=2, patient_sd=0.3)
    shape = model.profiles.shape
    a0 = shifts.log_shift(*shape, patient_index=0, group="responder", month=0)
    a6 = shifts.log_shift(*shape, patient_index=0, group="responder", month=6)
    b0 = shifts.log_shift(*shape, patient_index=1, group="responder", month=0)
    assert np.array_equal(a0, a6)
    assert np.std(a0 - b0) / np.sqrt(2) == pytest.approx(0.3, rel=0.02)


def test_unknown_planted_genes_are_named() -> None:
    model = build_expression_model(3000, seed=2)
    effect = PlantedExpression(cell_type="naive", group="all", log2_fold={3: 1.0},
                               genes=["NOTAGENE"])  # fmt: skip
    with pytest.raises(ValueError, match="NOTAGENE"):
        draw_planted_genes(model, [effect], seed=2, patient_sd=0.0)


def test_expression_effects_must_use_design_timepoints() -> None:
    with pytest.raises(ValueError, match="timepoints"):
        SimulationConfig.model_validate({
            "timepoints_months": [0, 6],
            "expression_effects": [{"cell_type": "DN2", "group": "all", "log2_fold": {3: 1.0}}],
        })  # fmt: skip
    defaults = SimulationConfig.model_validate({"timepoints_months": [0, 6]})
    assert all(set(e.log2_fold) <= {0, 6} for e in defaults.expression_effects)


def test_truth_lists_planted_genes_and_their_contrasts(small_cohort: SimulationResult) -> None:
    truth = small_cohort.out / "truth"
    effects = pd.read_csv(truth / "expression_effects.csv")
    table = pd.read_csv(truth / "expression_contrasts.csv")
    genes = pd.read_csv(truth / "genes.csv")
    assert set(effects["gene"]) <= set(genes["symbol"])
    dn2 = table[(table["cell_type"] == "DN2")].set_index(["gene", "contrast"])["true_log2fc"]
    assert dn2.xs("response@month0", level=1).eq(1.0).all()
    assert dn2.xs("time6@non_responder", level=1).eq(0.0).all()
    naive = table[(table["cell_type"] == "naive")].set_index(["gene", "contrast"])["true_log2fc"]
    assert naive.xs("time6@responder", level=1).eq(-1.0).all()
    assert naive.xs("response:time6", level=1).eq(1.0).all()
    assert naive.xs("response@month0", level=1).eq(0.0).all()


def test_marker_strength_and_dn1_memory_genes_shape_the_b_subsets() -> None:
    """``marker_strength`` moves each marker towards its level without the marker (for a
    B subset, the B lineage's); ``dn1_memory_genes`` gives DN1 switched memory's genes
    other than CD27, so that CD27 is what tells them apart."""
    full = build_expression_model(3000, seed=2)
    weak = build_expression_model(3000, seed=2, marker_strength=0.4)
    memlike = build_expression_model(3000, seed=2, dn1_memory_genes=True)
    col = {s: i for i, s in enumerate(full.genes.symbols)}
    t = full.cell_types.index

    def cp10k(model, cell_type: str, gene: str) -> float:
        return float(model.profiles[t(cell_type), col[gene]] * 1e4)

    # CD27 is 8 CP10K in switched memory, 0.05 (the marker background) in B without it
    assert cp10k(weak, "switched_memory", "CD27") == pytest.approx(0.05 + 0.4 * (8 - 0.05))
    # CR2: 0.3 in DN2, 4 in B: weakened towards the B lineage's level
    assert cp10k(weak, "DN2", "CR2") == pytest.approx(4 + 0.4 * (0.3 - 4))
    assert cp10k(weak, "T_CD4", "CD3D") == pytest.approx(0.05 + 0.4 * (25 - 0.05))
    for gene in ("TNFRSF13C", "SSPN", "COCH", "TNFRSF13B"):
        assert cp10k(full, "DN1", gene) < 0.1
        assert cp10k(memlike, "DN1", gene) == pytest.approx(cp10k(full, "switched_memory", gene))
    assert cp10k(memlike, "DN1", "CD27") == cp10k(full, "DN1", "CD27") < 0.5

"""Statistics of simulated counts: libraries, detection, QC junk, markers, isotypes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.simulate import B_SUBSETS, CELL_TYPES, build_expression_model
from pipeline.simulate._counts import CellPlan, plan_cells, simulate_counts
from pipeline.simulate._expression import ExpressionModel

MEDIAN_UMI = 3500.0


@pytest.fixture(scope="module")
def model() -> ExpressionModel:
    return build_expression_model(20000, seed=0)


@pytest.fixture(scope="module")
def cells(model: ExpressionModel) -> tuple[CellPlan, sp.csr_matrix]:
    """6,000 cells with every type well represented (uniform type mix)."""
    ss = np.random.SeedSequence(1, spawn_key=(0,))
    probs = np.full(len(CELL_TYPES), 1.0 / len(CELL_TYPES))
    plan = plan_cells(
        np.random.default_rng(ss), model, n_cells=6000, type_probs=probs, median_umi=MEDIAN_UMI,
        umi_sdlog=0.4, doublet_rate=0.06, low_quality_rate=0.05, ifn_score=1.0, ifn_strength=1.0,
    )  # fmt: skip
    return plan, simulate_counts(ss, model, model.profiles, plan)


def _mean(x: sp.csr_matrix, model: ExpressionModel, gene: str, rows: np.ndarray) -> float:
    col = int(np.flatnonzero(model.genes.symbols == gene)[0])
    return float(x[rows, col].mean())


def _rows(plan: CellPlan, *types: str) -> np.ndarray:
    idx = [CELL_TYPES.index(t) for t in types]
    return np.flatnonzero(np.isin(plan.cell_type, idx) & (plan.kind == "singlet"))


def test_gene_universe_has_real_symbols_and_mitochondrial_genes(model: ExpressionModel) -> None:
    symbols = set(model.genes.symbols)
    assert len(model.genes.symbols) == 20000 and len(symbols) == 20000
    assert {"IGHD", "IGHM", "IGHG1", "IGHG2", "IGHG3", "IGHG4", "IGHA1", "IGHA2"} <= symbols
    assert {"ITGAX", "TBX21", "FCRL5", "CR2", "CD27", "MS4A1", "CD3E", "LYZ"} <= symbols
    assert sum(s.startswith("MT-") for s in symbols) == 13
    assert len(set(model.genes.ids)) == 20000


def test_library_sizes_are_log_normal_around_the_median(cells, model) -> None:
    plan, x = cells
    lib = np.asarray(x.sum(axis=1)).ravel()
    t4 = _rows(plan, "T_CD4")
    expected = MEDIAN_UMI * model.library_factor[CELL_TYPES.index("T_CD4")]
    assert np.median(lib[t4]) == pytest.approx(expected, rel=0.1)
    assert np.std(np.log(lib[t4])) == pytest.approx(0.4, abs=0.06)


def test_genes_detected_per_cell_are_in_the_10x_pbmc_range(cells) -> None:
    plan, x = cells
    singlet = plan.kind == "singlet"
    detected = np.diff(x.indptr)[singlet]
    lo, mid, hi = np.quantile(detected, [0.05, 0.5, 0.95])
    assert 800 <= mid <= 2500
    assert lo >= 400 and hi <= 3500


def test_low_quality_cells_have_few_genes_and_high_mitochondrial_fraction(cells, model) -> None:
    plan, x = cells
    lib = np.asarray(x.sum(axis=1)).ravel()
    mt = np.asarray(x[:, model.mt].sum(axis=1)).ravel() / lib
    genes = np.diff(x.indptr)
    ok, low = plan.kind == "singlet", plan.kind == "low_quality"
    assert 0.02 < np.median(mt[ok]) < 0.07
    assert np.median(mt[low]) > 0.15
    assert np.median(genes[low]) < 0.5 * np.median(genes[ok])


def test_doublets_carry_two_cells_worth_of_counts(cells) -> None:
    plan, x = cells
    lib = np.asarray(x.sum(axis=1)).ravel()
    assert np.median(lib[plan.kind == "doublet"]) > 1.6 * np.median(lib[plan.kind == "singlet"])
    assert 0.04 < np.mean(plan.kind == "doublet") < 0.08


@pytest.mark.parametrize(
    ("gene", "positive"),
    [
        ("CD3E", ("T_CD4", "T_CD8")),
        ("CD8A", ("T_CD8",)),
        ("GNLY", ("NK",)),
        ("LYZ", ("mono_CD14", "mono_CD16", "cDC")),
        ("CD14", ("mono_CD14",)),
        ("MS4A7", ("mono_CD16",)),
        ("CD1C", ("cDC",)),
        ("LILRA4", ("pDC",)),
        ("PPBP", ("platelet",)),
        ("CD79A", B_SUBSETS),
    ],
)
def test_lineage_markers_are_specific(cells, model, gene: str, positive: tuple[str, ...]) -> None:
    plan, x = cells
    negative = tuple(t for t in CELL_TYPES if t not in positive)
    on = _mean(x, model, gene, _rows(plan, *positive))
    off = _mean(x, model, gene, _rows(plan, *negative))
    assert on > 1.0 and on > 10 * off


B_MEMORY_LIKE = ("unswitched_memory", "switched_memory", "DN1", "DN2", "plasmablast")


def test_b_subset_markers_follow_the_references(cells, model) -> None:
    plan, x = cells
    m = lambda gene, *types: _mean(x, model, gene, _rows(plan, *types))  # noqa: E731
    other_b = lambda t: tuple(s for s in CELL_TYPES[8:] if s != t)  # noqa: E731
    # naive: IgD+ CD27-; transitional: MME/CD38/VPREB3 high
    assert m("IGHD", "naive") > 5 * m("IGHD", "switched_memory", "DN1", "DN2")
    assert m("CD27", "naive") < 0.1 * m("CD27", "unswitched_memory", "switched_memory")
    assert m("VPREB3", "transitional") > 5 * m("VPREB3", *other_b("transitional"))
    # DN2: ITGAX, TBX21, FCRL5 up, CR2 and CXCR5 down (Jenks 2018)
    for gene in ("ITGAX", "TBX21", "FCRL5"):
        assert m(gene, "DN2") > 5 * m(gene, *other_b("DN2"))
    for gene in ("CR2", "CXCR5"):
        assert m(gene, "DN2") < 0.2 * m(gene, "DN1")
    # DN1 vs DN2 vs memory: CD27 separates memory from double negatives
    assert m("CD27", "DN1", "DN2") < 0.1 * m("CD27", "switched_memory")
    # plasmablasts: JCHAIN, MZB1, XBP1 very high; MS4A1 low
    for gene in ("JCHAIN", "MZB1", "XBP1", "PRDM1"):
        assert m(gene, "plasmablast") > 10 * m(gene, "naive", "switched_memory")
    assert m("MS4A1", "plasmablast") < 0.2 * m("MS4A1", "naive")


def test_each_b_cell_uses_one_heavy_chain_isotype(cells, model) -> None:
    plan, x = cells
    switched = ("IGHG1", "IGHG2", "IGHG3", "IGHG4", "IGHA1", "IGHA2")
    cols = {
        g: int(np.flatnonzero(model.genes.symbols == g)[0]) for g in ("IGHM", "IGHD", *switched)
    }
    sm = _rows(plan, "switched_memory")
    heavy = x[sm][:, [cols[g] for g in switched]].toarray()
    # the chosen isotype dominates: >= 90% of switched heavy-chain UMI in one gene
    top_share = heavy.max(axis=1) / np.maximum(heavy.sum(axis=1), 1)
    assert np.median(top_share) > 0.9
    # switched memory cells barely express IGHM/IGHD; naive cells do
    ighm_sm = x[sm, cols["IGHM"]].mean()
    assert ighm_sm < 0.05 * x[_rows(plan, "naive"), cols["IGHM"]].mean()
    assert set(np.unique(plan.heavy[sm])) <= {2, 3, 4, 5, 6, 7}  # IGHG1..IGHA2


def test_interferon_score_scales_the_isg_module(model) -> None:
    probs = np.zeros(len(CELL_TYPES))
    probs[CELL_TYPES.index("mono_CD14")] = 1.0

    def isg_share(score: float) -> float:
        ss = np.random.SeedSequence(3)
        plan = plan_cells(
            np.random.default_rng(ss), model, n_cells=500, type_probs=probs, median_umi=MEDIAN_UMI,
            umi_sdlog=0.3, doublet_rate=0.0, low_quality_rate=0.0, ifn_score=score, ifn_strength=1.0,
        )  # fmt: skip
        x = simulate_counts(ss, model, model.profiles, plan)
        return float(x[:, model.isg].sum() / x.sum())

    assert isg_share(2.0) > 3 * isg_share(0.0)
    # even the highest score keeps the module a minority of the library
    assert isg_share(2.5) < 0.25


def test_counts_stay_in_a_plausible_range(cells) -> None:
    _, x = cells
    lib = np.asarray(x.sum(axis=1)).ravel()
    assert x.data.max() < 20_000  # plasmablast IG chains reach thousands; nothing beyond
    assert lib.max() < 40 * MEDIAN_UMI


def test_counts_are_deterministic_under_a_seed(model) -> None:
    probs = np.full(len(CELL_TYPES), 1.0 / len(CELL_TYPES))

    def draw(seed: int) -> sp.csr_matrix:
        ss = np.random.SeedSequence(seed)
        plan = plan_cells(
            np.random.default_rng(ss), model, n_cells=300, type_probs=probs, median_umi=MEDIAN_UMI,
            umi_sdlog=0.4, doublet_rate=0.06, low_quality_rate=0.05, ifn_score=1.0, ifn_strength=1.0,
        )  # fmt: skip
        return simulate_counts(ss, model, model.profiles, plan)

    a, b, c = draw(9), draw(9), draw(10)
    assert (a != b).nnz == 0
    assert (a != c).nnz > 0
    assert a.dtype == np.int32 and a.has_sorted_indices

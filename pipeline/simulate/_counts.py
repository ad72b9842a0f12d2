"""Per-cell plans and count draws of the simulator (pure numpy / scipy kernels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._expression import ExpressionModel

LOW_QUALITY_LIBRARY = 0.25  # low-quality cells keep about a quarter of their UMI
LOW_QUALITY_MT_FOLD = 8.0  # ... and their mitochondrial share rises ~8-fold (to ~25%)
BLOCK_CELLS = 2048  # cells drawn at once; fixed so the output does not depend on chunking


@dataclass(frozen=True)
class CellPlan:
    """What each cell is before its counts are drawn; doublets have a second component."""

    cell_type: np.ndarray  # leaf type index (first component)
    kind: np.ndarray  # 'singlet', 'doublet' or 'low_quality'
    library: np.ndarray  # expected UMI of the first component
    heavy: np.ndarray  # index into IGH_CONSTANT, -1 outside B cells
    light: np.ndarray  # index into IG_LIGHT, -1 outside B cells
    partner_type: np.ndarray  # -1 for non-doublets
    partner_library: np.ndarray
    partner_heavy: np.ndarray
    partner_light: np.ndarray
    isg_fold: np.ndarray
    mt_fold: np.ndarray
    state: np.ndarray | None = None  # sub-state index of the first component, -1 none


@dataclass(frozen=True)
class SubStateGenes:
    """The genes a sub-state raises and by how much (natural-scale fold)."""

    genes: np.ndarray
    fold: float


def draw_states(
    rng: np.random.Generator, cell_type: np.ndarray, states: list[tuple[int, float]]
) -> np.ndarray:
    """Each cell's sub-state (-1: none): a cell of sub-state j's type joins it with that
    state's share (states of one type share its cells in turn)."""
    out = np.full(cell_type.size, -1)
    for j, (t, share) in enumerate(states):
        rows = np.flatnonzero((cell_type == t) & (out < 0))
        out[rows[rng.random(rows.size) < share]] = j
    return out


def plan_cells(
    rng: np.random.Generator,
    model: ExpressionModel,
    *,
    n_cells: int,
    type_probs: np.ndarray,
    median_umi: float,
    umi_sdlog: float,
    doublet_rate: float,
    low_quality_rate: float,
    ifn_score: float,
    ifn_strength: float,
) -> CellPlan:
    """Draw each cell's type, library size, isotype and quality."""
    n_types = len(model.cell_types)
    u = rng.random(n_cells)
    kind = np.where(
        u < doublet_rate,
        "doublet",
        np.where(u < doublet_rate + low_quality_rate, "low_quality", "singlet"),
    ).astype(object)
    cell_type = rng.choice(n_types, size=n_cells, p=type_probs)
    partner = rng.choice(n_types, size=n_cells, p=type_probs)
    is_doublet = kind == "doublet"
    partner = np.where(is_doublet, partner, -1)

    def library(types: np.ndarray) -> np.ndarray:
        factor = model.library_factor[np.maximum(types, 0)]
        return median_umi * factor * rng.lognormal(0.0, umi_sdlog, types.size)

    lib = library(cell_type)
    partner_lib = np.where(is_doublet, library(partner), 0.0)
    low = kind == "low_quality"
    lib[low] *= LOW_QUALITY_LIBRARY * rng.lognormal(0.0, 0.3, int(low.sum()))
    mt_fold = rng.lognormal(0.0, 0.25, n_cells)
    mt_fold[low] *= LOW_QUALITY_MT_FOLD
    # cells vary around the sample's score, within half to one and a half times it
    isg_fold = np.exp(
        ifn_strength * ifn_score * np.clip(rng.lognormal(0.0, 0.25, n_cells), 0.5, 1.5)
    )

    def isotype(types: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        heavy = np.full(types.size, -1)
        light = np.full(types.size, -1)
        for t in np.unique(types[types >= 0]):
            if model.heavy_budget[t] == 0:
                continue
            rows = np.flatnonzero(types == t)
            heavy[rows] = rng.choice(len(model.heavy_genes), size=rows.size, p=model.heavy_probs[t])
            light[rows] = rng.choice(len(model.light_genes), size=rows.size, p=model.light_probs)
        return heavy, light

    heavy, light = isotype(cell_type)
    partner_heavy, partner_light = isotype(partner)
    return CellPlan(
        cell_type=cell_type,
        kind=kind,
        library=lib,
        heavy=heavy,
        light=light,
        partner_type=partner,
        partner_library=partner_lib,
        partner_heavy=partner_heavy,
        partner_light=partner_light,
        isg_fold=isg_fold,
        mt_fold=mt_fold,
    )


def _add_component(
    mu: np.ndarray,
    rows: np.ndarray,
    model: ExpressionModel,
    dense_profiles: np.ndarray,
    dense_col: np.ndarray,
    types: np.ndarray,
    lib: np.ndarray,
    heavy: np.ndarray,
    light: np.ndarray,
) -> None:
    """Add the expected dense counts of one component (singlet or one doublet half)."""
    mu[rows] += lib[:, None] * dense_profiles[types]
    b = np.flatnonzero(heavy >= 0)
    if b.size:
        t = types[b]
        mu[rows[b], dense_col[model.heavy_genes[heavy[b]]]] += lib[b] * model.heavy_budget[t]
        ighm = b[heavy[b] == 0]  # IGH_CONSTANT[0] is IGHM; IGHD rides along in IgD+ subsets
        ighd_col = dense_col[model.heavy_genes[1]]
        mu[rows[ighm], ighd_col] += lib[ighm] * model.ighd_with_ighm[types[ighm]]
        mu[rows[b], dense_col[model.light_genes[light[b]]]] += lib[b] * model.light_budget[t]


def draw_counts(
    rng: np.random.Generator,
    model: ExpressionModel,
    profiles: np.ndarray,
    plan: CellPlan,
    states: tuple[SubStateGenes, ...] = (),
) -> sp.csr_matrix:
    """Counts of the planned cells: gamma-Poisson for dense genes, Poisson for the rest.

    ``profiles`` are the model's profiles after the sample's batch effect; a cell in a
    sub-state (``plan.state``) has that state's genes (dense ones) raised.
    """
    n_cells, n_genes = plan.cell_type.size, profiles.shape[1]
    dense, sparse = model.dense, model.sparse
    dense_col = np.full(n_genes, -1)
    dense_col[dense] = np.arange(dense.size)
    dense_profiles = profiles[:, dense]
    all_rows = np.arange(n_cells)

    mu = np.zeros((n_cells, dense.size))
    _add_component(mu, all_rows, model, dense_profiles, dense_col, plan.cell_type,
                   plan.library, plan.heavy, plan.light)  # fmt: skip
    d = np.flatnonzero(plan.partner_type >= 0)
    _add_component(mu, d, model, dense_profiles, dense_col, plan.partner_type[d],
                   plan.partner_library[d], plan.partner_heavy[d], plan.partner_light[d])  # fmt: skip
    mu[:, dense_col[model.isg]] *= plan.isg_fold[:, None]
    mu[:, dense_col[model.mt]] *= plan.mt_fold[:, None]
    for j, state in enumerate(states):
        cols = dense_col[state.genes]
        rows_j = np.flatnonzero(plan.state == j) if plan.state is not None else np.empty(0, int)
        mu[np.ix_(rows_j, cols[cols >= 0])] *= state.fold
    phi = model.dispersion[dense]
    counts = rng.poisson(rng.gamma(1.0 / phi, phi * mu))
    r, c = np.nonzero(counts)
    rows, cols, vals = [r], [dense[c]], [counts[r, c]]

    # Sparse genes: Poisson numbers of molecules spread by each type's sparse profile.
    sparse_profiles = profiles[:, sparse]
    mass = sparse_profiles.sum(axis=1)
    cum = np.cumsum(sparse_profiles, axis=1)
    comp_rows = np.concatenate([all_rows, d])
    comp_types = np.concatenate([plan.cell_type, plan.partner_type[d]])
    comp_lib = np.concatenate([plan.library, plan.partner_library[d]])
    n_events = rng.poisson(comp_lib * mass[comp_types])
    ev_rows = np.repeat(comp_rows, n_events)
    ev_types = np.repeat(comp_types, n_events)
    ev_genes = np.empty(ev_rows.size, dtype=np.int64)
    uniform = rng.random(ev_rows.size)
    for t in np.unique(ev_types):
        sel = ev_types == t
        pos = np.searchsorted(cum[t], uniform[sel] * mass[t], side="right")
        ev_genes[sel] = sparse[np.minimum(pos, sparse.size - 1)]
    rows.append(ev_rows)
    cols.append(ev_genes)
    vals.append(np.ones(ev_rows.size, dtype=np.int64))

    x = sp.coo_matrix(
        (np.concatenate(vals).astype(np.int32), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_cells, n_genes),
    ).tocsr()
    x.sum_duplicates()
    x.sort_indices()
    return x


def simulate_counts(
    seed_seq: np.random.SeedSequence,
    model: ExpressionModel,
    profiles: np.ndarray,
    plan: CellPlan,
    states: tuple[SubStateGenes, ...] = (),
) -> sp.csr_matrix:
    """Draw all cells in fixed blocks, each block from its own child seed."""
    n = plan.cell_type.size
    blocks = []
    for i, start in enumerate(range(0, n, BLOCK_CELLS)):
        sl = slice(start, min(start + BLOCK_CELLS, n))
        fields: dict[str, Any] = {k: None if v is None else v[sl] for k, v in plan.__dict__.items()}
        sub = CellPlan(**fields)
        rng = np.random.default_rng(
            np.random.SeedSequence(seed_seq.entropy, spawn_key=(*seed_seq.spawn_key, i))
        )
        blocks.append(draw_counts(rng, model, profiles, sub, states))
    if not blocks:
        return sp.csr_matrix((0, profiles.shape[1]), dtype=np.int32)
    return sp.vstack(blocks, format="csr")

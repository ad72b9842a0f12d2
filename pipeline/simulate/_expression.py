"""The gene universe and the per-cell-type expression model of the simulator (pure numpy)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _programs as prog

CP10K = 1e-4
# Genes whose largest expected count per cell (at the median library) is below this are
# sampled as Poisson through a sparse multinomial draw; the rest as gamma-Poisson. At a mean
# of 0.3 the gamma term adds phi * mu = 6% to the variance, so the shortcut changes little
# and makes the draw ~4x cheaper (2,500 instead of 11,000 dense genes at 20,000 genes).
DENSE_MIN_EXPECTED = 0.3
REFERENCE_LIBRARY = 3500.0
MARKER_BACKGROUND = 0.05  # CP10K of any marker gene in a type that does not list it
IG_AMBIENT = 0.3  # CP10K of immunoglobulin genes outside B cells (ambient RNA)
ISG_BASELINE = 2.0  # CP10K per ISG at interferon score 0


@dataclass(frozen=True)
class GeneUniverse:
    """Gene identifiers (``ids``) and symbols, in the order of the count matrices."""

    ids: np.ndarray
    symbols: np.ndarray

    def index(self, symbols: tuple[str, ...] | list[str]) -> np.ndarray:
        lookup = {s: i for i, s in enumerate(self.symbols)}
        return np.array([lookup[s] for s in symbols], dtype=np.int64)


@dataclass(frozen=True)
class ExpressionModel:
    """Relative expression of every cell type, plus the per-cell programs.

    ``profiles[t]`` sums to one minus the type's per-cell immunoglobulin budget; the heavy
    and light chains are added per cell by the chosen isotype.
    """

    genes: GeneUniverse
    cell_types: tuple[str, ...]
    profiles: np.ndarray  # (n_types, n_genes) float64
    dispersion: np.ndarray  # (n_genes,) gamma-Poisson overdispersion phi
    library_factor: np.ndarray  # (n_types,)
    dense: np.ndarray  # gene indices sampled gamma-Poisson
    sparse: np.ndarray  # gene indices sampled through the sparse multinomial draw
    isg: np.ndarray  # gene indices scaled by the interferon score
    mt: np.ndarray  # gene indices scaled up in low-quality cells
    heavy_genes: np.ndarray  # gene indices of IGH_CONSTANT
    heavy_budget: np.ndarray  # (n_types,) fraction of UMI
    heavy_probs: np.ndarray  # (n_types, len(IGH_CONSTANT))
    ighd_with_ighm: np.ndarray  # (n_types,) IGHD fraction added when the heavy chain is IGHM
    light_genes: np.ndarray
    light_budget: np.ndarray  # (n_types,)
    light_probs: np.ndarray  # (len(IG_LIGHT),)


def named_genes() -> list[str]:
    """Every real gene symbol the simulator gives a program, in a fixed order."""
    names: list[str] = []
    groups: list[list[str] | tuple[str, ...]] = [
        list(prog.HOUSEKEEPING),
        prog.MT_GENES,
        prog.RIBO_GENES,
        prog.HB_GENES,
        prog.ISG_GENES,
        prog.IGH_CONSTANT,
        prog.IG_LIGHT,
    ]
    groups += [list(m) for m in prog.LINEAGE_MARKERS.values()]
    groups += [list(m) for m in prog.B_SUBSET_MARKERS.values()]
    for group in groups:
        names.extend(g for g in group if g not in names)
    return names


def build_gene_universe(n_genes: int) -> GeneUniverse:
    """Real symbols for every programmed gene, synthetic ``SIMG#####`` filler for the rest.

    The order depends only on ``n_genes``, so cohorts with different seeds share genes.
    """
    named = named_genes()
    n_filler = n_genes - len(named)
    if n_filler < 100:
        msg = f"n_genes={n_genes} is too small: the simulator needs at least {len(named) + 100}"
        raise ValueError(msg)
    symbols = np.array(named + [f"SIMG{i:05d}" for i in range(1, n_filler + 1)], dtype=object)
    order = np.random.default_rng(20_000).permutation(n_genes)
    symbols = symbols[order]
    ids = np.array([f"ENSSIMG{i:011d}" for i in range(1, n_genes + 1)], dtype=object)
    return GeneUniverse(ids=ids, symbols=symbols)


# Which leaf types share a differential-expression program (lineage structure).
_SHARED_PROGRAMS: dict[str, tuple[str, ...]] = {
    "T": ("T_CD4", "T_CD8"),
    "cytotoxic": ("T_CD8", "NK"),
    "myeloid": ("mono_CD14", "mono_CD16", "cDC"),
    "B": prog.B_SUBSETS,
    "memory_B": ("unswitched_memory", "switched_memory", "DN1", "DN2"),
}


def _weakened(
    markers: dict[str, float], base: dict[str, float], strength: float
) -> dict[str, float]:
    """Marker levels moved towards the level each gene has without the marker (``base``,
    else `MARKER_BACKGROUND`): ``base + strength * (level - base)``, on the linear scale."""
    if strength == 1.0:
        return dict(markers)
    return {
        gene: (b := base.get(gene, MARKER_BACKGROUND)) + strength * (level - b)
        for gene, level in markers.items()
    }


def build_expression_model(
    n_genes: int, seed: int, marker_strength: float = 1.0, dn1_memory_genes: bool = False
) -> ExpressionModel:
    """Draw the cohort's expression programs (filler genes' levels and cell-type DE).

    ``marker_strength`` below 1 weakens every lineage and B-subset marker towards the level
    the gene has without it (the B lineage's level for a B-subset marker); immunoglobulin
    isotypes are left as they are. ``dn1_memory_genes``: DN1 cells express the switched-
    memory genes of `DN1_MEMORY_GENES` at the switched-memory level.
    """
    subset_markers = dict(prog.B_SUBSET_MARKERS)
    if dn1_memory_genes:
        memory = prog.B_SUBSET_MARKERS["switched_memory"]
        subset_markers["DN1"] = {
            **subset_markers["DN1"],
            **{g: memory[g] for g in prog.DN1_MEMORY_GENES},
        }
    genes = build_gene_universe(n_genes)
    types = prog.CELL_TYPES
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    sym_index = {s: i for i, s in enumerate(genes.symbols)}
    named = set(named_genes())
    filler = np.array([i for i, s in enumerate(genes.symbols) if s not in named])

    # Filler genes: a heavy-tailed baseline; a quarter not expressed in blood.
    log_base = rng.normal(0.0, 1.6, size=filler.size)
    log_base[rng.random(filler.size) < 0.25] = -12.0
    log_de = np.zeros((len(types), filler.size))

    def add_program(members: tuple[str, ...], fraction: float, sd: float) -> None:
        hit = rng.random(filler.size) < fraction
        effect = rng.normal(0.0, sd, size=filler.size) * hit
        for name in members:
            log_de[types.index(name)] += effect

    for members in _SHARED_PROGRAMS.values():
        add_program(members, 0.03, 1.0)
    for name in types:
        add_program((name,), 0.02 if name in prog.B_SUBSETS else 0.04, 1.0)

    profiles = np.zeros((len(types), n_genes))
    library_factor = np.ones(len(types))
    heavy_budget = np.zeros(len(types))
    heavy_probs = np.zeros((len(types), len(prog.IGH_CONSTANT)))
    ighd = np.zeros(len(types))
    light_budget = np.zeros(len(types))
    marker_genes = {g for m in prog.LINEAGE_MARKERS.values() for g in m} | {
        g for m in prog.B_SUBSET_MARKERS.values() for g in m
    }
    ribo_w = np.exp(rng.normal(0.0, 0.4, size=len(prog.RIBO_GENES)))
    mt_w = np.exp(rng.normal(0.0, 0.8, size=len(prog.MT_GENES)))
    idx = genes.index

    for t, name in enumerate(types):
        is_b = name in prog.B_SUBSETS
        row = np.zeros(n_genes)
        fixed: dict[str, float] = dict.fromkeys(marker_genes, MARKER_BACKGROUND)
        fixed.update(dict.fromkeys(prog.IGH_CONSTANT + prog.IG_LIGHT, 0.02 if is_b else IG_AMBIENT))
        fixed.update(dict.fromkeys(prog.HB_GENES, 0.3))
        isg_level = ISG_BASELINE * (2.0 if name.startswith("mono") else 1.0)
        fixed.update(dict.fromkeys(prog.ISG_GENES, isg_level))
        fixed.update(prog.HOUSEKEEPING)
        lineage_markers = prog.LINEAGE_MARKERS["B" if is_b else name]
        fixed.update(_weakened(lineage_markers, {}, marker_strength))
        if is_b:
            fixed.update(_weakened(subset_markers[name], lineage_markers, marker_strength))
            budget, probs = prog.HEAVY_CHAIN[name]
            heavy_budget[t] = budget * CP10K
            for gene, p in probs.items():
                heavy_probs[t, prog.IGH_CONSTANT.index(gene)] = p
            ighd[t] = prog.IGHD_WITH_IGHM.get(name, 0.0) * CP10K
            light_budget[t] = prog.LIGHT_CHAIN_BUDGET[name] * CP10K
        for gene, level in fixed.items():
            row[sym_index[gene]] = level * CP10K
        ribo_share = prog.B_RIBO_SHARE if is_b else prog.RIBO_SHARE[name]
        if name == "plasmablast":
            ribo_share = 0.12
        row[idx(prog.RIBO_GENES)] = ribo_share * ribo_w / ribo_w.sum()
        row[idx(prog.MT_GENES)] = prog.MT_SHARE_DEFAULT * mt_w / mt_w.sum()
        filler_share = 1.0 - row.sum() - heavy_budget[t] - ighd[t] - light_budget[t]
        if filler_share < 0.2:
            msg = f"cell type {name!r}: programmed genes take {1 - filler_share:.0%} of UMI"
            raise ValueError(msg)
        w = np.exp(log_base + log_de[t])
        row[filler] = filler_share * w / w.sum()
        profiles[t] = row
        library_factor[t] = prog.LIBRARY_FACTOR.get(name, 1.0)

    dispersion = np.exp(rng.normal(np.log(0.2), 0.4, size=n_genes))
    special = np.concatenate(
        [idx(prog.ISG_GENES), idx(prog.MT_GENES), idx(prog.IGH_CONSTANT), idx(prog.IG_LIGHT)]
    )
    expected_max = (profiles * library_factor[:, None]).max(axis=0) * REFERENCE_LIBRARY
    is_dense = expected_max >= DENSE_MIN_EXPECTED
    is_dense[special] = True
    light_probs = np.array([prog.LIGHT_CHAIN_PROBS[g] for g in prog.IG_LIGHT])
    return ExpressionModel(
        genes=genes,
        cell_types=types,
        profiles=profiles,
        dispersion=dispersion,
        library_factor=library_factor,
        dense=np.flatnonzero(is_dense),
        sparse=np.flatnonzero(~is_dense),
        isg=idx(prog.ISG_GENES),
        mt=idx(prog.MT_GENES),
        heavy_genes=idx(prog.IGH_CONSTANT),
        heavy_budget=heavy_budget,
        heavy_probs=heavy_probs,
        ighd_with_ighm=ighd,
        light_genes=idx(prog.IG_LIGHT),
        light_budget=light_budget,
        light_probs=light_probs,
    )


def apply_batch_effect(profiles: np.ndarray, log_factor: np.ndarray) -> np.ndarray:
    """Multiply every gene by its batch factor, keeping each type's total expression."""
    scaled = profiles * np.exp(log_factor)[None, :]
    return scaled * (profiles.sum(axis=1) / scaled.sum(axis=1))[:, None]


# Genes drawn for a planted expression effect are filler genes whose expected count per
# cell of the type (at the reference library) is at least this: ~6 UMI in the pseudobulk
# of 60 cells, so the effect is there to be found.
PLANTED_MIN_EXPECTED = 0.1


@dataclass(frozen=True)
class ExpressionShifts:
    """What a worker needs to shift one sample's profiles (a small, picklable record):
    per-patient gene variation and the planted differential expression."""

    seed: int
    patient_sd: float
    # per planted effect: (type index, gene indices, group, {month: log2 fold})
    effects: tuple[tuple[int, np.ndarray, str, dict[int, float]], ...]

    def log_shift(self, n_types: int, n_genes: int, *, patient_index: int, group: str,
                  month: int) -> np.ndarray:  # fmt: skip
        """Natural-log factors (types x genes) of one sample's expected expression."""
        shift = np.zeros((n_types, n_genes))
        if self.patient_sd > 0:
            rng = np.random.default_rng(
                np.random.SeedSequence(self.seed, spawn_key=(4, patient_index))
            )
            shift += rng.normal(0.0, self.patient_sd, (n_types, n_genes))
        for t, genes, effect_group, fold in self.effects:
            if effect_group in (group, "all") and fold.get(month, 0.0):
                shift[t, genes] += np.log(2.0) * fold[month]
        return shift


def draw_planted_genes(
    model: ExpressionModel, effects: list, *, seed: int, patient_sd: float
) -> tuple[ExpressionShifts, list[tuple[int, str, np.ndarray]]]:
    """Genes of every planted expression effect (named, or drawn among the type's
    expressed filler genes with a seeded generator); returns the shifts' effect records
    and (effect index, cell type, gene indices) for the truth."""
    named = set(named_genes())
    lookup = {s: i for i, s in enumerate(model.genes.symbols)}
    records, chosen = [], []
    for k, effect in enumerate(effects):
        t = model.cell_types.index(effect.cell_type)
        if effect.genes:
            unknown = [g for g in effect.genes if g not in lookup]
            if unknown:
                msg = (f"expression effect on {effect.cell_type!r} names genes {unknown[:5]} "
                       "that the simulated gene universe does not have")  # fmt: skip
                raise ValueError(msg)
            genes = np.array([lookup[g] for g in effect.genes], dtype=np.int64)
        else:
            expected = model.profiles[t] * model.library_factor[t] * REFERENCE_LIBRARY
            pool = np.array(
                [
                    i
                    for i in np.flatnonzero(expected >= PLANTED_MIN_EXPECTED)
                    if model.genes.symbols[i] not in named
                ]
            )
            if pool.size < effect.n_genes:
                msg = (f"expression effect on {effect.cell_type!r} asks for {effect.n_genes} "
                       f"genes; only {pool.size} filler genes are expressed enough there")  # fmt: skip
                raise ValueError(msg)
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3, k)))
            genes = np.sort(rng.choice(pool, size=effect.n_genes, replace=False))
        records.append((t, genes, effect.group, dict(effect.log2_fold)))
        chosen.append((k, effect.cell_type, genes))
    return ExpressionShifts(seed=seed, patient_sd=patient_sd, effects=tuple(records)), chosen


def apply_log_shift(profiles: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Multiply each type's genes by ``exp(shift)``, keeping each type's total expression."""
    scaled = profiles * np.exp(shift)
    total = scaled.sum(axis=1)
    keep = np.divide(profiles.sum(axis=1), total, out=np.ones_like(total), where=total > 0)
    return scaled * keep[:, None]


def draw_sub_state_genes(
    model: ExpressionModel, sub_states: list, *, seed: int
) -> list[np.ndarray]:
    """Each sub-state's genes: ``n_genes`` of its type's expressed filler genes sampled
    gamma-Poisson (seeded by the cohort's seed and the sub-state's position)."""
    named = set(named_genes())
    dense = set(model.dense.tolist())
    out = []
    for j, state in enumerate(sub_states):
        t = model.cell_types.index(state.cell_type)
        expected = model.profiles[t] * model.library_factor[t] * REFERENCE_LIBRARY
        pool = np.array([i for i in np.flatnonzero(expected >= PLANTED_MIN_EXPECTED)
                         if i in dense and model.genes.symbols[i] not in named])  # fmt: skip
        if pool.size < state.n_genes:
            msg = (f"sub-state {state.name!r} asks for {state.n_genes} genes; only {pool.size} "
                   f"filler genes are expressed enough in {state.cell_type}")  # fmt: skip
            raise ValueError(msg)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(5, j)))
        out.append(np.sort(rng.choice(pool, size=state.n_genes, replace=False)))
    return out

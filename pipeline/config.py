"""Run configuration: one typed, frozen schema with every default, read once from YAML.

Unknown keys are rejected by name; wrong types name the key and the expected type.
Relative paths in a config are relative to the current working directory.
"""

from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from cluster.config import ClusterConfig

from .config_analysis import (
    AbundanceConfig,
    AddBatchConfig,
    AnnotateConfig,
    ExpressionConfig,
    NeighbourhoodsConfig,
    PowerConfig,
    PredictConfig,
)
from .config_analysis import FrozenModel as _Frozen
from .errors import ConfigError
from .labels import B_SUBSETS, LINEAGES

# Default composition of the simulator. PBMC: B ~9% (published PBMC references); within B, an
# SLE-like mix.
DEFAULT_LINEAGE_PROPORTIONS: dict[str, float] = {
    "T_CD4": 0.38,
    "T_CD8": 0.20,
    "NK": 0.11,
    "mono_CD14": 0.16,
    "mono_CD16": 0.03,
    "cDC": 0.015,
    "pDC": 0.005,
    "B": 0.09,
    "platelet": 0.01,
}
DEFAULT_B_SUBSET_PROPORTIONS: dict[str, float] = {
    "naive": 0.50,
    "transitional": 0.06,
    "unswitched_memory": 0.10,
    "switched_memory": 0.17,
    "DN1": 0.05,
    "DN2": 0.09,
    "plasmablast": 0.03,
}


class PlantedEffect(_Frozen):
    """A change of one cell type's abundance, on the additive log-ratio scale.

    ``log_ratio`` maps a timepoint (months) to the shift of the type's log-ratio in the
    group at that timepoint; timepoints not listed get 0.
    """

    cell_type: str
    group: Literal["responder", "non_responder", "all"]
    log_ratio: dict[int, float]

    @field_validator("cell_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        allowed = [x for x in LINEAGES if x != "B"] + list(B_SUBSETS) + ["B"]
        if value not in allowed:
            msg = f"unknown cell type {value!r}; expected one of {allowed}"
            raise ValueError(msg)
        return value

    @property
    def level(self) -> str:
        return "b_subset" if self.cell_type in B_SUBSETS else "lineage"


def leaf_type(value: str) -> str:
    """``value`` if it names a leaf cell type (a lineage but B, or a B subset)."""
    allowed = [x for x in LINEAGES if x != "B"] + list(B_SUBSETS)
    if value not in allowed:
        msg = f"unknown leaf cell type {value!r}; expected one of {allowed}"
        raise ValueError(msg)
    return value


class SubState(_Frozen):
    """A part of one leaf cell type with genes of its own, whose share of that type changes
    (the type's own abundance does not): what label-level tests cannot see.

    ``log_ratio`` maps a timepoint (months) to the shift of the sub-state's share of the
    type on the logit scale in the group at that timepoint; timepoints not listed get 0.
    """

    name: str = Field(description="the sub-state's name in truth/cells/*.csv.gz")
    cell_type: str = Field(description="the leaf type it is part of (a B subset or a lineage)")
    fraction: float = Field(0.2, gt=0, lt=1, description="its share of the type's cells, unshifted")
    n_genes: int = Field(
        40, ge=1, description="genes up in it, drawn among the type's expressed filler genes"
    )
    log2_fold: float = Field(1.5, description="their log2 fold change in the sub-state's cells")
    group: Literal["responder", "non_responder", "all"] = "non_responder"
    log_ratio: dict[int, float] = Field(default_factory=dict)

    @field_validator("cell_type")
    @classmethod
    def _leaf_type(cls, value: str) -> str:
        return leaf_type(value)


class PlantedExpression(_Frozen):
    """A change of some genes' expression within one leaf cell type (log2 fold change).

    ``log2_fold`` maps a timepoint (months) to the genes' log2 fold change in the group at
    that timepoint; timepoints not listed get 0. ``genes`` names gene symbols; without
    them, ``n_genes`` genes expressed in the type are drawn (seeded by the cohort's seed).
    """

    cell_type: str
    group: Literal["responder", "non_responder", "all"]
    log2_fold: dict[int, float]
    genes: list[str] = Field(default_factory=list)
    n_genes: int = Field(20, ge=1, description="genes drawn when `genes` is empty")

    @field_validator("cell_type")
    @classmethod
    def _leaf_type(cls, value: str) -> str:
        return leaf_type(value)

    @property
    def level(self) -> str:
        return "b_subset" if self.cell_type in B_SUBSETS else "lineage"


def _default_expression_effects() -> list[PlantedExpression]:
    # A baseline difference within DN2 (the subset the study found expanded in
    # non-responders) and a treatment effect within naive B cells of responders.
    return [
        PlantedExpression(cell_type="DN2", group="non_responder",
                          log2_fold={0: 1.0, 3: 1.0, 6: 1.0}, n_genes=25),
        PlantedExpression(cell_type="naive", group="responder",
                          log2_fold={3: -1.0, 6: -1.0}, n_genes=25),
    ]  # fmt: skip


def _default_effects() -> list[PlantedEffect]:
    # Jenks 2018 / PubMed 39975549: DN2 higher in non-responders; Immunol Lett 2024: T-bet+
    # B fall early only in responders; Jacobi 2010: naive and transitional fall in both.
    return [
        PlantedEffect(cell_type="DN2", group="non_responder", log_ratio={0: 0.8, 3: 0.8, 6: 0.8}),
        PlantedEffect(cell_type="DN2", group="responder", log_ratio={3: -0.5, 6: -0.8}),
        PlantedEffect(cell_type="naive", group="all", log_ratio={3: -0.4, 6: -0.6}),
        PlantedEffect(cell_type="transitional", group="all", log_ratio={3: -0.3, 6: -0.5}),
    ]


class SimulationConfig(_Frozen):
    """The synthetic cohort written by ``immunoprofile simulate``."""

    seed: int = 0
    n_patients: int = Field(44, ge=2)
    extra_patients: int = Field(
        0, ge=0, description="patients whose samples arrive later as a batch of their own"
    )
    responder_fraction: float = Field(0.5, gt=0, lt=1)
    female_fraction: float = Field(0.9, ge=0, le=1)
    timepoints_months: list[int] = Field(default_factory=lambda: [0, 3, 6])
    cells_per_sample: int = Field(7500, ge=20, description="mean cells per sample")
    cells_per_sample_sdlog: float = Field(0.15, ge=0)
    n_genes: int = Field(20000, ge=1000)
    n_batches: int = Field(4, ge=1)
    format: Literal["h5", "mtx"] = "h5"
    median_umi: float = Field(3500.0, gt=0)
    umi_sdlog: float = Field(0.4, ge=0)
    doublet_rate: float = Field(0.06, ge=0, lt=0.5)
    low_quality_rate: float = Field(0.05, ge=0, lt=0.5)
    batch_effect_sd: float = Field(0.25, ge=0, description="sd of per-batch log gene factors")
    patient_sd: float = Field(0.35, ge=0, description="patient random effect, log-ratio scale")
    sample_sd: float = Field(0.15, ge=0, description="sample random effect, log-ratio scale")
    ifn_strength: float = Field(1.0, ge=0)
    marker_strength: float = Field(
        1.0,
        gt=0,
        le=1,
        description="lineage and B-subset markers at this share of their difference from "
        "the level without the marker (1: full strength)",
    )
    dn1_memory_genes: bool = Field(
        False,
        description="DN1 cells keep switched memory's genes other than CD27 (TNFRSF13B, "
        "TNFRSF13C, SSPN, COCH): the harder DN1 / switched-memory boundary",
    )
    lineage_proportions: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_LINEAGE_PROPORTIONS)
    )
    b_subset_proportions: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_B_SUBSET_PROPORTIONS)
    )
    effects: list[PlantedEffect] = Field(default_factory=_default_effects)
    expression_patient_sd: float = Field(
        0.2, ge=0, description="sd of per-patient log gene factors (per cell type)"
    )
    expression_effects: list[PlantedExpression] = Field(default_factory=_default_expression_effects)
    sub_states: list[SubState] = Field(
        default_factory=list,
        description="parts of a leaf type with genes of their own whose share changes",
    )

    @field_validator("timepoints_months")
    @classmethod
    def _timepoints(cls, value: list[int]) -> list[int]:
        if not value or value[0] != 0 or sorted(set(value)) != value or min(value) < 0:
            msg = f"expected increasing months starting with baseline 0, got {value}"
            raise ValueError(msg)
        return value

    @field_validator("lineage_proportions", "b_subset_proportions")
    @classmethod
    def _proportions(cls, value: dict[str, float], info: Any) -> dict[str, float]:
        vocab = LINEAGES if info.field_name == "lineage_proportions" else B_SUBSETS
        if set(value) != set(vocab) or min(value.values()) <= 0:
            msg = f"expected a positive proportion for each of {list(vocab)}, got {value}"
            raise ValueError(msg)
        total = sum(value.values())
        return {k: value[k] / total for k in vocab}

    @model_validator(mode="before")
    @classmethod
    def _default_effects_on_design_timepoints(cls, data: Any) -> Any:
        """Without explicit effects, plant the defaults at the design's own timepoints."""
        if isinstance(data, dict) and "effects" not in data and "timepoints_months" in data:
            times = (
                set(data["timepoints_months"])
                if isinstance(data["timepoints_months"], list)
                else set()
            )
            data = {**data, "effects": [
                e.model_copy(update={"log_ratio": {t: v for t, v in e.log_ratio.items() if t in times}})
                for e in _default_effects()
            ]}  # fmt: skip
        if (isinstance(data, dict) and "expression_effects" not in data
                and isinstance(data.get("timepoints_months"), list)):  # fmt: skip
            times = set(data["timepoints_months"])
            data = {**data, "expression_effects": [
                e.model_copy(update={"log2_fold": {t: v for t, v in e.log2_fold.items() if t in times}})
                for e in _default_expression_effects()
            ]}  # fmt: skip
        return data

    @model_validator(mode="after")
    def _effects_on_known_timepoints(self) -> SimulationConfig:
        planted = [(e.cell_type, set(e.log_ratio)) for e in self.effects]
        planted += [(e.cell_type, set(e.log2_fold)) for e in self.expression_effects]
        planted += [(e.cell_type, set(e.log_ratio)) for e in self.sub_states]
        for cell_type, times in planted:
            unknown = times - set(self.timepoints_months)
            if unknown:
                msg = (
                    f"effect on {cell_type!r} names timepoints {sorted(unknown)} that "
                    f"are not in timepoints_months {self.timepoints_months}"
                )
                raise ValueError(msg)
        return self


class IngestConfig(_Frozen):
    """The ingest stage: count matrices to per-sample AnnData-Zarr stores."""

    gene_policy: Literal["error", "intersect"] = Field(
        "error",
        description="samples whose gene sets differ: 'error' lists the difference, "
        "'intersect' keeps the genes all samples share and reports what was dropped",
    )
    chunk_cells: int = Field(10_000, ge=100, description="cells per Dask chunk of the cohort view")


class QCConfig(_Frozen):
    """The qc stage: per-sample adaptive thresholds, hard bounds, doublets."""

    nmads: float = Field(
        5.0, gt=0, description="MADs from the sample median (counts, genes, top-20 share)"
    )
    nmads_mt: float = Field(
        3.0, gt=0, description="MADs above the sample median of % mitochondrial"
    )
    min_counts: float = Field(500, ge=0)
    max_counts: float | None = None
    min_genes: float = Field(200, ge=0)
    max_genes: float | None = None
    max_pct_mt: float = Field(20.0, gt=0, le=100)
    doublets: bool = Field(True, description="score doublets with scrublet, per sample")
    expected_doublet_rate: float = Field(0.06, gt=0, lt=0.5)
    doublet_mean_center: bool = Field(
        False,
        description="scrublet's mean_center: True centres the genes before the SVD "
        "(scanpy densifies for it); False is the uncentred SVD, with the same detection "
        "on simulated data (measured)",
    )
    doublet_sim_ratio: float = Field(
        2.0,
        gt=0,
        le=10,
        description="simulated doublets per observed cell (scanpy's sim_doublet_ratio); the "
        "neighbour search costs about (1 + ratio) x (1 + ratio x scored fraction): 1 "
        "halves it (detection against the simulator's truth: docs/benchmarks.md)",
    )
    doublet_sim_scored_fraction: float = Field(
        0.3,
        gt=0,
        le=1,
        description="share of simulated doublets scored to set scrublet's threshold (all "
        "are neighbour candidates; observed cells' scores do not depend on it); 1 = scanpy",
    )
    seed: int = 0


class PreprocessConfig(_Frozen):
    """The preprocess stage: normalization, highly variable genes, PCA."""

    target_sum: float = Field(1e4, gt=0)
    n_top_genes: int = Field(2000, ge=10)
    hvg_batch_key: Literal["batch", "sample_id", "patient_id"] = "batch"
    hvg_span: float = Field(0.3, gt=0, le=1)
    hvg_min_batch_cells: int = Field(
        50,
        ge=2,
        description="batches with fewer kept cells do not rank genes (their per-batch "
        "loess cannot be fitted); all batches as one when none has this many",
    )
    n_comps: int = Field(50, ge=2)
    pca_max_cells: int | None = Field(
        100_000,
        ge=1000,
        description="above this many kept cells the principal axes of a subsample stratified "
        "by sample (X'X of its cells) are refined on every kept cell (Rayleigh-Ritz on their "
        "top 2 x n_comps axes: a tenth of X'X's arithmetic) and every kept cell is projected; "
        "null: X'X of every kept cell (exact). At 853k kept cells, 100,000 matched the exact "
        "PCs 1-20 at |r| >= 0.998 and took 15 s less: docs/benchmarks.md",
    )
    seed: int = Field(0, description="seed of the PCA's fitting subsample")


class IntegrateConfig(_Frozen):
    """The integrate stage: batch correction of the PCs."""

    method: Literal["harmony", "scvi", "both"] = Field(
        "harmony",
        description="Harmony on the PCs (harmonypy), scVI on the HVG counts (scvi-tools), "
        "or both (obsm X_pca_harmony, X_scvi)",
    )
    batch_key: Literal["batch", "sample_id", "patient_id"] = "batch"
    harmony_theta: float = Field(2.0, ge=0, description="Harmony's diversity penalty")
    harmony_max_iter: int = Field(10, ge=1)
    harmony_max_cells: int = Field(
        100_000,
        ge=1000,
        description="above this many cells Harmony is fitted on a subsample stratified by "
        "sample (each batch's cells topped up to 500, or all of them when fewer) and every "
        "other cell is corrected with the fitted model (bounded memory)",
    )
    metrics_max_cells: int = Field(
        10_000, ge=100, description="cells sampled for the mixing metrics (quadratic cost)"
    )
    scvi_max_cells: int = Field(
        50_000, ge=100, description="cells (stratified by sample) scVI is trained on"
    )
    scvi_n_latent: int = Field(10, ge=2)
    scvi_max_epochs: int = Field(
        100,
        ge=1,
        description="epochs over the training subsample (scVI mixes strong batch effects "
        "only after several thousand gradient steps: epochs x cells / batch size)",
    )
    scvi_batch_size: int = Field(128, ge=16)
    scvi_kl_warmup_epochs: int = Field(
        400,
        ge=0,
        description="epochs over which the KL term's weight rises to 1 (scvi-tools' "
        "default 400: with fewer training epochs the weight never reaches 1)",
    )
    seed: int = 0


class GraphConfig(_Frozen):
    """The graph stage: kNN graph, Leiden clusters, UMAP."""

    use_rep: Literal["X_pca_harmony", "X_scvi", "X_pca"] = Field(
        "X_pca_harmony", description="the embedding the graph is built on"
    )
    n_neighbors: int = Field(15, ge=2)
    resolutions: list[float] = Field(
        default_factory=lambda: [0.5, 1.0], description="Leiden resolutions, one obs column each"
    )
    umap_max_cells: int = Field(
        100_000,
        ge=1000,
        description="above this many cells UMAP is fitted on a subsample stratified by sample "
        "and the other cells are placed by their nearest fitted cells",
    )
    leiden_max_cells: int = Field(
        250_000,
        ge=1000,
        description="above this many cells Leiden runs on a subsample stratified by sample "
        "(its own kNN graph) and the other cells take their neighbours' most common cluster",
    )
    exact_knn_below: int = Field(
        50_000,
        ge=0,
        description="exact neighbours below this many cells, faiss's inverted-file index above",
    )
    seed: int = 0

    @field_validator("resolutions")
    @classmethod
    def _resolutions(cls, value: list[float]) -> list[float]:
        if not value or any(r <= 0 for r in value):
            msg = f"expected one or more positive resolutions, got {value}"
            raise ValueError(msg)
        return value


class RunConfig(_Frozen):
    """Everything ``immunoprofile`` reads from a config file."""

    workdir: Path = Field(
        Path("work"), description="folder of the run's stores, results, logs and report"
    )
    samplesheet: Path | None = Field(
        None,
        description="the samplesheet CSV (docs/contracts.md); `run --samplesheet` overrides it",
    )
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    simulate: SimulationConfig = Field(default_factory=SimulationConfig)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    qc: QCConfig = Field(default_factory=QCConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    integrate: IntegrateConfig = Field(default_factory=IntegrateConfig)
    graph: GraphConfig = Field(default_factory=GraphConfig)
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig)
    abundance: AbundanceConfig = Field(default_factory=AbundanceConfig)
    neighbourhoods: NeighbourhoodsConfig = Field(default_factory=NeighbourhoodsConfig)
    expression: ExpressionConfig = Field(default_factory=ExpressionConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    power: PowerConfig = Field(default_factory=PowerConfig)
    add_batch: AddBatchConfig = Field(default_factory=AddBatchConfig)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys the schema allows in the mapping at ``loc`` (empty when unknown)."""
    model: Any = RunConfig
    for part in loc:
        if isinstance(part, int) or not (
            isinstance(model, type) and issubclass(model, BaseModel) and part in model.model_fields
        ):
            return []
        annotation = model.model_fields[part].annotation
        candidates = [annotation, *typing.get_args(annotation)]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _describe(error: ErrorDetails) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        *parent, name = error["loc"]
        close = difflib.get_close_matches(str(name), _fields_at(tuple(parent)), n=1, cutoff=0.6)
        hint = f" (did you mean '{'.'.join([*map(str, parent), close[0]])}'?)" if close else ""
        return f"unknown key '{key}'{hint}"
    if kind == "missing":
        return f"missing required key '{key}'"
    got = error.get("input")
    expected = error["msg"].removeprefix("Value error, ")
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error":
        return f"key '{key}': {expected} (got {got!r})"
    return f"key '{key}': {expected}"


def parse_config(data: Any, *, source: str = "<config>") -> RunConfig:
    """Validate a mapping against the schema; all problems are reported together."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        msg = (
            f"{source}: expected a YAML mapping of keys at the top level, got {type(data).__name__}"
        )
        raise ConfigError(msg)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        msg = f"{source}: invalid configuration: " + "; ".join(problems)
        raise ConfigError(msg) from None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a YAML run config."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        msg = f"config file {path} does not exist"
        raise ConfigError(msg) from None
    except OSError as exc:
        msg = f"config file {path} cannot be read: {exc.strerror}"
        raise ConfigError(msg) from None
    try:
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        msg = f"{path}: not valid YAML: {exc}"
        raise ConfigError(msg) from None
    except _DuplicateKeys as exc:
        msg = f"{path}: " + "; ".join(exc.args[0]) + " (each key once; merge the two)"
        raise ConfigError(msg) from None
    return parse_config(data, source=str(path))


class _DuplicateKeys(Exception):
    pass


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (PyYAML keeps the
    last silently: a second `annotate:` section would replace the first)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                self.duplicates.append(
                    f"duplicate key '{key}' at line {line} (first at line {seen[key]})"
                )
            else:
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    loader = _StrictLoader(text)
    try:
        data = loader.get_single_data()
    finally:
        loader.dispose()
    if loader.duplicates:
        raise _DuplicateKeys(loader.duplicates)
    return data

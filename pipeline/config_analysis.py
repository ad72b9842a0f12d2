"""Configuration of the analysis stages (annotate, abundance) and of the power command;
`pipeline.config.RunConfig` gathers them with the rest."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .labels import B_SUBSETS, LINEAGES

Method = Literal["glmm", "propeller"]


def _both_methods() -> list[Method]:
    return ["glmm", "propeller"]


def _glmm_only() -> list[Method]:
    return ["glmm"]


class FrozenModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReferenceConfig(FrozenModel):
    """A labelled AnnData whose labels are transferred to the cohort by a classifier."""

    path: Path = Field(description="an .h5ad or AnnData .zarr with raw counts and labels")
    lineage_key: str | None = Field("lineage", description="obs column with lineage labels")
    b_subset_key: str | None = Field("b_subset", description="obs column with B-subset labels")
    layer: str | None = Field(None, description="layer with raw counts (default: X)")
    max_cells: int = Field(30_000, ge=100, description="cells the classifier is trained on")
    n_genes_per_label: int = Field(
        50, ge=5, description="top-ranked reference genes per label used as features"
    )


class AnnotateConfig(FrozenModel):
    """The annotate stage: lineages, then B-cell subsets, from a marker file."""

    markers: Path | None = Field(
        None, description="marker file (default: the packaged pipeline/annotate/markers.yaml)"
    )
    min_confidence: float = Field(
        0.5, ge=0, le=1, description="cells whose best label is less probable are unassigned"
    )
    graph_weight: float = Field(
        0.5, ge=0, le=1, description="weight of the kNN-graph neighbours' lineage probabilities"
    )
    b_consensus: Literal["product", "linear"] = Field(
        "product",
        description="how a B cell's subset posterior is combined with its B-graph "
        "neighbours' evidence: product (own x neighbours ** b_neighbour_exponent, "
        "renormalized) or linear (mixed with weight b_graph_weight)",
    )
    b_neighbour_exponent: float = Field(
        2.5, ge=0, le=10, description="exponent on the neighbours' evidence (product; 0: none)"
    )
    b_graph_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="weight of the B-graph neighbours' evidence (linear; 0: none)",
    )
    b_graph: Literal["b_cells", "cohort"] = Field(
        "b_cells",
        description="the B-subset consensus graph: the B cells' own kNN graph (their "
        "highly variable genes and PCs) or the cohort's integrated graph",
    )
    min_feature_fraction: float = Field(
        0.5, gt=0, le=1, description="a label is modelled only with this share of its markers"
    )
    min_marker_support: float = Field(
        0.5,
        ge=0,
        le=1,
        description="cells of a label whose fitted model has fewer than this share of its "
        "markers at twice the background or more are unassigned",
    )
    fit_max_cells: int = Field(
        20_000,
        ge=100,
        description="cells each marker model is fitted on (stratified by sample); every "
        "cell is then scored with the fitted model",
    )
    max_iter: int = Field(100, ge=1)
    reference: ReferenceConfig | None = None
    seed: int = 0


class AbundanceConfig(FrozenModel):
    """The abundance stage: counts, the longitudinal models and their contrasts."""

    time: Literal["factor", "continuous"] = Field(
        "factor", description="timepoint as a factor (0/3/6 months) or as continuous months"
    )
    methods: list[Method] = Field(
        default_factory=_both_methods,
        description="binomial GLMM (primary) and the propeller-style linear mixed model",
    )
    transform: Literal["logit", "asin"] = Field(
        "logit", description="propeller's transformation of the proportions"
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="q-value threshold in plots and summary")
    labels: Literal["hard", "draws"] = Field(
        "draws",
        description="hard: every cell counts as its called label; draws: the models are "
        "fitted on label sets drawn from the per-cell label probabilities and combined by "
        "Rubin's rules, so intervals widen where labels are uncertain",
    )
    label_draws: int = Field(
        10, ge=2, le=200, description="number of label draws when labels is 'draws'"
    )
    seed: int = Field(0, description="seed of the label draws")

    @field_validator("methods")
    @classmethod
    def _some_method(cls, value: list[str]) -> list[str]:
        if not value:
            msg = "expected at least one of 'glmm', 'propeller'"
            raise ValueError(msg)
        return list(dict.fromkeys(value))


class NeighbourhoodsConfig(FrozenModel):
    """The neighbourhoods stage: label-free abundance on kNN-graph neighbourhoods (Milo)."""

    prop: float = Field(
        0.05,
        gt=0,
        le=1,
        description="share of the QC-passed cells drawn as candidate index cells (refined "
        "sampling merges some, so the neighbourhoods are fewer)",
    )
    max_index_cells: int | None = Field(
        50_000,
        ge=1,
        description="the most candidate index cells (prop of the cells, at most this many; "
        "the study's ~850k QC-passed cells draw 42,500): a pooled cohort of millions of cells "
        "keeps ~this many neighbourhoods, each larger with more samples, so the fits grow "
        "with the samples rather than with cells x samples; null: prop alone",
    )
    k: int | None = Field(
        None,
        ge=2,
        description="cells per neighbourhood (the index cell and its nearest cells in the "
        "graph's embedding); null: 5 per sample (Milo's rule of thumb), at most max_k and "
        "max_share of the cells, at least 1 per sample and the graph's n_neighbors",
    )
    max_k: int = Field(500, ge=2, description="the largest neighbourhood when k is null")
    max_share: float = Field(
        0.002,
        gt=0,
        le=1,
        description="the largest neighbourhood as a share of the QC-passed cells when k is "
        "null (so that a rare population's neighbourhoods stay its own: 200 cells at 100k)",
    )
    time: Literal["factor", "continuous"] = Field(
        "factor", description="timepoint as a factor (0/3/6 months) or as continuous months"
    )
    batch_covariate: bool = Field(
        True,
        description="processing batch as a fixed covariate where the design allows it (what "
        "integration leaves of a batch in the embedding shifts neighbourhoods' composition)",
    )
    alpha: float = Field(
        0.1, gt=0, lt=1, description="spatial FDR threshold in the plots and summary"
    )
    chunk: int = Field(250, ge=1, description="neighbourhoods per task on the cluster")
    seed: int = Field(0, description="seed of the index cells' sampling")
    lineages: list[str] = Field(
        default_factory=lambda: ["B"],
        description="lineages whose cells are also cut into neighbourhoods of their own, "
        "each tested out of the sample's cells of that lineage (abundance's B denominator; "
        "tests.csv's denominator column): a shift within B cells is diluted on the PBMC "
        "scale by the B cells' own variation between patients; [] for none",
    )
    lineage_integrate_by: Literal["patient_id", "sample_id"] | None = Field(
        "patient_id",
        description="Harmony on a lineage's PCs over this key before its neighbourhoods are "
        "cut: each patient's cells of a subset otherwise sit apart, and a neighbourhood "
        "holds a few patients' cells (docs/benchmarks.md); null: the graph's embedding",
    )
    lineage_harmony_max_cells: int = Field(
        30_000,
        ge=1000,
        description="above this many cells of a lineage, its Harmony is fitted on a "
        "subsample stratified by the integrate_by key (each key's cells topped up to 500, "
        "or all of them when fewer) and the other cells are corrected by the fitted model, "
        "in chunks: the driver's memory stays that of the fit, about this many cells plus "
        "500 per key",
    )
    lineage_max_share: float = Field(
        0.01,
        gt=0,
        le=1,
        description="a lineage's largest neighbourhood as a share of its cells (5 cells per "
        "sample below it)",
    )

    @field_validator("lineages")
    @classmethod
    def _known_lineages(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in LINEAGES]
        if unknown:
            msg = f"unknown lineages {unknown}; expected names from {list(LINEAGES)}"
            raise ValueError(msg)
        return list(dict.fromkeys(value))


class ExpressionConfig(FrozenModel):
    """The expression stage: pseudobulk per sample x cell type and NB GLM contrasts."""

    cell_types: list[str] = Field(
        default_factory=list,
        description="lineages and B subsets to test (e.g. [B, DN2, naive]); empty: all",
    )
    min_cells: int = Field(
        10, ge=1, description="fewest cells of a sample x cell type kept in the models"
    )
    min_samples_per_group: int = Field(
        2, ge=1, description="fewest kept samples of responders and of non-responders per cell type"
    )
    min_count: float = Field(10, ge=0, description="edgeR filterByExpr's min.count")
    min_total_count: float = Field(15, ge=0, description="edgeR filterByExpr's min.total.count")
    batch_covariate: bool = Field(
        True, description="processing batch as a covariate where the design allows it"
    )
    alpha: float = Field(0.05, gt=0, lt=1, description="q-value threshold in the summary")
    programs: Path | None = Field(
        None, description="gene program YAML (default: the package's programs.yaml)"
    )

    @field_validator("cell_types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        allowed = [*LINEAGES, *B_SUBSETS]
        unknown = [v for v in value if v not in allowed]
        if unknown:
            msg = f"unknown cell types {unknown}; expected names from {allowed}"
            raise ValueError(msg)
        return list(dict.fromkeys(value))


FeatureSet = Literal["composition", "programs"]


def _composition_only() -> list[FeatureSet]:
    return ["composition"]


class PredictConfig(FrozenModel):
    """The predict stage: non-response from the baseline samples, penalized logistic
    regression under patient-level nested cross-validation."""

    features: list[FeatureSet] = Field(
        default_factory=_composition_only,
        description=(
            "feature sets of the model (composition, programs); with programs, a "
            "composition-only model is fitted beside it for comparison"
        ),
    )
    program_cell_types: list[str] = Field(
        default_factory=lambda: ["B"],
        description="cell types whose program scores are features (with 'programs')",
    )
    pseudocount: float = Field(0.5, gt=0, description="added to the counts before the log-ratio")
    folds: int = Field(5, ge=2, description="outer cross-validation folds")
    repeats: int = Field(5, ge=1, description="outer cross-validation repeats")
    loo_below: int = Field(
        20, ge=0, description="leave-one-out instead of K-fold below this many labelled patients"
    )
    penalties: list[float] = Field(
        default_factory=lambda: [
            0.001,
            0.00316,
            0.01,
            0.0316,
            0.1,
            0.316,
            1.0,
            3.16,
            10.0,
            31.6,
            100.0,
        ],
        description="the inverse L2 penalties (scikit-learn's C) the inner loop chooses from",
    )
    permutations: int = Field(1000, ge=0, description="label shuffles for the permutation p-value")
    bootstrap: int = Field(2000, ge=100, description="resamples for the AUC's interval")
    min_patients_per_class: int = Field(
        5, ge=2, description="fewest labelled patients of each response for the stage to fit"
    )
    seed: int = 0

    @field_validator("program_cell_types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        allowed = [*LINEAGES, *B_SUBSETS]
        unknown = [v for v in value if v not in allowed]
        if unknown:
            msg = f"unknown cell types {unknown}; expected names from {allowed}"
            raise ValueError(msg)
        return list(dict.fromkeys(value))

    @field_validator("features")
    @classmethod
    def _some_features(cls, value: list[str]) -> list[str]:
        if "composition" not in value:
            msg = "expected 'composition' among the feature sets (the reference model uses it)"
            raise ValueError(msg)
        return list(dict.fromkeys(value))


class PowerConfig(FrozenModel):
    """``immunoprofile power``: type-I error under the simulator's null and power for a
    planted difference, from count tables simulated with the config's ``simulate``."""

    n_cohorts: int = Field(1000, ge=10, description="null cohorts (of simulate.n_patients)")
    power_cohorts: int = Field(500, ge=10, description="cohorts per patient number for power")
    patients: list[int] = Field(
        default_factory=lambda: [10, 20, 30, 44, 60], description="cohort sizes for power"
    )
    cell_type: str = Field("DN2", description="the cell type given the planted difference")
    denominator: Literal["B", "PBMC"] = Field(
        "B", description="its denominator (lineages: PBMC only)"
    )
    effect: float = Field(0.8, description="non-responders minus responders, log-odds")
    alpha: float = Field(0.05, gt=0, lt=1)
    methods: list[Method] = Field(default_factory=_glmm_only)
    cohorts_per_task: int = Field(20, ge=1, description="cohorts simulated and fitted per task")
    seed: int = 0

    @field_validator("cell_type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        allowed = [*LINEAGES, *B_SUBSETS]
        if value not in allowed:
            msg = f"unknown cell type {value!r}; expected one of {allowed}"
            raise ValueError(msg)
        return value

    @field_validator("patients")
    @classmethod
    def _sizes(cls, value: list[int]) -> list[int]:
        if not value or any(n < 4 for n in value):
            msg = f"expected cohort sizes of at least 4 patients, got {value}"
            raise ValueError(msg)
        return sorted(set(value))

    @model_validator(mode="after")
    def _denominator_fits(self) -> PowerConfig:
        if self.cell_type in LINEAGES and self.denominator != "PBMC":
            msg = f"lineage {self.cell_type!r} is tested within PBMC; set power.denominator: PBMC"
            raise ValueError(msg)
        return self


class AddBatchConfig(FrozenModel):
    """``immunoprofile add-batch``: mapping new samples into an analysed cohort."""

    poor_mapping_ratio: float = Field(
        1.5,
        gt=1,
        description="a new sample maps poorly when its cells' median distance to their "
        "nearest reference cells exceeds this multiple of the reference cells' own",
    )
    poor_confidence_drop: float = Field(
        0.15,
        gt=0,
        lt=1,
        description="... or when its cells' median lineage confidence is this much below "
        "the cohort cells' (cells that resemble no cohort cell type: Harmony mapping "
        "moves a whole batch onto the reference, so distances alone can miss them)",
    )

"""Seeded synthetic PBMC cohorts with planted truth: the project's test oracle."""

from ._cohort import SimulationResult, simulate_cohort, simulate_sample
from ._design import CohortDesign, SampleSpec, design_cohort, true_contrasts
from ._expression import ExpressionModel, GeneUniverse, build_expression_model, build_gene_universe
from ._programs import B_SUBSETS, CELL_TYPES, LINEAGES
from ._pseudobulk import simulate_planted_pseudobulk, simulate_pseudobulk
from ._scoring import LabelAccuracy, label_accuracy, read_truth_cells
from ._tables import simulate_count_table

__all__ = [
    "B_SUBSETS",
    "CELL_TYPES",
    "LINEAGES",
    "CohortDesign",
    "ExpressionModel",
    "GeneUniverse",
    "LabelAccuracy",
    "SampleSpec",
    "SimulationResult",
    "build_expression_model",
    "build_gene_universe",
    "design_cohort",
    "label_accuracy",
    "read_truth_cells",
    "simulate_cohort",
    "simulate_count_table",
    "simulate_planted_pseudobulk",
    "simulate_pseudobulk",
    "simulate_sample",
    "true_contrasts",
]

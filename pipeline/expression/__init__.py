"""Differential expression within cell types: pseudobulk per sample x cell type on the
cluster, negative-binomial GLMs (PyDESeq2) with the study's contrasts."""

from ._kernels import filter_by_expr, group_sums, hat_values
from ._models import CellTypeDesigns, FitDesign, cell_type_designs, fit_deseq2
from ._plots import program_trajectories, sample_order, top_genes_heatmap, volcano_grid
from ._power import POWER_COLUMNS, TARGETS, planted_changes, power_cohort
from ._programs import Programs, fit_program_models, load_programs, program_scores
from ._pseudobulk import gene_names, pseudobulk_counts, pseudobulk_groups, sample_rows
from ._run import expression_digest_inputs, pseudobulk_anndata, run_expression

__all__ = [
    "POWER_COLUMNS",
    "TARGETS",
    "CellTypeDesigns",
    "FitDesign",
    "Programs",
    "cell_type_designs",
    "expression_digest_inputs",
    "filter_by_expr",
    "fit_deseq2",
    "fit_program_models",
    "gene_names",
    "group_sums",
    "hat_values",
    "load_programs",
    "planted_changes",
    "power_cohort",
    "program_scores",
    "program_trajectories",
    "pseudobulk_anndata",
    "pseudobulk_counts",
    "pseudobulk_groups",
    "run_expression",
    "sample_order",
    "sample_rows",
    "top_genes_heatmap",
    "volcano_grid",
]

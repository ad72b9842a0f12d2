"""Differential abundance: the sample x cell-type table, longitudinal models of
response and time (binomial GLMM and propeller), their contrasts, calibration and power,
and the plots of the report."""

from ._design import (
    AbundanceDesignError,
    ModelDesign,
    contrast_names,
    estimable_design,
    model_design,
    with_covariate,
)
from ._glmm import GlmmFit, fit_binomial_glmm
from ._models import (
    AbundanceResult,
    bh_qvalues,
    concordance,
    contrast_table,
    fit_abundance_models,
    model_tables,
)
from ._plots import composition_plot, forest_grid, forest_plot, trajectory_plot
from ._power import TYPE1_TARGET, PowerResult, power_plot, run_power
from ._propeller import PropellerFit, fit_lmm, fit_propeller, transformed_proportions
from ._run import abundance_digest_inputs, baseline_findings, run_abundance
from ._table import LEVEL_TYPES, abundance_counts, counts_dataset

__all__ = [
    "LEVEL_TYPES",
    "TYPE1_TARGET",
    "AbundanceDesignError",
    "AbundanceResult",
    "GlmmFit",
    "ModelDesign",
    "PowerResult",
    "PropellerFit",
    "abundance_counts",
    "abundance_digest_inputs",
    "baseline_findings",
    "bh_qvalues",
    "composition_plot",
    "concordance",
    "contrast_names",
    "contrast_table",
    "counts_dataset",
    "estimable_design",
    "fit_abundance_models",
    "fit_binomial_glmm",
    "fit_lmm",
    "fit_propeller",
    "forest_grid",
    "forest_plot",
    "model_design",
    "model_tables",
    "power_plot",
    "run_abundance",
    "run_power",
    "trajectory_plot",
    "transformed_proportions",
    "with_covariate",
]

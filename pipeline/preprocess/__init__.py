"""Out-of-core preprocessing: normalization, highly variable genes, PCA."""

from ._models import PcaLoadings, clip_values, pca_from_gram, seurat_v3_table
from ._run import moments_per_batch, run_preprocess
from ._stage import PreprocessResult, preprocess_cohort, project_cells

__all__ = [
    "PcaLoadings",
    "PreprocessResult",
    "clip_values",
    "moments_per_batch",
    "pca_from_gram",
    "preprocess_cohort",
    "project_cells",
    "run_preprocess",
    "seurat_v3_table",
]

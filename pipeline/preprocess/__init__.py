"""Out-of-core preprocessing: normalization, highly variable genes, PCA."""

from ._kernels import Moments
from ._models import clip_values, pca_from_gram, seurat_v3_table
from ._stage import PreprocessResult, preprocess_cohort

__all__ = [
    "Moments",
    "PreprocessResult",
    "clip_values",
    "pca_from_gram",
    "preprocess_cohort",
    "seurat_v3_table",
]

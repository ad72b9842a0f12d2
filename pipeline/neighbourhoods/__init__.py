"""Label-free differential abundance on neighbourhoods of the kNN graph (Milo-style):
refined sampling of index cells, counts per sample, the project's binomial GLMM with the
study's design and contrasts per neighbourhood, spatial FDR."""

from ._kernels import (
    Neighbourhoods,
    draw_cells,
    majority_labels,
    make_neighbourhoods,
    members_within,
    membership_matrix,
    refined_index_cells,
    sample_counts,
    sample_index_cells,
    spatial_fdr,
)
from ._model import ChunkFits, estimable_contrasts, fit_neighbourhoods
from ._plots import beeswarm_plot, nhood_groups, nhood_umap_plot
from ._run import (
    TEST_COLUMNS,
    neighbourhood_size,
    neighbourhoods_digest_inputs,
    run_neighbourhoods,
)

__all__ = [
    "TEST_COLUMNS",
    "ChunkFits",
    "Neighbourhoods",
    "beeswarm_plot",
    "draw_cells",
    "estimable_contrasts",
    "fit_neighbourhoods",
    "majority_labels",
    "make_neighbourhoods",
    "members_within",
    "membership_matrix",
    "neighbourhood_size",
    "neighbourhoods_digest_inputs",
    "nhood_groups",
    "nhood_umap_plot",
    "refined_index_cells",
    "run_neighbourhoods",
    "sample_counts",
    "sample_index_cells",
    "spatial_fdr",
]

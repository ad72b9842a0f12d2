"""The B cells' own kNN graph, for the B-subset consensus.

The cohort's integrated graph is built from PCs of all PBMC, whose variance is the
differences between lineages; B subsets that differ in a few genes (DN1 and switched
memory: CD27 and a program of their own) are neighbours there (on the simulator's
cohorts only a quarter of a DN1 cell's neighbours were DN1). Highly variable genes and PCs
of the B cells alone separate them (seven in ten), and mixing each cell's subset
posteriors with those neighbours' then adds the evidence of the genes that no marker file
lists. Computed out of core with the preprocess stage's functions (the B cells' counts are
read chunk by chunk on the workers) and the graph stage's kNN.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from distributed import Client

from ..cohort import Counts
from ..config import PreprocessConfig
from ..graph import knn_graphs, nearest_neighbors
from ..preprocess import preprocess_cohort

# HVGs and PCs of the B cells; exact X'X (a subsample's axes need a third pass over the
# cohort's chunks here, without a scratch folder for the cells' coordinates)
B_GRAPH = PreprocessConfig(n_top_genes=1000, n_comps=20, pca_max_cells=None)
B_NEIGHBORS = 15
B_GRAPH_MIN_CELLS = 200  # fewer B cells: the integrated graph restricted to them


def b_cell_graph(
    cells: Counts,
    *,
    client: Client,
    members: np.ndarray,
    total_counts: np.ndarray,
    seed: int = 0,
) -> sp.csr_matrix:
    """kNN connectivities among the cells in ``members`` (a boolean mask over the lazily
    opened view ``cells``; rows and columns in their order), from their own 1,000 highly
    variable genes (ranked per processing batch: obs ``batch``, else ``sample_id``) and
    20 PCs."""
    members = np.asarray(members, dtype=bool)
    key = "batch" if "batch" in cells.obs else "sample_id"
    result = preprocess_cohort(
        cells, client=client, keep=members, total_counts=total_counts,
        params=B_GRAPH.model_copy(update={"hvg_batch_key": key}),
    )  # fmt: skip
    x = result.pca[members].compute()  # only the members' rows come to the driver
    nn = nearest_neighbors(x, min(B_NEIGHBORS, len(x)), seed=seed)
    return knn_graphs(nn, seed=seed)[1]

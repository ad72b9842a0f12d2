"""Neighbourhood graph, Leiden clusters and UMAP of the integrated embedding; new cells
placed in an existing graph."""

from ._knn import (
    Neighbors,
    ivf_centroids,
    ivf_training_rows,
    knn_graphs,
    n_lists_for,
    nearest_neighbors,
    neighbour_blocks,
    neighbours_of,
    self_first,
)
from ._layout import leiden_clusters, place_by_neighbors, umap_layout
from ._query import QueryNeighbors, place_query, query_edges, query_neighbors, vote_clusters
from ._run import run_graph
from ._sharded import BLOCK_CELLS, ShardedGraph, Shards, build_graph_on_workers, load_shards
from ._stage import GraphResult, build_graph

__all__ = [
    "BLOCK_CELLS",
    "GraphResult",
    "Neighbors",
    "QueryNeighbors",
    "ShardedGraph",
    "Shards",
    "build_graph",
    "build_graph_on_workers",
    "ivf_centroids",
    "ivf_training_rows",
    "knn_graphs",
    "leiden_clusters",
    "load_shards",
    "n_lists_for",
    "nearest_neighbors",
    "neighbour_blocks",
    "neighbours_of",
    "place_by_neighbors",
    "place_query",
    "query_edges",
    "query_neighbors",
    "run_graph",
    "self_first",
    "umap_layout",
    "vote_clusters",
]

"""Neighbourhood graph, Leiden clusters and UMAP of the integrated embedding; new cells
placed in an existing graph."""

from ._knn import (
    Neighbors,
    ivf_centroids,
    ivf_training_rows,
    knn_graphs,
    list_assignment,
    n_lists_for,
    nearest_neighbors,
    neighbours_of,
    search_shards,
    self_first,
)
from ._layout import leiden_clusters, place_by_neighbors, umap_layout
from ._query import QueryNeighbors, place_query, query_edges, query_neighbors, vote_clusters
from ._run import run_graph
from ._stage import GraphResult, build_graph

__all__ = [
    "GraphResult",
    "Neighbors",
    "QueryNeighbors",
    "build_graph",
    "ivf_centroids",
    "ivf_training_rows",
    "knn_graphs",
    "leiden_clusters",
    "list_assignment",
    "n_lists_for",
    "nearest_neighbors",
    "neighbours_of",
    "place_by_neighbors",
    "place_query",
    "query_edges",
    "query_neighbors",
    "run_graph",
    "search_shards",
    "self_first",
    "umap_layout",
    "vote_clusters",
]

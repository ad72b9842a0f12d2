"""Neighbourhood graph, Leiden clusters and UMAP of the integrated embedding."""

from ._knn import Neighbors, knn_graphs, nearest_neighbors
from ._layout import leiden_clusters, place_by_neighbors, umap_layout
from ._stage import GraphResult, build_graph

__all__ = [
    "GraphResult",
    "Neighbors",
    "build_graph",
    "knn_graphs",
    "leiden_clusters",
    "nearest_neighbors",
    "place_by_neighbors",
    "umap_layout",
]

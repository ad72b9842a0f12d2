"""Annotation: immune lineages, then B-cell subsets, from versioned marker sets."""

from ._bgraph import b_cell_graph
from ._markers import LEVELS, FeatureMap, MarkerSet, Program, feature_map, load_markers
from ._model import (
    Consensus,
    MarkerModel,
    fit_marker_model,
    graph_consensus,
    marker_support,
    posteriors,
    product_consensus,
)
from ._plots import marker_dotplot
from ._query import annotate_query, stored_model
from ._reference import (
    ReferenceClassifier,
    agreement,
    read_reference,
    reference_symbols,
    train_classifier,
    transfer_labels,
)
from ._run import annotate_digest_inputs, cluster_summary, run_annotate
from ._stage import AnnotationResult, LevelCall, annotate_cohort, annotate_counts
from ._vocabulary import Vocabularies, cell_type_columns, compatible_fraction, load_vocabularies

__all__ = [
    "LEVELS",
    "AnnotationResult",
    "Consensus",
    "FeatureMap",
    "LevelCall",
    "MarkerModel",
    "MarkerSet",
    "Program",
    "ReferenceClassifier",
    "Vocabularies",
    "agreement",
    "annotate_cohort",
    "annotate_counts",
    "annotate_digest_inputs",
    "annotate_query",
    "b_cell_graph",
    "cell_type_columns",
    "cluster_summary",
    "compatible_fraction",
    "feature_map",
    "fit_marker_model",
    "graph_consensus",
    "load_markers",
    "load_vocabularies",
    "marker_dotplot",
    "marker_support",
    "posteriors",
    "product_consensus",
    "read_reference",
    "reference_symbols",
    "run_annotate",
    "stored_model",
    "train_classifier",
    "transfer_labels",
]

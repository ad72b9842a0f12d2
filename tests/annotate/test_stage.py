"""The annotate stage's choices from its settings."""

from __future__ import annotations

from pipeline.annotate import Consensus
from pipeline.annotate._stage import level_consensus
from pipeline.config import AnnotateConfig


def test_levels_take_their_consensus_from_the_settings() -> None:
    """Lineages mix linearly with their neighbours' posteriors; B subsets combine with
    their neighbours' evidence, by a product unless the settings ask for the linear mix."""
    default = AnnotateConfig()
    assert level_consensus("lineage", default) == Consensus("linear", 0.5)
    assert level_consensus("b_subset", default) == Consensus("product", 2.5, evidence=True)
    linear = AnnotateConfig(b_consensus="linear", b_graph_weight=0.8)
    assert level_consensus("b_subset", linear) == Consensus("linear", 0.8, evidence=True)
    assert not level_consensus("b_subset", AnnotateConfig(b_neighbour_exponent=0)).active

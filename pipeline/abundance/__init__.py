"""Differential abundance (issue #7). Built so far: the abundance table."""

from ._table import LEVEL_TYPES, abundance_counts, counts_dataset

__all__ = ["LEVEL_TYPES", "abundance_counts", "counts_dataset"]

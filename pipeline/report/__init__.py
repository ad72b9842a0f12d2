"""The report: figures and a self-contained HTML page (no I/O but what callers pass)."""

from ._figures import confidence_histograms, qc_distributions, umap_panels
from ._html import figure, page, png_file, table

__all__ = [
    "confidence_histograms",
    "figure",
    "page",
    "png_file",
    "qc_distributions",
    "table",
    "umap_panels",
]

"""The report: its sections, figures and the self-contained HTML page."""

from ._figures import confidence_histograms, qc_distributions, umap_panels
from ._html import figure, page, png_file, table
from ._run import run_report

__all__ = [
    "confidence_histograms",
    "figure",
    "page",
    "png_file",
    "qc_distributions",
    "run_report",
    "table",
    "umap_panels",
]

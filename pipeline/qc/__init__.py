"""Quality control: per-cell metrics, per-sample adaptive thresholds, doublets."""

from ._doublets import DoubletScores, scrublet_scores
from ._kernels import METRICS, gene_sets, qc_metrics
from ._stage import QCResult, SampleQC, compute_qc, gene_moments, qc_sample
from ._thresholds import QCRules, qc_flags, qc_summary

__all__ = [
    "METRICS",
    "DoubletScores",
    "QCResult",
    "QCRules",
    "SampleQC",
    "compute_qc",
    "gene_moments",
    "gene_sets",
    "qc_flags",
    "qc_metrics",
    "qc_sample",
    "qc_summary",
    "scrublet_scores",
]

"""Quality control: per-cell metrics, per-sample adaptive thresholds, doublets."""

from ._kernels import METRICS, gene_sets, qc_metrics
from ._stage import QCResult, compute_qc, score_doublets
from ._thresholds import QCRules, qc_flags, qc_summary

__all__ = [
    "METRICS",
    "QCResult",
    "QCRules",
    "compute_qc",
    "gene_sets",
    "qc_flags",
    "qc_metrics",
    "qc_summary",
    "score_doublets",
]

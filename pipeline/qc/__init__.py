"""Quality control: per-cell metrics, per-sample adaptive thresholds, doublets."""

from ._doublets import DoubletScores, scrublet_scores
from ._kernels import METRICS, gene_sets, qc_metrics
from ._run import MOMENT_SUM, MOMENT_SUMSQ, qc_cells, run_qc
from ._stage import QCResult, SampleQC, compute_qc, gene_moments, qc_sample
from ._thresholds import qc_flags, qc_summary

__all__ = [
    "METRICS",
    "MOMENT_SUM",
    "MOMENT_SUMSQ",
    "DoubletScores",
    "QCResult",
    "SampleQC",
    "compute_qc",
    "gene_moments",
    "gene_sets",
    "qc_cells",
    "qc_flags",
    "qc_metrics",
    "qc_sample",
    "qc_summary",
    "run_qc",
    "scrublet_scores",
]

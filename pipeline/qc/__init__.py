"""Quality control: per-cell metrics, per-sample adaptive thresholds, doublets."""

from ._doublets import DoubletScores, scrublet_scores
from ._kernels import METRICS, gene_sets, qc_metrics
from ._run import MOMENT_SUM, MOMENT_SUMSQ, qc_cells, run_qc
from ._stage import (
    LazyQC,
    QCResult,
    SampleQC,
    compute_qc,
    gene_moments,
    qc_columns,
    qc_sample,
    sample_qc_frame,
)
from ._thresholds import qc_flags, qc_summary

__all__ = [
    "METRICS",
    "MOMENT_SUM",
    "MOMENT_SUMSQ",
    "DoubletScores",
    "LazyQC",
    "QCResult",
    "SampleQC",
    "compute_qc",
    "gene_moments",
    "gene_sets",
    "qc_cells",
    "qc_columns",
    "qc_flags",
    "qc_metrics",
    "qc_sample",
    "qc_summary",
    "run_qc",
    "sample_qc_frame",
    "scrublet_scores",
]

"""Ingestion: samplesheet to validated, chunked AnnData-Zarr stores, one per sample."""

from ._readers import Header, read_counts, read_header
from ._sample import ingest_sample, store_is_current
from ._samplesheet import REQUIRED_COLUMNS, SampleRow, read_samplesheet
from ._stage import SAMPLES_DIR, STAGE_RECORD, IngestResult, ingest_samples, sample_store_path

__all__ = [
    "REQUIRED_COLUMNS",
    "SAMPLES_DIR",
    "STAGE_RECORD",
    "Header",
    "IngestResult",
    "SampleRow",
    "ingest_sample",
    "ingest_samples",
    "read_counts",
    "read_header",
    "read_samplesheet",
    "sample_store_path",
    "store_is_current",
]

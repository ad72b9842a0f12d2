"""Ingestion: samplesheet to validated, chunked AnnData-Zarr stores, one per sample."""

from ._readers import Header, read_counts, read_header
from ._run import run_ingest
from ._sample import STORE_FORMAT, ingest_sample, store_is_current
from ._samplesheet import REQUIRED_COLUMNS, SampleRow, read_samplesheet
from ._stage import IngestResult, ingest_samples

__all__ = [
    "REQUIRED_COLUMNS",
    "STORE_FORMAT",
    "Header",
    "IngestResult",
    "SampleRow",
    "ingest_sample",
    "ingest_samples",
    "read_counts",
    "read_header",
    "read_samplesheet",
    "run_ingest",
    "store_is_current",
]

"""``immunoprofile add-batch``: new samples mapped into an analysed cohort as a layer next
to cohort.zarr (the command, the mapping, the batch's layer and its change report)."""

from ._changes import (
    moved_contrasts,
    moved_gene_calls,
    sample_table,
    write_changes,
    write_expression_changes,
    write_prediction_changes,
)
from ._command import add_batch, check_analysed, refit_samplesheet, remap_stale_batches
from ._layer import BATCH_VERSION, batch_digest, map_batch
from ._mapping import Reference, map_cells, read_reference

__all__ = [
    "BATCH_VERSION",
    "Reference",
    "add_batch",
    "batch_digest",
    "check_analysed",
    "map_batch",
    "map_cells",
    "moved_contrasts",
    "moved_gene_calls",
    "read_reference",
    "refit_samplesheet",
    "remap_stale_batches",
    "sample_table",
    "write_changes",
    "write_expression_changes",
    "write_prediction_changes",
]

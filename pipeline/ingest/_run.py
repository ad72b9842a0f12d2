"""The ingest stage in a workdir: the samplesheet's samples to their stores."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ImmunoprofileError
from ._samplesheet import read_samplesheet
from ._stage import ingest_samples

if TYPE_CHECKING:
    from ..stages import StageContext


def run_ingest(ctx: StageContext) -> str:
    """Write or keep ``samples/<sample_id>.zarr`` for every row and ``ingest.json``."""
    samplesheet = ctx.cfg.samplesheet
    if samplesheet is None:
        msg = "no samplesheet: set 'samplesheet' in the config or pass --samplesheet"
        raise ImmunoprofileError(msg)
    result = ingest_samples(
        read_samplesheet(samplesheet),
        workdir=ctx.workdir,
        client=ctx.cluster,
        gene_policy=ctx.cfg.ingest.gene_policy,
        samplesheet=samplesheet,
    )
    dropped = f"; genes dropped per sample: {result.dropped_genes}" if result.dropped_genes else ""
    return (
        f"ingest: {result.n_samples} samples ({result.n_written} written, {result.n_unchanged} "
        f"unchanged), {result.n_cells:,} cells x {result.n_genes:,} genes in "
        f"{result.seconds:.1f} s{dropped}"
    )

"""``immunoprofile export``: a subset of a workdir as one .h5ad for a collaborator.

The QC-passed cells (all, or B cells only) with their raw counts (all genes, or those
named), every per-cell result, the embeddings, the kNN graph among them and the label
colours: what `pipeline.explore.read_workdir` gives, written with the counts streamed
chunk by chunk (the matrix is never whole in memory) to a temporary name, then renamed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..explore import gene_columns, read_workdir
from ..store import atomic_path


@dataclass(frozen=True)
class ExportResult:
    path: Path
    n_cells: int
    n_genes: int


def export_h5ad(
    workdir: str | Path,
    out: Path,
    *,
    cells: Literal["all", "b"] = "all",
    genes: Sequence[str] = (),
) -> ExportResult:
    adata = read_workdir(workdir, counts="lazy", cells=cells)
    if genes:
        columns, names = gene_columns(adata.var, genes)
        adata = adata[:, columns].copy()
        adata.var["requested_as"] = names
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        adata.write_h5ad(tmp)
    return ExportResult(out, int(adata.n_obs), int(adata.n_vars))

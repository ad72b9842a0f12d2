"""One entry point for notebooks: a workdir as an AnnData that scanpy's tools accept.

`read_workdir` joins what `open_results` (every cell's results: the cohort's and the
added batches') and `open_cohort` (the lazy counts) give separately: the results, the
embeddings and the graph, with the raw counts attached as a Dask array (nothing read
until computed), only QC-passed cells by default (QC-failed cells have no embedding:
NaN rows that `sc.pp.neighbors` refuses). The normalized expression of requested genes
(log1p of counts per 10,000, as `sc.pp.normalize_total` + `sc.pp.log1p` give it, the
library size being the cell's total counts) is computed in one pass over those genes and
set as ``raw``, so that scanpy's plots, which read ``raw`` first, colour by gene symbol:
``sc.pl.umap(adata, color="MS4A1")``, ``sc.pl.dotplot(adata, genes, groupby="cell_type")``.
Categorical columns get colours in ``uns`` (``<column>_colors``), the same colour for a
label wherever it appears (DN2 in ``b_subset`` and in ``cell_type``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import anndata as ad
import dask.array as da
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .cohort import open_cohort
from .errors import ImmunoprofileError
from .labels import B_SUBSETS, LINEAGES, UNASSIGNED
from .results import leiden_key, open_results
from .workdir import Workdir

# scanpy's default_20 palette
# fmt: off
PALETTE = ("#1f77b4", "#ff7f0e", "#279e68", "#d62728", "#aa40fc", "#8c564b", "#e377c2",
           "#b5bd61", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5",
           "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#ad494a", "#8c6d31")
# fmt: on
# a fixed colour per label (lineages, then B subsets): the same wherever a label appears
LABEL_COLOURS = dict(
    zip((*LINEAGES, *(s for s in B_SUBSETS if s not in LINEAGES)), PALETTE, strict=False)
)
LABEL_COLOURS[UNASSIGNED] = "#d3d3d3"
LABEL_COLUMNS = ("lineage", "b_subset", "cell_type")


def _counts(workdir: Workdir, obs_names: pd.Index) -> tuple[da.Array, pd.DataFrame]:
    """The lazy counts of the cohort's and the batches' cells, in the results' order."""
    parts = [open_cohort(workdir)]
    parts += [
        open_cohort(workdir, samples=layer.samples) for layer in workdir.batch_layers().values()
    ]
    names = pd.Index(np.concatenate([p.obs_names.to_numpy() for p in parts]))
    if not names.equals(obs_names):
        msg = (
            f"{workdir.root}: the sample stores' cells are not those of the results "
            "(re-run the pipeline, or `immunoprofile validate` the workdir)"
        )
        raise ImmunoprofileError(msg)
    return da.concatenate([p.X for p in parts], axis=0), parts[0].var


def gene_columns(var: pd.DataFrame, genes: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Column positions of ``genes`` (symbols or IDs) and the names to show them by."""
    symbols = var["gene_symbols"].astype(str) if "gene_symbols" in var else var.index.to_series()
    by_symbol = pd.Series(np.arange(len(var)), index=symbols.to_numpy())
    by_symbol = by_symbol[~by_symbol.index.duplicated()]
    by_id = pd.Series(np.arange(len(var)), index=var.index)
    positions, names, missing = [], [], []
    for gene in genes:
        if gene in by_symbol.index:
            positions.append(int(by_symbol[gene]))
        elif gene in by_id.index:
            positions.append(int(by_id[gene]))
        else:
            missing.append(gene)
            continue
        names.append(gene)
    if missing:
        hints = [
            f"{g} (did you mean {close[0]}?)"
            if (close := difflib.get_close_matches(g, list(by_symbol.index), n=1))
            else g
            for g in missing
        ]
        msg = f"genes not in the cohort: {', '.join(hints)}"
        raise ImmunoprofileError(msg)
    return np.asarray(positions, dtype=np.int64), names


def normalized_expression(x: da.Array, total_counts: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """log1p(counts / total_counts * 10,000) of the ``columns`` of the lazy counts ``x``
    (cells x len(columns), float32), in one pass over them."""

    def block(chunk: sp.spmatrix) -> np.ndarray:
        return np.asarray(sp.csr_matrix(chunk)[:, columns].toarray(), dtype=np.float32)

    dense = da.map_blocks(block, x, dtype=np.float32, chunks=(x.chunks[0], (len(columns),)))
    counts = np.asarray(dense.compute(), dtype=np.float32)
    size = np.asarray(total_counts, dtype=np.float64)
    return np.log1p(counts / np.where(size > 0, size, 1.0)[:, None] * 1e4).astype(np.float32)


def _colours(adata: ad.AnnData) -> None:
    for column in adata.obs.columns:
        values = adata.obs[column]
        if not isinstance(values.dtype, pd.CategoricalDtype):
            continue
        adata.obs[column] = values.cat.remove_unused_categories()
        categories = list(adata.obs[column].cat.categories)
        if column in LABEL_COLUMNS:
            colours = [LABEL_COLOURS.get(str(c), "#7f7f7f") for c in categories]
        else:
            colours = [PALETTE[i % len(PALETTE)] for i in range(len(categories))]
        adata.uns[f"{column}_colors"] = np.array(colours, dtype=object)


def read_workdir(
    workdir: str | Path | Workdir,
    *,
    counts: Literal["lazy", "none"] = "lazy",
    qc_pass_only: bool = True,
    cells: Literal["all", "b"] = "all",
    genes: Sequence[str] = (),
) -> ad.AnnData:
    """The workdir's cells (the cohort's, then each added batch's) with their results.

    Parameters
    ----------
    workdir
        An analysed workdir (at least through the ``graph`` stage for embeddings).
    counts
        ``"lazy"``: X is the raw counts as a Dask array of CSR chunks along cells, var the
        genes (IDs, ``gene_symbols``); ``"none"``: no X.
    qc_pass_only
        Only the cells that passed QC (the others have no embedding, graph or label).
    cells
        ``"b"``: only cells of lineage B (a notebook of B cells alone).
    genes
        Gene symbols (or IDs) whose normalized expression is computed now into ``raw``
        (needs ``counts="lazy"``), for plots coloured or grouped by gene.

    Returns
    -------
    An AnnData with obs (every per-cell result; ``leiden`` is the first configured
    resolution's clusters, ``cell_type`` the finest label), obsm (``X_pca``, the
    integrated embeddings, ``X_umap``), obsp (the kNN graph) and ``uns`` colours.
    """
    workdir = Workdir(workdir)
    results = open_results(workdir)
    obs = results.obs
    params = results.uns.get("graph", {}).get("params", {})
    resolutions = list(np.atleast_1d(params.get("resolutions", [])))
    if resolutions and leiden_key(float(resolutions[0])) in obs:
        obs["leiden"] = obs[leiden_key(float(resolutions[0]))]
    if counts == "lazy":
        x, var = _counts(workdir, obs.index)
        adata = ad.AnnData(X=x, obs=obs, var=var, obsm=dict(results.obsm),
                           obsp=dict(results.obsp), uns=dict(results.uns))  # fmt: skip
    elif counts == "none":
        adata = results
    else:
        msg = f"counts: expected 'lazy' or 'none', got {counts!r}"
        raise ValueError(msg)
    keep = np.ones(adata.n_obs, dtype=bool)
    if qc_pass_only and "qc_pass" in obs:
        keep &= obs["qc_pass"].to_numpy(dtype=bool)
    if cells == "b":
        if "lineage" not in obs:
            msg = f"{workdir.root}: no lineage labels: run the annotate stage first"
            raise ImmunoprofileError(msg)
        keep &= (obs["lineage"] == "B").to_numpy()
    elif cells != "all":
        msg = f"cells: expected 'all' or 'b', got {cells!r}"
        raise ValueError(msg)
    if not keep.all():
        adata = adata[keep].copy()
    if genes:
        if counts != "lazy":
            msg = "genes: the normalized expression needs counts='lazy'"
            raise ValueError(msg)
        columns, names = gene_columns(adata.var, genes)
        values = normalized_expression(adata.X, adata.obs["total_counts"].to_numpy(), columns)
        adata.raw = ad.AnnData(X=values, obs=adata.obs[[]], var=pd.DataFrame(index=names))
    _colours(adata)
    return adata

"""The neighbourhoods stage in a workdir: the integrated embedding, the graph stage's kNN
graph and the labels in; neighbourhoods, their counts per sample, the models' contrasts
with spatial FDR, and plots out (``WORKDIR/neighbourhoods/``, built under a temporary
name with its manifest).

The driver holds the QC-passed cells' embedding, the graph's neighbour lists and the
membership (neighbourhoods x k cell rows); the counts are computed by the workers a chunk
of neighbourhoods at a time, and the models fitted there a chunk at a time.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..abundance import AbundanceDesignError, contrast_names, estimable_design, with_covariate
from ..config import RunConfig
from ..errors import ImmunoprofileError
from ..labels import B_SUBSETS, DESIGN_COLUMNS, LINEAGES
from ..workdir import Workdir
from ._kernels import (
    majority_labels,
    make_neighbourhoods,
    members_within,
    membership_matrix,
    sample_counts,
    spatial_fdr,
)
from ._model import ChunkFits, estimable_contrasts, fit_neighbourhoods
from ._plots import beeswarm_plot

if TYPE_CHECKING:
    from ..stages import StageContext

OBS_COLUMNS = (*DESIGN_COLUMNS, "qc_pass", "lineage", "b_subset")
TEST_COLUMNS = ("nhood", "index_cell", "lineage", "lineage_fraction", "b_subset",
                "b_subset_fraction", "contrast", "estimate", "ci_low", "ci_high", "pvalue",
                "spatial_fdr", "method")  # fmt: skip
CELLS_PER_SAMPLE = 5  # Milo's rule of thumb: neighbourhoods of ~5 cells per sample


def neighbourhoods_digest_inputs(cfg: RunConfig, workdir: Workdir) -> dict[str, Any]:
    """Its parameters, the graph's embedding and k (the neighbourhoods are searched in
    that embedding, at least that many cells each), and every batch layer (their cells
    are counted into the neighbourhoods)."""
    return {
        "params": cfg.neighbourhoods.model_dump(mode="json"),
        "graph": {"use_rep": cfg.graph.use_rep, "n_neighbors": cfg.graph.n_neighbors},
        "batches": {name: layer.digest for name, layer in workdir.batch_layers().items()},
    }


def neighbourhood_size(cfg: RunConfig, n_samples: int, n_cells: int) -> int:
    """``neighbourhoods.k``, or 5 cells per sample, at most ``max_k`` and ``max_share`` of
    the cells but at least one cell per sample and the graph's ``n_neighbors``; never
    more than the cells there are. (Below ~1 cell per sample the Wald tests turn
    conservative: docs/benchmarks.md.)"""
    n = cfg.neighbourhoods
    if n.k is not None:
        return min(n.k, n_cells)
    cap = min(n.max_k, round(n.max_share * n_cells))
    floor = max(n_samples, cfg.graph.n_neighbors)
    return min(max(min(CELLS_PER_SAMPLE * n_samples, cap), floor), n_cells)


def _codes(values: pd.Series, vocabulary: tuple[str, ...]) -> np.ndarray:
    codes = pd.Categorical(values.astype(object), categories=list(vocabulary)).codes
    return np.asarray(codes, dtype=np.int64)


def _count_chunk(members: np.ndarray, codes: np.ndarray, n_samples: int) -> np.ndarray:
    return sample_counts(members, codes, n_samples)


def _samples(obs: pd.DataFrame) -> pd.DataFrame:
    kept = obs[obs["qc_pass"]]
    table = kept[list(DESIGN_COLUMNS)].astype(
        {"sample_id": str, "patient_id": str, "response": str, "batch": str}
    )
    table = table.drop_duplicates("sample_id").reset_index(drop=True)
    sizes = kept["sample_id"].astype(str).value_counts()
    return table.assign(n_cells=table["sample_id"].map(sizes).to_numpy(dtype=np.int64))


def _label_columns(members: np.ndarray, obs: pd.DataFrame) -> pd.DataFrame:
    out = {}
    for level, vocabulary in (("lineage", LINEAGES), ("b_subset", B_SUBSETS)):
        best, share = majority_labels(members, _codes(obs[level], vocabulary), len(vocabulary))
        names = np.array([*vocabulary, ""], dtype=object)
        out[level] = names[best]
        out[f"{level}_fraction"] = share
    return pd.DataFrame(out)


def _tests(fits: ChunkFits | None, fitted: list[str], names: list[str],
           nhoods: pd.DataFrame) -> pd.DataFrame:  # fmt: skip
    """Every neighbourhood x contrast of the design's timepoints (``names``); those not
    ``fitted`` (the design cannot estimate them) NaN, as in abundance/tests.csv."""
    rows = []
    blank = np.full(len(nhoods), np.nan)
    for contrast in names:
        if fits is not None and contrast in fitted:
            j = fitted.index(contrast)
            values = {
                key: getattr(fits, key)[:, j] for key in ("estimate", "ci_low", "ci_high", "pvalue")
            }
        else:
            values = dict.fromkeys(("estimate", "ci_low", "ci_high", "pvalue"), blank)
        rows.append(nhoods.assign(
            contrast=contrast, **values, method="glmm",
            spatial_fdr=spatial_fdr(values["pvalue"], nhoods["weight"].to_numpy()),
        ))  # fmt: skip
    return pd.concat(rows, ignore_index=True).reindex(columns=list(TEST_COLUMNS))


def _fit_all(ctx: StageContext, counts: np.ndarray, samples: pd.DataFrame, design) -> ChunkFits:
    client, chunk = ctx.cluster, ctx.cfg.neighbourhoods.chunk
    totals = samples["n_cells"].to_numpy(dtype=float)
    held = client.scatter(design, broadcast=True)  # held until the fits are done
    futures = [
        client.submit(fit_neighbourhoods, counts[s : s + chunk], totals, held, pure=False)
        for s in range(0, counts.shape[0], chunk)
    ]
    parts = client.gather(futures)
    del futures, held
    stacked = {key: np.vstack([getattr(p, key) for p in parts])
               for key in ("estimate", "ci_low", "ci_high", "pvalue")}  # fmt: skip
    return ChunkFits(**stacked, fits=pd.concat([p.fits for p in parts], ignore_index=True))


def _counts(
    ctx: StageContext, members: np.ndarray, codes: np.ndarray, n_samples: int
) -> np.ndarray:
    client, chunk = ctx.cluster, max(1, 2_000_000 // members.shape[1])
    held = client.scatter(codes, broadcast=True)
    pieces = [client.scatter(members[s : s + chunk]) for s in range(0, members.shape[0], chunk)]
    futures = [client.submit(_count_chunk, piece, held, n_samples, pure=False) for piece in pieces]
    parts = client.gather(futures)
    del futures, held, pieces  # held until the tasks that use them are done
    return np.vstack(parts)


def _nhood_store(nhoods: pd.DataFrame, counts: np.ndarray, samples: pd.DataFrame,
                 members: np.ndarray, extra: tuple[np.ndarray, np.ndarray], n_cells: int,
                 k: int) -> ad.AnnData:  # fmt: skip
    adata = ad.AnnData(
        X=counts.astype(np.int32),
        obs=nhoods.set_index(nhoods["nhood"].astype(str).rename(None)),
        var=samples.set_index(samples["sample_id"].rename(None)),
    )
    membership = membership_matrix(members, n_cells)
    if extra[0].size:  # batch cells: rows after cohort.zarr's
        more = sp.csc_matrix((np.ones(extra[0].size, dtype=np.uint8), extra),
                             shape=membership.shape)  # fmt: skip
        membership = (membership + more).tocsc()
        membership.sort_indices()
    adata.uns["membership"] = membership
    adata.uns["k"] = int(k)
    return adata


def run_neighbourhoods(ctx: StageContext) -> str:
    """Sample the neighbourhoods, count them per sample, fit and test them, write
    ``WORKDIR/neighbourhoods/``; one summary line."""
    cfg, n = ctx.cfg, ctx.cfg.neighbourhoods
    clock, seconds = time.perf_counter(), {}

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 2)
        clock = now

    obs = ctx.read_obs(OBS_COLUMNS, batches=True)  # cohort.zarr's cells, then the batches'
    n_cohort = len(ctx.read_obs(["qc_pass"]))
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    rows = np.flatnonzero(keep[:n_cohort])  # the neighbourhoods are the cohort's
    added = n_cohort + np.flatnonzero(keep[n_cohort:])  # batch cells, counted into them
    samples = _samples(obs)
    try:
        design, not_estimable = estimable_design(samples, time=n.time)
    except AbundanceDesignError as err:
        raise ImmunoprofileError(f"neighbourhoods: {err}") from err
    names = contrast_names(sorted({float(t) for t in samples["timepoint_months"]}))
    fitted = [] if design is None else estimable_contrasts(design)
    adjustment = None
    if design is not None:  # the design's sample order
        samples = samples.set_index("sample_id").loc[design.samples["sample_id"]].reset_index()
        if n.batch_covariate:
            design, adjustment = with_covariate(design, samples["batch"], "batch")

    element = f"obsm/{cfg.graph.use_rep}"
    x = np.ascontiguousarray(
        ctx.array(element).get_orthogonal_selection((rows, slice(None))), dtype=np.float32
    )
    graph = ctx.read_elem("obsp/distances").tocsr()[rows][:, rows]  # the kept cells' graph
    lap("read")
    n_cohort_samples = obs["sample_id"].iloc[rows].nunique()
    k = neighbourhood_size(cfg, n_cohort_samples, rows.size)
    hoods = make_neighbourhoods(x, graph, k, prop=n.prop, seed=n.seed,
                                exact_knn_below=cfg.graph.exact_knn_below, knn_seed=cfg.graph.seed)  # fmt: skip
    index_points = x[hoods.index_cells]
    del graph, x
    # neighbourhoods x k, rows of cohort.zarr; int32 where they fit (the largest per-member
    # array the driver holds), and the positions among the kept cells let go at once
    members = rows.astype(np.int32 if len(obs) < 2**31 else np.int64)[hoods.members]
    hoods = replace(hoods, members=members[:0])
    codes = np.full(len(obs), -1, dtype=np.int64)
    kept = np.flatnonzero(keep)
    codes[kept] = pd.Categorical(obs["sample_id"].astype(str).to_numpy()[kept],
                                 categories=samples["sample_id"]).codes  # fmt: skip
    lap("neighbourhoods")
    counts = _counts(ctx, members, codes, len(samples))
    extra = (np.empty(0, np.int64), np.empty(0, np.int64))
    if added.size:  # add-batch's cells, in the neighbourhoods they would have been members of
        points = ctx.read_obsm(cfg.graph.use_rep, batches=True)[added]
        per_cell = k * len(index_points) / max(rows.size, 1)
        found, nhood = members_within(index_points, hoods.kth_distance, points,
                                      n_search=max(64, int(4 * per_cell)))  # fmt: skip
        extra = (added[found], nhood)
        np.add.at(counts, (nhood, codes[added[found]]), 1)
    lap("counts")
    nhoods = pd.DataFrame({
        "nhood": np.arange(hoods.index_cells.size), "index_cell": rows[hoods.index_cells],
        "size": k, "kth_distance": hoods.kth_distance.astype(float), "weight": hoods.weights,
    })  # fmt: skip
    nhoods = pd.concat([nhoods, _label_columns(members, obs)], axis=1)
    fits = _fit_all(ctx, counts, samples, design) if design is not None and fitted else None
    lap("fits")
    tests = _tests(fits, fitted, names, nhoods)
    unconverged = 0 if fits is None else int((~fits.fits["converged"].astype(bool)).sum())
    called = {c: int((tests.loc[tests["contrast"] == c, "spatial_fdr"] < n.alpha).sum())
              for c in fitted}  # fmt: skip
    warnings = [f"{c}: not estimable, {r}" for c, r in not_estimable.items()]
    if adjustment is not None:
        warnings.append(adjustment)
    if unconverged:
        warnings.append(f"{unconverged} of {len(nhoods)} neighbourhood models did not converge "
                        "and are not tested (NaN; fits.csv says which and why)")  # fmt: skip
    with ctx.stage_folder() as (out, manifest):
        tests.to_csv(out.tests, index=False)
        if fits is not None:
            fits.fits.assign(nhood=nhoods["nhood"]).to_csv(out.fits, index=False)
        else:  # nothing to fit: the design estimates no contrast
            pd.DataFrame({"nhood": nhoods["nhood"], "sd_patient": np.nan, "sd_sample": np.nan,
                          "converged": False, "notes": "no contrast can be estimated"}).to_csv(
                out.fits, index=False)  # fmt: skip
        _nhood_store(nhoods, counts, samples, members, extra, len(obs), k).write_zarr(out.nhoods)
        lap("write")
        plots = []
        for contrast in [c for c in fitted if c == "response@month0"]:  # the report's
            fig = beeswarm_plot(tests[tests["contrast"] == contrast], alpha=n.alpha,
                                title=contrast)  # fmt: skip
            fig.savefig(out.beeswarm_png(contrast), dpi=110, format="png")
            plots.append(out.beeswarm_png(contrast).name)
            import matplotlib.pyplot as plt

            plt.close(fig)
        summary = {
            "n_nhoods": len(nhoods), "k": k, "prop": n.prop, "n_samples": len(samples),
            "n_cells": int(rows.size), "n_batch_cells": int(added.size),
            "exact_neighbours": hoods.exact,
            "median_nhoods_per_cell": float(np.median(np.bincount(members.ravel(), minlength=len(obs))[rows])),
            "alpha": n.alpha, "called": called, "contrasts": names, "tested": fitted,
            "covariates": [] if design is None else list(design.covariates),
            "covariate_not_adjusted": adjustment,
            "not_estimable": not_estimable, "unconverged": unconverged,
            "warnings": warnings, "plots": plots, "seconds": seconds,
        }  # fmt: skip
        out.summary.write_text(json.dumps(summary, indent=2, default=str))
        manifest.update(n_nhoods=len(nhoods), k=k)
    for note in warnings:
        print(f"neighbourhoods: warning: {note}")
    base = called.get("response@month0")
    lines = [
        f"neighbourhoods: {len(nhoods):,} neighbourhoods of {k} cells over {len(samples)} "
        f"samples; outputs in {ctx.workdir.neighbourhoods.root}",
    ]
    if base is not None:
        lines.append(f"  {base} neighbourhoods differ at baseline at spatial FDR < {n.alpha}")
    return "\n".join(lines)

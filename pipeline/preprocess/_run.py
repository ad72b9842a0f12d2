"""The preprocess stage in a workdir: qc's outputs and the lazy counts in; the HVG table,
the PCs and their loadings into cohort.zarr."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..moments import Moments
from ..qc import MOMENT_SUM, MOMENT_SUMSQ
from ..sampling import rows_by_value
from ..store import TMP_MARK
from ._stage import PCA_SCRATCH, preprocess_cohort

if TYPE_CHECKING:
    from ..stages import StageContext


def moments_per_batch(
    obs: pd.DataFrame, sums: np.ndarray, sumsq: np.ndarray, samples: list[str], batch_key: str
) -> Moments | None:
    """The qc stage's per-sample moments (genes x samples, in the order of ``samples``)
    summed per batch (codes as in preprocess); None when the batch key varies within a
    sample (preprocess then makes the pass itself)."""
    codes = pd.Categorical(obs[batch_key].astype(str)).codes
    # each sample's rows from one sort (comparing every cell's id with each sample's grew
    # as cells x samples: ~60 s of the driver at 4M cells, 528 samples)
    rows = dict(zip(*rows_by_value(obs["sample_id"]), strict=True))
    none = np.zeros(0, dtype=np.int64)
    kept = obs["qc_pass"].to_numpy(dtype=bool)
    out: Moments = {}
    for i, sid in enumerate(samples):
        cells = rows.get(sid, none)
        batch = np.unique(codes[cells])
        if batch.size != 1:
            return None
        m = np.zeros((3, sums.shape[0]))
        m[0, 0] = kept[cells].sum()
        m[1] = sums[:, i]
        m[2] = sumsq[:, i]
        b = int(batch[0])
        out[b] = out[b] + m if b in out else m
    return out


def run_preprocess(ctx: StageContext) -> str:
    p = ctx.cfg.preprocess
    for left in ctx.workdir.root.glob(f".{PCA_SCRATCH}{TMP_MARK}*"):  # of a killed run
        shutil.rmtree(left, ignore_errors=True)
    obs = ctx.read_obs(
        list(dict.fromkeys(["qc_pass", "total_counts", "sample_id", p.hvg_batch_key]))
    )
    qc = ctx.read_elem("uns/qc")
    moments = None
    if ctx.has(f"varm/{MOMENT_SUM}") and "moment_samples" in qc:
        moments = moments_per_batch(
            obs,
            np.asarray(ctx.read_elem(f"varm/{MOMENT_SUM}")),
            np.asarray(ctx.read_elem(f"varm/{MOMENT_SUMSQ}")),
            [str(s) for s in qc["moment_samples"]],
            p.hvg_batch_key,
        )
    var_before = ctx.read_elem("var")
    counts = ctx.open_counts()  # no cell names: only the batch column is needed
    counts.obs[p.hvg_batch_key] = obs[p.hvg_batch_key].array  # positional; codes if categorical
    result = preprocess_cohort(
        counts,
        client=ctx.cluster,
        keep=obs["qc_pass"].to_numpy(dtype=bool),
        total_counts=obs["total_counts"].to_numpy(dtype=np.float64),
        params=p,
        moments=moments,
        scratch=ctx.workdir.root,
    )
    # a re-run replaces the previous preprocess outputs
    var = var_before.drop(columns=list(result.var.columns), errors="ignore").join(result.var)
    _, loadings = result.loadings.to_record(len(var))
    pca = {
        "variance": result.variance,
        "variance_ratio": result.variance_ratio,
        "params": p.model_dump(mode="json"),
        "seconds": result.seconds,
        "hvg_batches_left_out": list(result.hvg_batches_left_out),
        "candidate_rows": result.candidate_rows,
        "scratch_notes": list(result.scratch_notes),
    }
    del obs, moments
    # the workers project the cells and write X_pca's chunks themselves
    ctx.update_cohort(
        elems={"var": var, "obsm/X_pca": result.pca, "varm/PCs": loadings, "uns/pca": pca},
    )
    ratio = float(np.sum(result.variance_ratio))
    small = result.hvg_batches_left_out
    note = (
        f"; batch(es) {', '.join(small)} have fewer than {p.hvg_min_batch_cells} kept cells "
        "and do not rank genes (preprocess.hvg_min_batch_cells)"
        if small
        else ""
    ) + "".join(f"; scratch: {n}" for n in result.scratch_notes)
    return (
        f"preprocess: {int(var['highly_variable'].sum())} HVGs, {result.pca.shape[1]} PCs "
        f"({ratio:.1%} of variance) in {sum(result.seconds.values()):.1f} s{note}"
    )

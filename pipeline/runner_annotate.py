"""The annotate stage behind ``immunoprofile run``: read, annotate, write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import zarr
from distributed import Client

from ._memory import release_memory
from .annotate import (
    agreement,
    annotate_cohort,
    load_markers,
    marker_dotplot,
    read_reference,
    reference_symbols,
    train_classifier,
    transfer_labels,
)
from .batches import read_obs_columns
from .cohort import open_counts
from .config import RunConfig
from .errors import ImmunoprofileError
from .labels import B_SUBSETS, LINEAGES, UNASSIGNED
from .store import atomic_path, obs_columns, write_text_atomic
from .workdir import COHORT_STORE, update_cohort

ANNOTATE_DIR = "annotate"  # in the workdir: dot plots, their tables, the marker file used


def _model_record(call: Any) -> dict[str, Any]:
    m = call.model
    return {
        "programs": np.array(m.programs, dtype=str),
        "features": np.array(m.features, dtype=str),
        "rate_per_10k": m.rate,
        "theta": m.theta,
        "prior": np.exp(m.log_prior),
    }


def _info_record(info: dict[str, Any]) -> dict[str, Any]:
    return {k: ",".join(v) if isinstance(v, list) else v for k, v in info.items()}


def run_annotate(cfg: RunConfig, client: Client) -> str:
    """Only the inputs (two obs columns, the kNN graph) while the cells are annotated; the
    rest of the cohort is read afterwards, once the workers' memory is trimmed."""
    a = cfg.annotate
    workdir = Path(cfg.workdir)
    path = workdir / COHORT_STORE
    obs = read_obs_columns(path, ["qc_pass", "total_counts"], needs="run the qc stage first")
    obsp = zarr.open_group(str(path), mode="r").get("obsp")
    if not isinstance(obsp, zarr.Group) or "connectivities" not in obsp:
        msg = f"{path} has no kNN graph (obsp 'connectivities'): run the graph stage first"
        raise ImmunoprofileError(msg)
    markers = load_markers(a.markers)
    cohort = open_counts(workdir, chunk_cells=cfg.ingest.chunk_cells)
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    totals = obs["total_counts"].to_numpy(dtype=np.float64)
    del obs
    result = annotate_cohort(
        cohort,
        client=client,
        keep=keep,
        total_counts=totals,
        markers=markers,
        connectivities=ad.io.read_elem(obsp["connectivities"]),
        graph_weight=a.graph_weight,
        b_graph_weight=a.b_graph_weight,
        min_confidence=a.min_confidence,
        min_feature_fraction=a.min_feature_fraction,
        min_marker_support=a.min_marker_support,
        fit_max_cells=a.fit_max_cells,
        max_iter=a.max_iter,
        seed=a.seed,
    )
    release_memory()
    client.run(release_memory)
    leiden = [c for c in obs_columns(path) if str(c).startswith("leiden_")]
    out = read_obs_columns(path, leiden, needs="the graph stage")
    vocab = {"lineage": LINEAGES, "b_subset": B_SUBSETS}
    record: dict[str, Any] = {
        "params": a.model_dump(mode="json"),
        "markers": {"name": markers.name, "version": markers.version, "sha256": markers.sha256},
        "seconds": result.seconds,
    }
    folder = workdir / ANNOTATE_DIR
    folder.mkdir(exist_ok=True)
    for level, call in result.levels.items():
        out[level] = pd.Categorical(call.labels, categories=[*vocab[level], UNASSIGNED])
        out[f"{level}_confidence"] = call.confidence
        record[level] = {
            **_info_record(call.info),
            "model": _model_record(call),
            "dotplot": call.dotplot,
        }
        if len(call.dotplot):
            call.dotplot.to_csv(folder / f"dotplot_{level}.csv", index=False)
            fig = marker_dotplot(
                call.dotplot, title=f"Marker features by {level.replace('_', ' ')}"
            )
            with atomic_path(folder / f"dotplot_{level}.png") as tmp:
                fig.savefig(tmp, dpi=110, format="png")
    write_text_atomic(folder / "markers_used.yaml", markers.text)
    record["clusters"] = _cluster_summary(out)
    if a.reference is not None:
        record["reference"] = _transfer(cfg, client, cohort, out, keep, totals)
    lineage = out["lineage"].value_counts()
    b = out["b_subset"].value_counts()
    labels = out.drop(columns=leiden)
    del out
    update_cohort(cfg, "annotate", obs=labels, elems={"uns/annotate": record})
    n_b = int(lineage.get("B", 0))
    dn2 = int(b.get("DN2", 0))
    return (
        f"annotate: {int(keep.sum()):,} cells, {int(lineage.get(UNASSIGNED, 0)):,} unassigned; "
        f"{n_b:,} B cells ({n_b / max(keep.sum(), 1):.1%}), DN2 {dn2 / max(n_b, 1):.1%} of B "
        f"in {sum(result.seconds.values()):.1f} s"
    )


def _cluster_summary(obs: pd.DataFrame) -> pd.DataFrame:
    """Per Leiden cluster (finest resolution): cells, majority lineage and its share."""
    columns = [c for c in obs.columns if c.startswith("leiden_")]
    if not columns:
        return pd.DataFrame()
    finest = max(columns, key=lambda c: float(c.removeprefix("leiden_")))
    table = pd.crosstab(obs[finest], obs["lineage"].astype(str))
    return pd.DataFrame(
        {
            "cluster": table.index.astype(str),
            "resolution": finest.removeprefix("leiden_"),
            "n_cells": table.sum(axis=1).to_numpy(),
            "majority_lineage": table.idxmax(axis=1).to_numpy(),
            "purity": (table.max(axis=1) / table.sum(axis=1)).to_numpy(),
        }
    )


def _transfer(
    cfg: RunConfig,
    client: Client,
    cohort: ad.AnnData,
    out: pd.DataFrame,
    keep: np.ndarray,
    totals: np.ndarray,
) -> dict[str, Any]:
    """Reference labels by a classifier trained on the configured reference, and their
    agreement with the marker-based labels."""
    r = cfg.annotate.reference
    assert r is not None
    keys = [k for k in (r.lineage_key, r.b_subset_key) if k]
    ref = read_reference(r.path, layer=r.layer, keys=keys)
    symbols = reference_symbols(ref)
    allowed = set(cohort.var["gene_symbols"].astype(str))
    record: dict[str, Any] = {"path": str(r.path)}
    b_cells = out["lineage"].to_numpy() == "B"
    for level, key in (("lineage", r.lineage_key), ("b_subset", r.b_subset_key)):
        if not key:
            continue
        rows = np.ones(ref.n_obs, dtype=bool)
        if level == "b_subset" and r.lineage_key:
            rows = ref.obs[r.lineage_key].astype(str).to_numpy() == "B"
        clf = train_classifier(
            ref.X[rows], symbols, ref.obs[key].to_numpy()[rows], key=key, allowed=allowed,
            n_genes_per_label=r.n_genes_per_label, max_cells=r.max_cells, seed=cfg.annotate.seed,
        )  # fmt: skip
        cells = keep if level == "lineage" else keep & b_cells
        labels, prob = transfer_labels(
            cohort, client=client, cells=cells, total_counts=totals, classifier=clf
        )
        out[f"{level}_reference"] = pd.Categorical(labels)
        out[f"{level}_reference_confidence"] = prob
        agree = agreement(out[level].to_numpy(dtype=object), labels)
        agree["confusion"] = pd.DataFrame(agree.get("confusion", {})).fillna(0).astype(int)
        record[level] = {"key": key, "n_trained": clf.n_trained, "n_genes": len(clf.genes), **agree}
    return record

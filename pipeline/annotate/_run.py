"""The annotate stage in a workdir: the counts and the kNN graph in; labels, their
confidence, the fitted models and the dot plots out."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..cohort import Counts
from ..config import RunConfig
from ..labels import B_SUBSETS, LINEAGES, UNASSIGNED
from ..results import leiden_columns
from ..runtime import release_memory
from ..store import TMP_MARK, atomic_path, scratch_folder, write_text_atomic
from ..workdir import Workdir
from ._graphrows import StoredGraph
from ._markers import load_markers
from ._plots import marker_dotplot
from ._reference import (
    agreement,
    read_reference,
    reference_symbols,
    train_classifier,
    transfer_labels,
)
from ._stage import annotate_cohort
from ._vocabulary import cell_type_columns, compatible_fraction, load_vocabularies

if TYPE_CHECKING:
    from distributed import Client

    from ..stages import StageContext

VOCABULARY = {"lineage": LINEAGES, "b_subset": B_SUBSETS}


def annotate_digest_inputs(cfg: RunConfig, workdir: Workdir) -> dict[str, Any]:
    """What the stage's results depend on besides its parameters: the marker file's
    content and the reference file's size and modification time."""
    a = cfg.annotate
    reference = None
    if a.reference is not None:
        path = Path(a.reference.path)
        stat = path.stat() if path.exists() else None
        reference = [str(path), stat.st_size, stat.st_mtime_ns] if stat else [str(path)]
    return {
        "params": a.model_dump(mode="json"),
        "markers_sha256": load_markers(a.markers).sha256,
        "vocabularies_sha256": load_vocabularies().sha256,
        "reference": reference,
    }


def _info_record(info: dict[str, Any]) -> dict[str, Any]:
    return {k: ",".join(v) if isinstance(v, list) else v for k, v in info.items()}


PARTS = "annotate-parts"  # the scratch folder of the workers' label probabilities


def run_annotate(ctx: StageContext) -> str:
    """Only the inputs (three obs columns) while the cells are annotated, the kNN graph's
    rows read by the workers for the consensus, the label probabilities saved by the
    workers to a scratch folder until they write them; the Leiden columns are read
    afterwards, once the workers' memory is trimmed."""
    root = ctx.workdir.root
    for left in root.glob(f".{PARTS}{TMP_MARK}*"):  # of a killed run
        shutil.rmtree(left, ignore_errors=True)
    with scratch_folder(root, PARTS) as parts:
        return _annotate(ctx, str(parts))


def _annotate(ctx: StageContext, parts_folder: str) -> str:
    a = ctx.cfg.annotate
    obs = ctx.read_obs(["qc_pass", "total_counts", "batch"])
    connectivities = StoredGraph(str(ctx.workdir.cohort), "obsp/connectivities", len(obs))
    markers = load_markers(a.markers)
    cohort = ctx.open_counts()
    cohort.obs["batch"] = obs["batch"].array  # positional; the B cells' genes are ranked per batch
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    totals = obs["total_counts"].to_numpy(dtype=np.float64)
    del obs
    client = ctx.cluster
    result = annotate_cohort(
        cohort,
        client=client,
        keep=keep,
        total_counts=totals,
        markers=markers,
        connectivities=connectivities,
        params=a,
        parts_folder=parts_folder,
    )
    del connectivities
    release_memory()
    client.run(release_memory)
    leiden = leiden_columns(ctx.obs_columns())[-1:]  # the finest: the cluster summary's
    out = ctx.read_obs(leiden)
    record: dict[str, Any] = {
        "params": a.model_dump(mode="json"),
        "markers": {"name": markers.name, "version": markers.version, "sha256": markers.sha256},
        "seconds": result.seconds,
    }
    files = ctx.workdir.annotate
    files.root.mkdir(exist_ok=True)
    probabilities: dict[str, Any] = {}  # Dask arrays: the workers compute and write them
    for level, call in result.levels.items():
        out[level] = call.labels  # categories: the level's labels + unassigned
        out[f"{level}_confidence"] = call.confidence
        assert call.probabilities is not None
        probabilities[f"obsm/{level}_probabilities"] = call.probabilities
        record[level] = {
            **_info_record(call.info),
            "model": call.model.to_record(),
            "probability_columns": [*VOCABULARY[level], UNASSIGNED],
            "dotplot": call.dotplot,
        }
        if len(call.dotplot):
            call.dotplot.to_csv(files.dotplot_csv(level), index=False)
            fig = marker_dotplot(
                call.dotplot, title=f"Marker features by {level.replace('_', ' ')}"
            )
            with atomic_path(files.dotplot_png(level)) as tmp:
                fig.savefig(tmp, dpi=110, format="png")
    write_text_atomic(files.markers_used, markers.text)
    vocab = load_vocabularies()
    out[["cell_type", "cell_type_ontology_term_id"]] = cell_type_columns(
        out["lineage"], out["b_subset"]
    )
    record["vocabularies"] = {"version": vocab.version, "sha256": vocab.sha256}
    record["clusters"] = cluster_summary(out)
    if a.reference is not None:
        record["reference"] = _transfer(ctx.cfg, client, cohort, out, keep, totals)
    lineage = out["lineage"].value_counts()
    b = out["b_subset"].value_counts()
    labels = out.drop(columns=leiden)
    del out
    ctx.update_cohort(obs=labels, elems={"uns/annotate": record, **probabilities})
    n_b = int(lineage.get("B", 0))
    dn2 = int(b.get("DN2", 0))
    return (
        f"annotate: {int(keep.sum()):,} cells, {int(lineage.get(UNASSIGNED, 0)):,} unassigned; "
        f"{n_b:,} B cells ({n_b / max(keep.sum(), 1):.1%}), DN2 {dn2 / max(n_b, 1):.1%} of B "
        f"in {sum(result.seconds.values()):.1f} s"
    )


def cluster_summary(obs: pd.DataFrame) -> pd.DataFrame:
    """Per Leiden cluster (finest resolution) with cells: cells, majority lineage (ties:
    the first by name) and its share; cells without a cluster or a lineage left out.
    Counted on the category codes (no per-cell text: at 4M cells a crosstab of the
    labels as text took 0.2 GiB)."""
    columns = leiden_columns(obs.columns)
    if not columns:
        return pd.DataFrame()
    finest = columns[-1]
    cluster = obs[finest].astype("category").cat
    lineage = obs["lineage"].astype("category").cat
    names = lineage.categories.astype(str).to_numpy()
    order = np.argsort(names, kind="stable")  # columns by name: argmax's ties
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    c, lin = cluster.codes.to_numpy(), lineage.codes.to_numpy()
    both = (c >= 0) & (lin >= 0)
    table = np.bincount(
        c[both].astype(np.int64) * names.size + rank[lin[both]],
        minlength=len(cluster.categories) * names.size,
    ).reshape(len(cluster.categories), names.size)
    rows = table.sum(axis=1) > 0
    table, n_cells = table[rows], table[rows].sum(axis=1)
    return pd.DataFrame(
        {
            "cluster": cluster.categories[rows].astype(str),
            "resolution": finest.removeprefix("leiden_"),
            "n_cells": n_cells,
            "majority_lineage": names[order][table.argmax(axis=1)],
            "purity": table.max(axis=1) / n_cells,
        }
    )


def _transfer(
    cfg: RunConfig,
    client: Client,
    cohort: Counts,
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
        fraction, n_known = compatible_fraction(level, out[level].to_numpy(dtype=object), labels)
        if fraction is not None:  # the reference speaks CellTypist's or Azimuth's labels
            agree.update({"fraction_compatible": fraction, "n_cells_known_labels": n_known})
        agree["confusion"] = pd.DataFrame(agree.get("confusion", {})).fillna(0).astype(int)
        record[level] = {"key": key, "n_trained": clf.n_trained, "n_genes": len(clf.genes), **agree}
    return record

"""The stages behind ``immunoprofile run`` after ingest: read inputs, compute, write.

Each stage records a digest of what it was computed from (the previous stage's digest and
its own parameters) in ``cohort.zarr``'s manifest; a re-run skips a stage whose digest is
unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
from distributed import Client

from . import __version__
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
from .cohort import open_cohort
from .config import RunConfig
from .errors import ImmunoprofileError
from .graph import build_graph
from .ingest import STAGE_RECORD, sample_store_path
from .integrate import integrate_cohort, scvi_cohort
from .labels import B_SUBSETS, LINEAGES, UNASSIGNED
from .preprocess import Moments, preprocess_cohort
from .qc import QCRules, compute_qc
from .store import atomic_path, read_manifest, write_anndata_store, write_text_atomic

COHORT_STORE = "cohort.zarr"
MOMENT_SUM = "qc_counts_sum"  # varm: genes x samples, raw counts summed over kept cells
MOMENT_SUMSQ = "qc_counts_sumsq"  # the same for squared counts


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def stage_digests(cfg: RunConfig) -> dict[str, str]:
    """What each stage's outputs depend on, as a chain of digests."""
    record = Path(cfg.workdir) / STAGE_RECORD
    if not record.exists():
        msg = f"{cfg.workdir} has no {STAGE_RECORD}: run the ingest stage first"
        raise ImmunoprofileError(msg)
    ingest = hashlib.sha256(record.read_bytes()).hexdigest()
    qc = _sha({"ingest": ingest, "qc": cfg.qc.model_dump(mode="json")})
    pre = _sha({"qc": qc, "preprocess": cfg.preprocess.model_dump(mode="json")})
    integ = _sha({"preprocess": pre, "integrate": cfg.integrate.model_dump(mode="json")})
    graph = _sha({"integrate": integ, "graph": cfg.graph.model_dump(mode="json")})
    annotate = _sha({"graph": graph, "annotate": _annotate_inputs(cfg)})
    return {
        "ingest": ingest,
        "qc": qc,
        "preprocess": pre,
        "integrate": integ,
        "graph": graph,
        "annotate": annotate,
    }


def _annotate_inputs(cfg: RunConfig) -> dict[str, Any]:
    """The annotate parameters plus what its files contain (marker file hash; the
    reference's size and modification time)."""
    a = cfg.annotate
    reference = None
    if a.reference is not None:
        path = Path(a.reference.path)
        stat = path.stat() if path.exists() else None
        reference = [str(path), stat.st_size, stat.st_mtime_ns] if stat else [str(path)]
    return {
        "params": a.model_dump(mode="json"),
        "markers_sha256": load_markers(a.markers).sha256,
        "reference": reference,
    }


# What each stage adds to cohort.zarr besides the obs columns that qc rebuilds. A stage
# clears its own previous outputs and every later stage's before it writes (they were
# computed from what it replaces).
STAGE_ORDER = ("ingest", "qc", "preprocess", "integrate", "graph", "annotate")
STAGE_OUTPUTS: dict[str, dict[str, list[str]]] = {
    "preprocess": {"obsm": ["X_pca"], "varm": ["PCs"], "uns": ["pca"]},
    "integrate": {"obsm": ["X_pca_harmony", "X_scvi"], "uns": ["integrate"]},
    "graph": {
        "obsm": ["X_umap"],
        "obsp": ["distances", "connectivities"],
        "uns": ["graph", "neighbors"],
        "obs_prefix": ["leiden_"],
    },
    "annotate": {"uns": ["annotate"], "obs_prefix": ["lineage", "b_subset"]},
}


def clear_outputs(adata: ad.AnnData, stage: str) -> ad.AnnData:
    """``adata`` without the outputs of ``stage`` and of every stage after it."""
    for later in STAGE_ORDER[STAGE_ORDER.index(stage) :]:
        outputs = STAGE_OUTPUTS.get(later, {})
        for slot in ("obsm", "varm", "obsp", "uns"):
            mapping = getattr(adata, slot)
            for key in outputs.get(slot, []):
                mapping.pop(key, None)
        for prefix in outputs.get("obs_prefix", []):
            adata.obs = adata.obs.drop(columns=[c for c in adata.obs if c.startswith(prefix)])
    return adata


def done_stages(cfg: RunConfig) -> dict[str, str]:
    manifest = read_manifest(Path(cfg.workdir) / COHORT_STORE)
    return dict(manifest.get("stages", {})) if manifest else {}


def is_current(cfg: RunConfig, stage: str) -> bool:
    return done_stages(cfg).get(stage) == stage_digests(cfg)[stage]


def _write_cohort(cfg: RunConfig, adata: ad.AnnData, stages: list[str]) -> None:
    digests = stage_digests(cfg)
    info = {
        "kind": "cohort",
        "immunoprofile_version": __version__,
        "stages": {s: digests[s] for s in stages},
        "n_obs": int(adata.n_obs),
        "n_vars": int(adata.n_vars),
    }
    write_anndata_store(Path(cfg.workdir) / COHORT_STORE, adata, info)


def run_qc(cfg: RunConfig, client: Client) -> str:
    workdir = Path(cfg.workdir)
    cohort = open_cohort(workdir, chunk_cells=cfg.ingest.chunk_cells)
    stores = {s: sample_store_path(workdir, s) for s in cohort.obs["sample_id"].cat.categories}
    q = cfg.qc
    rules = QCRules(
        nmads=q.nmads, nmads_mt=q.nmads_mt, min_counts=q.min_counts, max_counts=q.max_counts,
        min_genes=q.min_genes, max_genes=q.max_genes, max_pct_mt=q.max_pct_mt,
    )  # fmt: skip
    result = compute_qc(
        cohort.obs,
        cohort.var,
        client=client,
        stores=stores,
        rules=rules,
        doublets=q.doublets,
        expected_doublet_rate=q.expected_doublet_rate,
        doublet_mean_center=q.doublet_mean_center,
        doublet_sim_scored_fraction=q.doublet_sim_scored_fraction,
        seed=q.seed,
        uniform_genes=bool(cohort.uns["uniform_genes"]),
    )
    obs = cohort.obs.join(result.obs)
    out = ad.AnnData(obs=obs, var=cohort.var.copy())
    samples = list(result.moments)
    moments = np.stack([result.moments[s] for s in samples])  # samples x 3 x genes
    out.varm[MOMENT_SUM] = moments[:, 1].T
    out.varm[MOMENT_SUMSQ] = moments[:, 2].T
    out.uns["qc"] = {
        "params": q.model_dump(mode="json"),
        "seconds": result.seconds,
        "moment_samples": samples,
    }
    out.uns["qc_summary"] = result.summary
    _write_cohort(cfg, out, ["ingest", "qc"])
    (workdir / "qc").mkdir(exist_ok=True)
    result.summary.to_csv(workdir / "qc" / "summary.csv", index=False)
    kept = int(obs["qc_pass"].sum())
    return (
        f"qc: {kept:,} of {len(obs):,} cells pass ({kept / len(obs):.1%}) in {result.seconds:.1f} s"
    )


def batch_moments_from_qc(cohort: ad.AnnData, batch_key: str) -> Moments | None:
    """The qc stage's per-sample moments summed per batch (codes as in preprocess)."""
    if MOMENT_SUM not in cohort.varm or "moment_samples" not in cohort.uns.get("qc", {}):
        return None
    obs = cohort.obs
    codes = pd.Categorical(obs[batch_key].astype(str)).codes
    sample = obs["sample_id"].astype(str).to_numpy()
    kept = obs["qc_pass"].to_numpy(dtype=bool)
    out: Moments = {}
    for i, sid in enumerate(cohort.uns["qc"]["moment_samples"]):
        cells = sample == sid
        batch = np.unique(codes[cells])
        if batch.size != 1:
            return None  # the batch key varies within a sample: preprocess makes the pass
        m = np.zeros((3, cohort.n_vars))
        m[0, 0] = kept[cells].sum()
        m[1] = cohort.varm[MOMENT_SUM][:, i]
        m[2] = cohort.varm[MOMENT_SUMSQ][:, i]
        b = int(batch[0])
        out[b] = out[b] + m if b in out else m
    return out


def run_preprocess(cfg: RunConfig, client: Client) -> str:
    workdir = Path(cfg.workdir)
    previous = _previous(cfg, "preprocess")
    cohort = open_cohort(workdir, chunk_cells=cfg.ingest.chunk_cells)
    p = cfg.preprocess
    result = preprocess_cohort(
        cohort,
        client=client,
        keep=previous.obs["qc_pass"].to_numpy(dtype=bool),
        total_counts=previous.obs["total_counts"].to_numpy(dtype=np.float64),
        batch_key=p.hvg_batch_key,
        n_top_genes=p.n_top_genes,
        span=p.hvg_span,
        target_sum=p.target_sum,
        n_comps=p.n_comps,
        moments=batch_moments_from_qc(previous, p.hvg_batch_key),
    )
    # a re-run replaces the previous preprocess outputs
    var = previous.var.drop(columns=list(result.var.columns), errors="ignore").join(result.var)
    out = ad.AnnData(obs=previous.obs, var=var, varm=dict(previous.varm), uns=dict(previous.uns))
    out.obsm["X_pca"] = result.pca
    loadings = np.zeros((out.n_vars, result.components.shape[1]), dtype=np.float32)
    loadings[var["highly_variable"].to_numpy()] = result.components
    out.varm["PCs"] = loadings
    out.uns["pca"] = {
        "variance": result.variance,
        "variance_ratio": result.variance_ratio,
        "params": p.model_dump(mode="json"),
        "seconds": result.seconds,
    }
    _write_cohort(cfg, out, ["ingest", "qc", "preprocess"])
    ratio = float(np.sum(result.variance_ratio))
    return (
        f"preprocess: {int(var['highly_variable'].sum())} HVGs, {result.pca.shape[1]} PCs "
        f"({ratio:.1%} of variance) in {sum(result.seconds.values()):.1f} s"
    )


def qc_summary_table(workdir: Path) -> pd.DataFrame:
    return pd.read_csv(Path(workdir) / "qc" / "summary.csv")


def _previous(cfg: RunConfig, stage: str) -> ad.AnnData:
    """cohort.zarr as the stages before ``stage`` left it."""
    return clear_outputs(ad.read_zarr(Path(cfg.workdir) / COHORT_STORE), stage)


SCVI_MODEL = Path("models") / "scvi"  # in the workdir


def run_integrate(cfg: RunConfig, client: Client) -> str:
    c = cfg.integrate
    workdir = Path(cfg.workdir)
    out = _previous(cfg, "integrate")
    keep = out.obs["qc_pass"].to_numpy(dtype=bool)
    batch = out.obs[c.batch_key].astype(str).to_numpy()
    other: dict[str, np.ndarray] = {}
    scvi_info: dict[str, Any] = {}
    if c.method in ("scvi", "both"):
        (workdir / SCVI_MODEL).parent.mkdir(exist_ok=True)
        result_scvi = scvi_cohort(
            open_cohort(workdir, chunk_cells=cfg.ingest.chunk_cells),
            client=client,
            keep=keep,
            batch=batch,
            hvg=np.flatnonzero(out.var["highly_variable"].to_numpy()),
            model_dir=workdir / SCVI_MODEL,
            max_cells=c.scvi_max_cells,
            n_latent=c.scvi_n_latent,
            max_epochs=c.scvi_max_epochs,
            batch_size=c.scvi_batch_size,
            seed=c.seed,
        )
        other["X_scvi"] = result_scvi.latent
        scvi_info = {
            "model_dir": str(SCVI_MODEL),
            "n_cells_trained": result_scvi.training.n_cells,
            "n_epochs": result_scvi.training.n_epochs,
            "history": {k: np.asarray(v) for k, v in result_scvi.training.history.items()},
            "seconds": result_scvi.seconds,
        }
    result = integrate_cohort(
        out.obsm["X_pca"],
        keep,
        batch,
        harmony=c.method in ("harmony", "both"),
        other=other,
        theta=c.harmony_theta,
        max_iter=c.harmony_max_iter,
        metrics_max_cells=c.metrics_max_cells,
        seed=c.seed,
    )
    out.obsm.update(result.embeddings)
    out.uns["integrate"] = {
        "method": c.method,
        "params": c.model_dump(mode="json"),
        "metrics": result.metrics,
        "seconds": result.seconds,
        **result.info,
        **({"scvi": scvi_info} if scvi_info else {}),
    }
    _write_cohort(cfg, out, ["ingest", "qc", "preprocess", "integrate"])
    mixing = ", ".join(f"{k} {m['ilisi']:.2f}" for k, m in result.metrics.items())
    return f"integrate: {c.method} on {int(keep.sum()):,} cells by {c.batch_key}; iLISI {mixing}"


def run_graph(cfg: RunConfig, client: Client) -> str:  # runs in the driver
    g = cfg.graph
    out = _previous(cfg, "graph")
    if g.use_rep not in out.obsm:
        msg = (
            f"graph.use_rep is {g.use_rep}, which the integrate stage did not compute "
            f"(integrate.method is {cfg.integrate.method}; cohort.zarr has {sorted(out.obsm)})"
        )
        raise ImmunoprofileError(msg)
    result = build_graph(
        out.obsm[g.use_rep],
        out.obs["qc_pass"].to_numpy(dtype=bool),
        out.obs["sample_id"].astype(str).to_numpy(),
        n_neighbors=g.n_neighbors,
        resolutions=tuple(g.resolutions),
        umap_max_cells=g.umap_max_cells,
        exact_below=g.exact_knn_below,
        seed=g.seed,
    )
    out.obsp["distances"] = result.distances
    out.obsp["connectivities"] = result.connectivities
    for r, labels in result.clusters.items():
        names = [str(i) for i in range(int(labels.max()) + 1)]
        out.obs[f"leiden_{r:g}"] = pd.Categorical.from_codes(labels, categories=names)
    out.obsm["X_umap"] = result.umap
    out.uns["neighbors"] = {
        "connectivities_key": "connectivities",
        "distances_key": "distances",
        "params": {
            "n_neighbors": g.n_neighbors,
            "method": "umap",
            "metric": "euclidean",
            "use_rep": g.use_rep,
        },
    }
    out.uns["graph"] = {
        "params": g.model_dump(mode="json"),
        "seconds": result.seconds,
        **result.info,
    }
    _write_cohort(cfg, out, ["ingest", "qc", "preprocess", "integrate", "graph"])
    counts = ", ".join(
        f"{len(np.unique(v[v >= 0]))} clusters at {r:g}" for r, v in result.clusters.items()
    )
    return f"graph: {g.n_neighbors}-NN graph on {g.use_rep}, {counts}, UMAP in {sum(result.seconds.values()):.1f} s"


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
    a = cfg.annotate
    workdir = Path(cfg.workdir)
    out = _previous(cfg, "annotate")
    if "connectivities" not in out.obsp:
        msg = f"{workdir / COHORT_STORE} has no kNN graph (obsp 'connectivities'): run the graph stage first"
        raise ImmunoprofileError(msg)
    markers = load_markers(a.markers)
    cohort = open_cohort(workdir, chunk_cells=cfg.ingest.chunk_cells)
    keep = out.obs["qc_pass"].to_numpy(dtype=bool)
    totals = out.obs["total_counts"].to_numpy(dtype=np.float64)
    result = annotate_cohort(
        cohort,
        client=client,
        keep=keep,
        total_counts=totals,
        markers=markers,
        connectivities=out.obsp["connectivities"],
        graph_weight=a.graph_weight,
        b_graph_weight=a.b_graph_weight,
        min_confidence=a.min_confidence,
        min_feature_fraction=a.min_feature_fraction,
        min_marker_support=a.min_marker_support,
        fit_max_cells=a.fit_max_cells,
        max_iter=a.max_iter,
        seed=a.seed,
    )
    vocab = {"lineage": LINEAGES, "b_subset": B_SUBSETS}
    record: dict[str, Any] = {
        "params": a.model_dump(mode="json"),
        "markers": {"name": markers.name, "version": markers.version, "sha256": markers.sha256},
        "seconds": result.seconds,
    }
    folder = workdir / ANNOTATE_DIR
    folder.mkdir(exist_ok=True)
    for level, call in result.levels.items():
        out.obs[level] = pd.Categorical(call.labels, categories=[*vocab[level], UNASSIGNED])
        out.obs[f"{level}_confidence"] = call.confidence
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
    record["clusters"] = _cluster_summary(out.obs)
    if a.reference is not None:
        record["reference"] = _transfer(cfg, client, cohort, out, keep, totals)
    out.uns["annotate"] = record
    _write_cohort(cfg, out, ["ingest", "qc", "preprocess", "integrate", "graph", "annotate"])
    lineage = out.obs["lineage"].value_counts()
    b = out.obs["b_subset"].value_counts()
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
    out: ad.AnnData,
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
    b_cells = out.obs["lineage"].to_numpy() == "B"
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
        out.obs[f"{level}_reference"] = pd.Categorical(labels)
        out.obs[f"{level}_reference_confidence"] = prob
        agree = agreement(out.obs[level].to_numpy(dtype=object), labels)
        agree["confusion"] = pd.DataFrame(agree.get("confusion", {})).fillna(0).astype(int)
        record[level] = {"key": key, "n_trained": clf.n_trained, "n_genes": len(clf.genes), **agree}
    return record

"""The stage registry: one declaration per stage, in run order.

A declaration says what the stage is (its algorithm version, the config section its
parameters come from), what it reads and writes in the workdir, and where its run
function is. The command line (`run`, ``--until``, ``--help``), the digests and the skip
logic, add-batch, `validate` and docs/architecture.md all read this table; adding a
stage means adding one declaration here and one package under ``pipeline/``.

Run functions and extra digest inputs are named as ``"module:function"`` and imported
only when a stage runs, so reading the registry imports no stage.
"""

from __future__ import annotations

import fnmatch
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .labels import DESIGN_COLUMNS

# cohort.zarr element names: "obs", "var" (whole frames), "obs/<column>" and
# "<slot>/<key>" for obsm, varm, obsp and uns; fnmatch patterns ("obs/leiden_*").
COHORT_SLOTS = ("obs", "var", "obsm", "varm", "obsp", "uns")


@dataclass(frozen=True)
class Elements:
    """Parts of a workdir. Files and folders are named by `pipeline.workdir.Workdir`
    attribute (``"qc_summary"``, ``"annotate.markers_used"``), never by path."""

    cohort: tuple[str, ...] = ()  # cohort.zarr elements (patterns)
    files: tuple[str, ...] = ()  # written every time (a missing one: the stage runs again)
    conditional_files: tuple[str, ...] = ()  # written under some settings only
    folder: str | None = None  # a folder of the stage's own, its digest in its manifest
    samples: bool = False  # the per-sample count stores and ingest.json
    batches: bool = False  # add-batch's layers (batches/<name>/cells.zarr)


@dataclass(frozen=True)
class Stage:
    name: str
    version: int  # bump when results change for the same inputs and parameters
    summary: str  # what it does, one line (--help, docs/architecture.md)
    run: str  # "module:function": takes a StageContext, returns one line for the terminal
    config: str | None  # the RunConfig section its parameters come from
    reads: Elements
    writes: Elements
    inputs: str | None = None  # "module:function"(cfg, workdir) -> the digest's own part
    cluster: bool = True  # computes on the Dask cluster
    always_run: bool = False  # checks its inputs itself (ingest: per sample)

    def run_function(self) -> Callable[..., str]:
        return _resolve(self.run)

    def inputs_function(self) -> Callable[..., Any] | None:
        return _resolve(self.inputs) if self.inputs else None


def _resolve(ref: str) -> Callable[..., Any]:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


_DESIGN = tuple(f"obs/{c}" for c in DESIGN_COLUMNS)
_BATCH_KEYS = ("obs/batch", "obs/sample_id", "obs/patient_id")  # preprocess/integrate batch_key

STAGES: tuple[Stage, ...] = (
    Stage(
        "ingest", 2, "validated, one AnnData-Zarr store per sample (raw counts, CSR, by cells)",
        run="pipeline.ingest:run_ingest", config="ingest",
        reads=Elements(),
        writes=Elements(samples=True),
        always_run=True,
    ),
    Stage(
        "qc", 2, "per-cell metrics, per-sample adaptive thresholds, doublet scores",
        run="pipeline.qc:run_qc", config="qc",
        reads=Elements(samples=True),
        writes=Elements(
            cohort=("obs", "var", "varm/qc_counts_sum", "varm/qc_counts_sumsq", "uns/qc",
                    "uns/qc_summary"),
            files=("qc_summary",),
        ),
    ),
    Stage(
        "preprocess", 2, "normalize, log1p, highly variable genes, PCA (out of core)",
        run="pipeline.preprocess:run_preprocess", config="preprocess",
        reads=Elements(
            cohort=("obs/qc_pass", "obs/total_counts", *_BATCH_KEYS, "var",
                    "varm/qc_counts_sum", "varm/qc_counts_sumsq", "uns/qc"),
            samples=True,
        ),
        writes=Elements(cohort=("var", "obsm/X_pca", "varm/PCs", "uns/pca")),
    ),
    Stage(
        "integrate", 5, "Harmony on the PCs and/or scVI (trained on a subsample)",
        run="pipeline.integrate:run_integrate", config="integrate",
        reads=Elements(cohort=("obs/qc_pass", *_BATCH_KEYS, "obsm/X_pca", "var"), samples=True),
        writes=Elements(
            cohort=("obsm/X_pca_harmony", "obsm/X_scvi", "uns/integrate"),
            conditional_files=("scvi_model",),
        ),
    ),
    Stage(
        "graph", 4, "kNN graph, Leiden clusters, UMAP of the integrated embedding",
        run="pipeline.graph:run_graph", config="graph",
        reads=Elements(
            cohort=("obs/qc_pass", "obs/sample_id", "obsm/X_pca_harmony", "obsm/X_scvi",
                    "obsm/X_pca"),
        ),
        writes=Elements(
            cohort=("obs/leiden_*", "obsm/X_umap", "obsp/distances", "obsp/connectivities",
                    "uns/graph", "uns/neighbors"),
        ),
    ),
    Stage(
        "annotate", 5, "lineages, then B-cell subsets, with per-cell confidence and label probabilities",
        run="pipeline.annotate:run_annotate", config="annotate",
        inputs="pipeline.annotate:annotate_digest_inputs",
        reads=Elements(
            cohort=("obs/qc_pass", "obs/total_counts", "obs/batch", "obs/leiden_*",
                    "obsp/connectivities"),
            samples=True,
        ),
        writes=Elements(
            cohort=("obs/lineage*", "obs/b_subset*", "obs/cell_type*",
                    "obsm/lineage_probabilities", "obsm/b_subset_probabilities", "uns/annotate"),
            files=("annotate.markers_used",),
        ),
    ),
    Stage(
        "abundance", 2, "sample x cell-type counts, longitudinal GLMM and propeller contrasts, hard labels or label draws",
        run="pipeline.abundance:run_abundance", config="abundance",
        inputs="pipeline.abundance:abundance_digest_inputs",
        reads=Elements(cohort=(*_DESIGN, "obs/qc_pass", "obs/lineage", "obs/b_subset",
                               "obsm/lineage_probabilities", "obsm/b_subset_probabilities"),
                       batches=True),
        writes=Elements(folder="abundance"),
    ),
    Stage(
        "neighbourhoods", 4, "label-free abundance on kNN-graph neighbourhoods (Milo-style), of all cells and within lineages: GLMM per neighbourhood, spatial FDR",
        run="pipeline.neighbourhoods:run_neighbourhoods", config="neighbourhoods",
        inputs="pipeline.neighbourhoods:neighbourhoods_digest_inputs",
        reads=Elements(cohort=(*_DESIGN, "obs/qc_pass", "obs/lineage", "obs/b_subset",
                               "obsm/X_pca_harmony", "obsm/X_scvi", "obsm/X_pca",
                               "obsp/distances"), batches=True),
        writes=Elements(folder="neighbourhoods"),
    ),
    Stage(
        "expression", 2, "pseudobulk per sample x cell type, NB GLM contrasts (PyDESeq2), gene programs",
        run="pipeline.expression:run_expression", config="expression",
        inputs="pipeline.expression:expression_digest_inputs",
        reads=Elements(cohort=(*_DESIGN, "obs/qc_pass", "obs/lineage", "obs/b_subset"),
                       samples=True, batches=True),
        writes=Elements(folder="expression"),
    ),
    Stage(
        "predict", 1, "non-response from baseline composition: penalized logistic regression, nested patient-level CV",
        run="pipeline.predict:run_predict", config="predict",
        inputs="pipeline.predict:predict_digest_inputs",
        reads=Elements(files=("abundance.counts", "expression.program_scores"), batches=True),
        writes=Elements(folder="predict"),
    ),
    Stage(
        "report", 5, "self-contained HTML: key findings, QC, integration, annotation, abundance, neighbourhoods, expression, prediction, provenance",
        run="pipeline.report:run_report", config=None,
        reads=Elements(
            cohort=(*_DESIGN, "obs/qc_pass", "obs/total_counts", "obs/n_genes_by_counts",
                    "obs/pct_counts_mt", "obs/lineage*", "obs/b_subset*", "obs/leiden_*",
                    "obsm/X_umap", "obsm/X_pca", "obsm/X_pca_harmony", "obsm/X_scvi",
                    "uns/integrate"),
            files=("qc_summary", "annotate.root", "stage_log", "neighbourhoods.tests",
                   "neighbourhoods.summary", "neighbourhoods.nhoods", "expression.de",
                   "expression.summary", "expression.not_estimable",
                   "expression.program_tests", "predict.metrics", "predict.patients",
                   "predict.coefficients", "predict.new_patients"),
            folder="abundance",
            samples=True,
            batches=True,
        ),
        writes=Elements(folder="report", files=("report.index",)),
        cluster=False,
    ),
)  # fmt: skip

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
_BY_NAME = {s.name: s for s in STAGES}


def get_stage(name: str) -> Stage:
    try:
        return _BY_NAME[name]
    except KeyError:
        msg = f"unknown stage {name!r}; the stages are {', '.join(STAGE_NAMES)}"
        raise ValueError(msg) from None


def stages_from(name: str) -> tuple[Stage, ...]:
    """The stage ``name`` and every stage after it."""
    return STAGES[STAGE_NAMES.index(get_stage(name).name) :]


def stages_until(name: str) -> tuple[Stage, ...]:
    """Every stage up to and including ``name``."""
    return STAGES[: STAGE_NAMES.index(get_stage(name).name) + 1]


def matches(element: str, patterns: tuple[str, ...]) -> bool:
    """``element`` (e.g. ``obs/lineage``) is one of ``patterns``; a whole frame
    (``obs``) covers its columns."""
    return any(fnmatch.fnmatchcase(element, p) or element.startswith(f"{p}/") for p in patterns)


def writer_of(element: str) -> Stage | None:
    """The stage that writes cohort element ``element``: the most specific declaration
    (``obs/lineage*`` before ``obs``), the earliest stage among equals."""
    best: tuple[int, int] | None = None
    found = None
    for i, stage in enumerate(STAGES):
        for pattern in stage.writes.cohort:
            if matches(element, (pattern,)):
                rank = (-len(pattern.split("*")[0]), i)
                if best is None or rank < best:
                    best, found = rank, stage
    return found


def _describe(elements: Elements) -> str:
    parts = [f"`{e}`" for e in elements.cohort]
    parts += [f"`{f}`" for f in (*elements.files, *elements.conditional_files)]
    if elements.folder:
        parts.append(f"`{elements.folder}/`")
    if elements.samples:
        parts.append("sample stores")
    if elements.batches:
        parts.append("batch layers")
    return ", ".join(parts) or "the samplesheet"


def stage_table() -> str:
    """The registry as a markdown table (docs/architecture.md shows it; a test checks)."""
    rows = [
        "| stage | version | config | reads | writes | on the cluster | what it does |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in STAGES:
        rows.append(
            f"| {s.name} | {s.version} | {s.config or '-'} | {_describe(s.reads)} | "
            f"{_describe(s.writes)} | {'yes' if s.cluster else 'no'} | {s.summary} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    print(stage_table())

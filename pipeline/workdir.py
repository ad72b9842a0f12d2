"""The workdir: every path the pipeline reads or writes, and its typed records.

`Workdir` is the one place that spells a workdir file name: the stages, commands and
notebooks ask it for ``workdir.cohort``, ``workdir.abundance.tests``,
``workdir.batch(name).changes_json`` and so on. The records it reads and writes are
typed: `IngestRecord` (``ingest.json``), the stage digests recorded in ``cohort.zarr``'s
manifest and in the stage folders' manifests, and `BatchLayer` (a batch that add-batch
mapped into the cohort). What the digests are computed from is the stage registry's
business (`pipeline.stages`); the layout is described in docs/architecture.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ImmunoprofileError
from .store import read_manifest, write_text_atomic, writer_lock


@dataclass(frozen=True)
class StageFolder:
    """A stage's own folder, written whole (built under a temporary name) with a
    ``manifest.json`` holding the stage digest."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def digest(self) -> str | None:
        """The digest the folder's outputs were computed with; None when absent."""
        if not self.manifest.exists():
            return None
        return str(json.loads(self.manifest.read_text()).get("digest", ""))

    def basis(self) -> dict[str, Any] | None:
        """What the digest was computed from (`pipeline.stages.stage_bases`); None when
        absent or written before it was recorded."""
        if not self.manifest.exists():
            return None
        basis = json.loads(self.manifest.read_text()).get("basis")
        return dict(basis) if isinstance(basis, dict) else None


@dataclass(frozen=True)
class AnnotateFiles:
    root: Path

    @property
    def markers_used(self) -> Path:
        return self.root / "markers_used.yaml"

    def dotplot_png(self, level: str) -> Path:
        return self.root / f"dotplot_{level}.png"

    def dotplot_csv(self, level: str) -> Path:
        return self.root / f"dotplot_{level}.csv"


@dataclass(frozen=True)
class AbundanceFiles(StageFolder):
    @property
    def counts(self) -> Path:
        return self.root / "counts.csv"

    @property
    def tests(self) -> Path:
        return self.root / "tests.csv"

    @property
    def fits(self) -> Path:
        return self.root / "fits.csv"

    @property
    def counts_zarr(self) -> Path:
        return self.root / "counts.zarr"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def label_uncertainty(self) -> Path:
        """With label draws: pooled against hard-label intervals per test."""
        return self.root / "label_uncertainty.csv"


@dataclass(frozen=True)
class NeighbourhoodsFiles(StageFolder):
    @property
    def nhoods(self) -> Path:
        """AnnData-Zarr: neighbourhoods x samples counts, the neighbourhoods' index cells
        and labels (obs), the samples (var), the membership (uns, cells x neighbourhoods)."""
        return self.root / "nhoods.zarr"

    @property
    def tests(self) -> Path:
        return self.root / "tests.csv"

    @property
    def fits(self) -> Path:
        return self.root / "fits.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def beeswarm_png(self, contrast: str) -> Path:
        return self.root / f"beeswarm_{contrast}.png"


@dataclass(frozen=True)
class ExpressionFiles(StageFolder):
    @property
    def pseudobulk(self) -> Path:
        return self.root / "pseudobulk.zarr"

    @property
    def de(self) -> Path:
        return self.root / "de.csv"

    @property
    def not_estimable(self) -> Path:
        return self.root / "not_estimable.csv"

    @property
    def program_tests(self) -> Path:
        return self.root / "program_tests.csv"

    @property
    def program_scores(self) -> Path:
        return self.root / "program_scores.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


@dataclass(frozen=True)
class PredictFiles(StageFolder):
    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def patients(self) -> Path:
        return self.root / "patients.csv"

    @property
    def model(self) -> Path:
        return self.root / "model.json"

    @property
    def new_patients(self) -> Path:
        return self.root / "new_patients.csv"

    @property
    def coefficients(self) -> Path:
        return self.root / "coefficients.csv"

    @property
    def features(self) -> Path:
        """Every patient's baseline features (the model's inputs)."""
        return self.root / "features.csv"


@dataclass(frozen=True)
class ReportFiles(StageFolder):
    @property
    def index(self) -> Path:
        return self.root / "index.html"


@dataclass(frozen=True)
class BatchFiles:
    """``batches/<name>/``: one batch of new samples mapped by add-batch."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def cells(self) -> Path:
        """The batch's per-cell results (its layer next to cohort.zarr)."""
        return self.root / "cells.zarr"

    @property
    def samplesheet(self) -> Path:
        return self.root / "samplesheet.csv"

    @property
    def qc_summary(self) -> Path:
        return self.root / "qc_summary.csv"

    @property
    def tests_before(self) -> Path:
        return self.root / "tests_before.csv"

    @property
    def tests_before_none(self) -> Path:
        return self.root / "tests_before.none"

    @property
    def de_before(self) -> Path:
        """The cohort's expression/de.csv before this batch (when it had one)."""
        return self.root / "de_before.csv"

    @property
    def expression_changes(self) -> Path:
        return self.root / "expression_changes.csv"

    @property
    def changes_json(self) -> Path:
        return self.root / "changes.json"

    @property
    def changes_md(self) -> Path:
        return self.root / "changes.md"


@dataclass(frozen=True)
class BatchLayer:
    """A complete batch layer: its files and its store's manifest."""

    files: BatchFiles
    manifest: dict[str, Any]

    @property
    def name(self) -> str:
        return self.files.name

    @property
    def digest(self) -> str:
        return str(self.manifest.get("digest", ""))

    @property
    def samples(self) -> list[str]:
        return [str(s) for s in self.manifest.get("samples", [])]

    @property
    def reference(self) -> str | None:
        """The cohort's annotate digest the batch was mapped onto."""
        return self.manifest.get("reference")


@dataclass(frozen=True)
class IngestRecord:
    """``ingest.json``: what the ingest stage wrote (its bytes are the ingest digest)."""

    samples: list[str]
    genes: list[str] = field(default_factory=list)
    gene_symbols: list[str] = field(default_factory=list)
    samplesheet: str | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    gene_policy: str = "error"
    dropped_genes: dict[str, list[str]] = field(default_factory=dict)
    uniform_genes: bool = False  # every store holds `genes` in order: readers need not align
    n_cells: int = 0
    immunoprofile_version: str = ""

    def to_json(self) -> str:
        # the key order of the file the stage has always written (its bytes are hashed)
        keys = ("samplesheet", "samples", "inputs", "gene_policy", "genes", "gene_symbols",
                "dropped_genes", "uniform_genes", "n_cells")  # fmt: skip
        values = asdict(self)
        record = {"stage": "ingest", "immunoprofile_version": self.immunoprofile_version}
        record.update({k: values[k] for k in keys})
        return json.dumps(record, indent=1)

    @classmethod
    def from_json(cls, text: str) -> IngestRecord:
        data = json.loads(text)
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**{"samples": [], **known})


class Workdir:
    """The paths and records of one workdir (``root``); nothing is read until asked."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(os.fspath(root))

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"Workdir({str(self.root)!r})"

    # ---- paths ----------------------------------------------------------------------

    @property
    def samples(self) -> Path:
        """The per-sample count stores, one per sample."""
        return self.root / "samples"

    def sample_store(self, sample_id: str) -> Path:
        return self.samples / f"{sample_id}.zarr"

    @property
    def ingest_record_file(self) -> Path:
        return self.root / "ingest.json"

    @property
    def cohort(self) -> Path:
        """cohort.zarr: every cell's results (AnnData-Zarr, without X)."""
        return self.root / "cohort.zarr"

    @property
    def qc_summary(self) -> Path:
        return self.root / "qc" / "summary.csv"

    @property
    def scvi_model(self) -> Path:
        return self.root / "models" / "scvi"

    @property
    def annotate(self) -> AnnotateFiles:
        return AnnotateFiles(self.root / "annotate")

    @property
    def abundance(self) -> AbundanceFiles:
        return AbundanceFiles(self.root / "abundance")

    @property
    def neighbourhoods(self) -> NeighbourhoodsFiles:
        return NeighbourhoodsFiles(self.root / "neighbourhoods")

    @property
    def expression(self) -> ExpressionFiles:
        return ExpressionFiles(self.root / "expression")

    @property
    def predict(self) -> PredictFiles:
        return PredictFiles(self.root / "predict")

    @property
    def report(self) -> ReportFiles:
        return ReportFiles(self.root / "report")

    @property
    def stage_log(self) -> Path:
        """One JSON line per stage run (`pipeline.commands.stagelog`)."""
        return self.root / "logs" / "stages.jsonl"

    @property
    def run_log(self) -> Path:
        """A human-readable log of the commands run: their stages' lines, warnings and the
        workers' errors (`pipeline.commands.stagelog.run_log`)."""
        return self.root / "logs" / "run.log"

    @property
    def power(self) -> Path:
        """The default output folder of ``immunoprofile power``."""
        return self.root / "power"

    @property
    def batches(self) -> Path:
        return self.root / "batches"

    def batch(self, name: str) -> BatchFiles:
        return BatchFiles(self.batches / name)

    @property
    def refit_samplesheet(self) -> Path:
        """``add-batch --refit``: the cohort's, every batch's and the new samples."""
        return self.root / "samplesheet_refit.csv"

    @property
    def lock_file(self) -> Path:
        """Held by the one command writing to the workdir (`lock`)."""
        return self.root / "lock.json"

    @contextmanager
    def lock(self, command: str | None = None) -> Iterator[list[str]]:
        """Hold the workdir's writer lock (``run`` and ``add-batch`` take it): a second
        writer is refused with the holder's command, pid, host and start; a lock left by
        a killed process on this host is taken over. Yields the lines said about that."""
        with writer_lock(self.lock_file, command=command, what=f"workdir {self.root}") as said:
            yield said

    # ---- records --------------------------------------------------------------------

    def has_ingest_record(self) -> bool:
        return self.ingest_record_file.exists()

    def ingest_record(self) -> IngestRecord:
        try:
            text = self.ingest_record_file.read_text()
        except FileNotFoundError:
            msg = f"{self.root} has no {self.ingest_record_file.name}: run the ingest stage first"
            raise ImmunoprofileError(msg) from None
        try:
            return IngestRecord.from_json(text)
        except (json.JSONDecodeError, TypeError) as exc:
            msg = (
                f"{self.ingest_record_file} is damaged ({exc}): run the ingest stage again "
                "(`immunoprofile run CONFIG --until ingest`)"
            )
            raise ImmunoprofileError(msg) from None

    def write_ingest_record(self, record: IngestRecord) -> None:
        write_text_atomic(self.ingest_record_file, record.to_json())

    def cohort_manifest(self) -> dict[str, Any] | None:
        return read_manifest(self.cohort)

    def batch_folders(self) -> list[BatchFiles]:
        """Every batch folder, complete or not, by name."""
        if not self.batches.is_dir():
            return []
        return [BatchFiles(p) for p in sorted(self.batches.iterdir()) if p.is_dir()]

    def batch_layers(self) -> dict[str, BatchLayer]:
        """Every complete batch layer (its store has a manifest), by name."""
        out = {}
        for files in self.batch_folders():
            manifest = read_manifest(files.cells) if files.cells.exists() else None
            if manifest is not None:
                out[files.name] = BatchLayer(files, manifest)
        return out

    def result_stores(self) -> list[Path]:
        """cohort.zarr, then every complete batch layer's store (by batch name)."""
        return [self.cohort, *(layer.files.cells for layer in self.batch_layers().values())]

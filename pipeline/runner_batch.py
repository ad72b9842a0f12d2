"""``immunoprofile add-batch``: map new samples into an analysed cohort without
recomputing it, then re-fit the abundance models and say what changed.

Nothing of the cohort is rewritten: its sample stores and ``cohort.zarr`` keep their
bytes. The new samples get their own stores (``samples/<sample_id>.zarr``, as ingest
writes them) and the batch its folder ``batches/<name>/``:

- ``samplesheet.csv``: the batch's rows (absolute paths), to map it again when the
  cohort is re-analysed;
- ``cells.zarr``: the new cells' per-cell results (QC columns, ``X_pca``, the integrated
  embedding, ``X_umap``, Leiden clusters, labels and confidences, mapping distances,
  each cell's nearest cohort cells), written atomically with its manifest; its digest
  (the cohort's annotate digest and the new stores' inputs) makes a re-run a no-op;
- ``tests_before.csv``: the cohort's tests before the batch (for the change report);
- ``changes.json`` and ``changes.md``: what changed (`runner_batch_report`).

Steps: ingest (same validation; the cohort's genes) -> the qc stage's rules per sample
-> PCs with the cohort's centre and loadings -> Harmony by Symphony-style mapping onto
the cohort's clusters -> nearest cohort cells (exact) for graph edges, Leiden clusters
and UMAP positions -> the annotate stage's fitted models -> abundance over all cells.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pandas as pd
from distributed import Client

from . import __version__
from .batches import batch_store
from .config import RunConfig
from .errors import ImmunoprofileError, InputError
from .ingest import (
    STAGE_RECORD,
    SampleRow,
    ingest_samples,
    read_samplesheet,
    sample_store_path,
    store_is_current,
)
from .runner_abundance import run_abundance
from .runner_batch_map import Reference, map_cells, read_reference
from .runner_batch_report import write_changes
from .runner_report import run_report
from .store import read_manifest, write_anndata_store, write_text_atomic
from .workdir import (
    ABUNDANCE_DIR,
    BATCHES_DIR,
    REPORT_DIR,
    _sha,
    batch_layers,
    is_current,
    stage_digests,
)

BATCH_VERSION = 1  # bump when the mapping's results change for the same inputs
ANALYSED = ("qc", "preprocess", "integrate", "graph", "annotate")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


# ---- which rows are new ----------------------------------------------------------------


def _batch_name(samplesheet: Path, name: str | None) -> str:
    name = name or samplesheet.stem
    if not _NAME.match(name):
        msg = f"batch name {name!r}: use letters, digits, '_', '-' and '.' only (--name)"
        raise ImmunoprofileError(msg)
    return name


def _owners(workdir: Path, name: str) -> dict[str, str]:
    """Sample id -> where it already is (the cohort, or another batch)."""
    record = json.loads((workdir / STAGE_RECORD).read_text())
    owner = dict.fromkeys(record["samples"], "the cohort")
    for other, manifest in batch_layers(workdir).items():
        if other != name:
            owner.update(dict.fromkeys(manifest.get("samples", []), f"batch '{other}'"))
    return owner


def split_rows(
    workdir: Path, rows: list[SampleRow], name: str
) -> tuple[list[SampleRow], list[str]]:
    """(new rows, ids already present with identical input); a present id with another
    input or metadata is an `InputError` naming it."""
    owner = _owners(workdir, name)
    new, same, problems = [], [], []
    for row in rows:
        where = owner.get(row.sample_id)
        if where is None:
            new.append(row)
        elif store_is_current(row, sample_store_path(workdir, row.sample_id)):
            same.append(row.sample_id)
        else:
            problems.append(
                f"sample '{row.sample_id}' is already in {where} with another input or other "
                f"metadata than {row.path}; give the new sample another sample_id"
            )
    if problems:
        raise InputError("; ".join(problems) + "; nothing was written", problems=problems)
    return new, same


def _check_patients(reference: Reference, rows: list[SampleRow]) -> None:
    """A new sample of a known patient must carry that patient's response."""
    known = reference.obs.drop_duplicates("patient_id").set_index("patient_id")["response"]
    known.index = known.index.astype(str)
    problems = []
    for row in rows:
        patient, response = str(row.metadata["patient_id"]), str(row.metadata["response"])
        if patient in known.index and str(known[patient]) != response:
            problems.append(
                f"sample '{row.sample_id}': patient '{patient}' has response "
                f"'{known[patient]}' in the cohort, not '{response}' (one value per patient)"
            )
    if problems:
        raise InputError("; ".join(problems) + "; nothing was written", problems=problems)


def _digest(cfg: RunConfig, rows: list[SampleRow]) -> str:
    """What the batch's results depend on: the cohort's analysis and the new stores."""
    stores = {}
    for row in rows:
        manifest = read_manifest(sample_store_path(Path(cfg.workdir), row.sample_id)) or {}
        stores[row.sample_id] = [
            manifest.get("inputs", {}).get("sha256"),
            manifest.get("parameters_sha256"),
        ]
    return _sha(
        {
            "cohort": stage_digests(cfg)["annotate"],
            "stores": stores,
            "add_batch": cfg.add_batch.model_dump(mode="json"),
            "version": BATCH_VERSION,
        }
    )


# ---- the command -----------------------------------------------------------------------


def check_analysed(cfg: RunConfig) -> None:
    missing = [s for s in ANALYSED if not is_current(cfg, s)]
    if missing:
        msg = (
            f"{cfg.workdir} is not analysed with this config (stage(s) {', '.join(missing)} "
            "not done or done with other parameters): add-batch maps new samples into an "
            "analysed cohort; run `immunoprofile run CONFIG` first"
        )
        raise ImmunoprofileError(msg)


def _write_rows(path: Path, rows: list[SampleRow]) -> None:
    table = pd.DataFrame(
        [{"sample_id": r.sample_id, **r.metadata, "path": str(r.path.resolve())} for r in rows]
    )
    write_text_atomic(path, table.to_csv(index=False))


def _keep_tests_before(workdir: Path, folder: Path) -> None:
    """The cohort's tests before this batch, saved once (a re-run must not take the
    tests the interrupted run already re-fitted for 'before')."""
    before, none = folder / "tests_before.csv", folder / "tests_before.none"
    if before.exists() or none.exists():
        return
    tests = workdir / ABUNDANCE_DIR / "tests.csv"
    if tests.exists():
        shutil.copyfile(tests, folder / ".tests_before.tmp")
        (folder / ".tests_before.tmp").replace(before)
    else:
        write_text_atomic(none, "the cohort had no abundance results before this batch\n")


def map_batch(cfg: RunConfig, client: Client, name: str, rows: list[SampleRow]) -> str:
    """Map ``rows`` (already ingested) as batch ``name``; skipped when its store is
    current. Returns one line."""
    workdir = Path(cfg.workdir)
    digest = _digest(cfg, rows)
    store = batch_store(workdir, name)
    existing = read_manifest(store) if store.exists() else None
    if existing is not None and existing.get("digest") == digest:
        return f"batch {name}: mapped before with the same inputs, skipped"
    start = time.perf_counter()
    ref = read_reference(cfg)
    _check_patients(ref, rows)
    offset = len(json.loads((workdir / STAGE_RECORD).read_text())["samples"])
    cells, summary, seconds = map_cells(cfg, client, rows, ref, seed_offset=offset)
    folder = store.parent
    _write_rows(folder / "samplesheet.csv", rows)
    write_text_atomic(folder / "qc_summary.csv", summary.to_csv(index=False))
    cells.uns["batch"] = {
        "name": name,
        "samples": [r.sample_id for r in rows],
        "reference_scale": seconds.pop("scale"),
        "seconds": seconds,
    }
    info = {
        "kind": "batch",
        "immunoprofile_version": __version__,
        "digest": digest,
        "reference": stage_digests(cfg)["annotate"],
        "samples": [r.sample_id for r in rows],
        "n_obs": int(cells.n_obs),
    }
    write_anndata_store(store, cells, info)
    kept = int(cells.obs["qc_pass"].sum())
    return (
        f"batch {name}: {len(rows)} samples, {kept:,} of {cells.n_obs:,} cells pass QC, "
        f"mapped in {time.perf_counter() - start:.1f} s"
    )


def add_batch(cfg: RunConfig, samplesheet: Path, client: Client, *, name: str | None = None) -> str:
    """``immunoprofile add-batch``: the lines it prints."""
    workdir = Path(cfg.workdir)
    check_analysed(cfg)
    rows = read_samplesheet(samplesheet)
    name = _batch_name(Path(samplesheet), name)
    new, same = split_rows(workdir, rows, name)
    lines = []
    if same:
        lines.append(
            f"add-batch: {len(same)} sample(s) already in the cohort with identical "
            f"inputs, left as they are: {', '.join(same)}"
        )
    if not new:
        lines.append("add-batch: no new samples; nothing to do")
        return "\n".join(lines)
    existing = batch_layers(workdir).get(name)
    if existing is not None and set(existing["samples"]) != {r.sample_id for r in new}:
        msg = (
            f"batch '{name}' already exists with samples {existing['samples']}; give this "
            "batch another name (--name)"
        )
        raise ImmunoprofileError(msg)
    genes = json.loads((workdir / STAGE_RECORD).read_text())["genes"]
    ingest = ingest_samples(
        new,
        workdir=workdir,
        client=client,
        gene_policy=cfg.ingest.gene_policy,
        reference_genes=genes,
    )
    lines.append(
        f"add-batch: ingest: {ingest.n_samples} samples ({ingest.n_written} written, "
        f"{ingest.n_unchanged} unchanged), {ingest.n_cells:,} cells"
    )
    folder = batch_store(workdir, name).parent
    folder.mkdir(parents=True, exist_ok=True)
    _keep_tests_before(workdir, folder)
    lines.append(map_batch(cfg, client, name, new))
    lines.extend(refit_and_report(cfg, name))
    return "\n".join(lines)


def refit_and_report(cfg: RunConfig, name: str) -> list[str]:
    """Abundance over the cohort and every batch (unless current), then the change report."""
    lines = []
    if not is_current(cfg, "abundance"):
        lines.append(run_abundance(cfg))
    else:
        lines.append("abundance: unchanged inputs and parameters, skipped")
    lines.append(write_changes(cfg, name))
    if (Path(cfg.workdir) / REPORT_DIR).exists() and not is_current(cfg, "report"):
        lines.append(run_report(cfg))  # the workdir had a report: refresh it
    return lines


def remap_stale_batches(cfg: RunConfig, client: Client) -> list[str]:
    """Map again every batch mapped onto an earlier analysis of the cohort (`run` calls
    this before the abundance stage). A batch whose samples have all become part of the
    cohort (`add-batch --refit`, or a samplesheet that lists them) loses its cells store:
    its cells are in cohort.zarr now."""
    workdir = Path(cfg.workdir)
    current = stage_digests(cfg)["annotate"]
    cohort = set(json.loads((workdir / STAGE_RECORD).read_text())["samples"])
    lines = []
    for name, manifest in batch_layers(workdir).items():
        samples = set(manifest.get("samples", []))
        store = batch_store(workdir, name)
        if samples <= cohort:
            shutil.rmtree(store)
            lines.append(f"batch {name}: its samples are part of the cohort now; {store} removed")
        elif samples & cohort:
            msg = (
                f"samples {sorted(samples & cohort)} of batch '{name}' are in the cohort's "
                "samplesheet but the batch's others are not: list all of the batch's "
                f"samples ({workdir / BATCHES_DIR / name / 'samplesheet.csv'}) or none"
            )
            raise ImmunoprofileError(msg)
        elif manifest.get("reference") != current:
            rows = read_samplesheet(store.parent / "samplesheet.csv")
            lines.append(map_batch(cfg, client, name, rows))
    return lines


def refit_samplesheet(cfg: RunConfig, samplesheet: Path) -> Path:
    """``add-batch --refit``: WORKDIR/samplesheet_refit.csv with the cohort's samples
    (the config's samplesheet), every batch's and the new ones."""
    workdir = Path(cfg.workdir)
    if cfg.samplesheet is None:
        msg = "add-batch --refit needs the cohort's samplesheet: set 'samplesheet' in the config"
        raise ImmunoprofileError(msg)
    rows = read_samplesheet(cfg.samplesheet)
    record = workdir / STAGE_RECORD
    if record.exists() and [r.sample_id for r in rows] != json.loads(record.read_text())["samples"]:
        msg = (
            f"{cfg.samplesheet} does not list the samples {workdir} was analysed with; "
            "--refit starts from the config's samplesheet"
        )
        raise ImmunoprofileError(msg)
    for name in batch_layers(workdir):
        rows += read_samplesheet(batch_store(workdir, name).parent / "samplesheet.csv")
    new, _ = split_rows(workdir, read_samplesheet(samplesheet), name="")
    rows += new
    target = workdir / "samplesheet_refit.csv"
    _write_rows(target, rows)
    read_samplesheet(target)  # the combined sheet is valid (one response per patient, ...)
    return target


__all__ = ["BATCHES_DIR", "add_batch", "map_batch", "refit_samplesheet", "remap_stale_batches"]

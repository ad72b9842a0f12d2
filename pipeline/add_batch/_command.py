"""``immunoprofile add-batch``: map new samples into an analysed cohort without
recomputing it, then re-fit the abundance models and say what changed.

Nothing of the cohort is rewritten: its sample stores and ``cohort.zarr`` keep their
bytes. The new samples get their own stores (``samples/<sample_id>.zarr``, as ingest
writes them) and the batch its folder ``batches/<name>/`` (`pipeline.workdir.BatchFiles`):

- ``samplesheet.csv``: the batch's rows (absolute paths), to map it again when the
  cohort is re-analysed;
- ``cells.zarr``: the new cells' per-cell results, written atomically with its manifest
  (`_layer`); its digest makes a re-run a no-op;
- ``tests_before.csv``: the cohort's tests before the batch (for the change report);
- ``changes.json`` and ``changes.md``: what changed (`_changes`).

Steps: ingest (same validation; the cohort's genes) -> the qc stage's rules per sample
-> PCs with the cohort's centre and loadings -> Harmony by Symphony-style mapping onto
the cohort's clusters -> nearest cohort cells (exact) for graph edges, Leiden clusters
and UMAP positions -> the annotate stage's fitted models -> abundance over all cells.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from distributed import Client

from ..config import RunConfig
from ..errors import ImmunoprofileError, InputError
from ..ingest import SampleRow, ingest_samples, read_samplesheet, store_is_current
from ..labels import name_problem
from ..stages import is_current, run_stage, stage_digests, stages_until
from ..store import write_text_atomic
from ..workdir import BatchFiles, Workdir
from ._changes import write_changes, write_expression_changes, write_prediction_changes
from ._layer import map_batch, write_rows


def _batch_name(samplesheet: Path, name: str | None) -> str:
    """``--name``, or the samplesheet's file name without its suffix; checked like a
    sample id (it names the folder batches/<name>/)."""
    chosen = samplesheet.stem if name is None else name
    problem = name_problem(chosen)
    if problem:
        where = "--name" if name is not None else f"taken from the samplesheet {samplesheet.name}"
        msg = f"batch name {chosen!r} ({where}) {problem}; give another name with --name"
        raise ImmunoprofileError(msg)
    return chosen


def _owners(workdir: Workdir, name: str) -> dict[str, str]:
    """Sample id -> where it already is (the cohort, or another batch)."""
    owner = dict.fromkeys(workdir.ingest_record().samples, "the cohort")
    for other, layer in workdir.batch_layers().items():
        if other != name:
            owner.update(dict.fromkeys(layer.samples, f"batch '{other}'"))
    return owner


def split_rows(
    workdir: Workdir, rows: list[SampleRow], name: str
) -> tuple[list[SampleRow], dict[str, str]]:
    """(rows not yet in the workdir or in batch ``name``, {id: where} of those already in
    the cohort or another batch with identical input); a present id with another input or
    metadata is an `InputError` naming it."""
    owner = _owners(workdir, name)
    new: list[SampleRow] = []
    same: dict[str, str] = {}
    problems = []
    for row in rows:
        where = owner.get(row.sample_id)
        if where is None:
            new.append(row)
        elif store_is_current(row, workdir.sample_store(row.sample_id)):
            same[row.sample_id] = where
        else:
            problems.append(
                f"sample '{row.sample_id}' is already in {where} with another input or other "
                f"metadata than {row.path}; give the new sample another sample_id"
            )
    if problems:
        raise InputError("; ".join(problems) + "; nothing was written", problems=problems)
    return new, same


def _group_by_place(owner: dict[str, str]) -> dict[str, list[str]]:
    places: dict[str, list[str]] = {}
    for sample_id, place in owner.items():
        places.setdefault(place, []).append(sample_id)
    return places


def check_analysed(cfg: RunConfig) -> None:
    """Every stage whose outputs the mapping reads is current."""
    analysed = [s.name for s in stages_until("annotate") if not s.always_run]
    missing = [s for s in analysed if not is_current(cfg, s)]
    if missing:
        msg = (
            f"{cfg.workdir} is not analysed with this config (stage(s) {', '.join(missing)} "
            "not done or done with other parameters): add-batch maps new samples into an "
            "analysed cohort; run `immunoprofile run CONFIG` first"
        )
        raise ImmunoprofileError(msg)


def _keep_tests_before(workdir: Workdir, files: BatchFiles) -> None:
    """The cohort's tests (and expression/de.csv) before this batch, saved once (a re-run must not take the
    tests the interrupted run already re-fitted for 'before')."""
    if files.tests_before.exists() or files.tests_before_none.exists():
        return
    if workdir.expression.de.exists():
        staging = files.root / ".de_before.tmp"
        shutil.copyfile(workdir.expression.de, staging)
        staging.replace(files.de_before)
    tests = workdir.abundance.tests
    if tests.exists():
        staging = files.root / ".tests_before.tmp"
        shutil.copyfile(tests, staging)
        staging.replace(files.tests_before)
    else:
        write_text_atomic(
            files.tests_before_none, "the cohort had no abundance results before this batch\n"
        )


def add_batch(cfg: RunConfig, samplesheet: Path, client: Client, *, name: str | None = None) -> str:
    """``immunoprofile add-batch``: the lines it prints."""
    workdir = Workdir(cfg.workdir)
    check_analysed(cfg)
    rows = read_samplesheet(samplesheet)
    name = _batch_name(Path(samplesheet), name)
    new, same = split_rows(workdir, rows, name)
    if same:
        where = "; ".join(
            f"{', '.join(ids)} in {place}" for place, ids in _group_by_place(same).items()
        )
        msg = (
            f"{samplesheet}: {len(same)} sample(s) are already present: {where}; a batch is "
            "added once (re-adding it under its own name is a no-op): leave them out of "
            "this samplesheet; nothing was written"
        )
        raise InputError(msg, problems=[msg])
    lines: list[str] = []
    existing = workdir.batch_layers().get(name)
    if existing is not None and set(existing.samples) != {r.sample_id for r in new}:
        msg = (
            f"batch '{name}' already exists with samples {existing.samples}; give this "
            "batch another name (--name)"
        )
        raise ImmunoprofileError(msg)
    ingest = ingest_samples(
        new,
        workdir=workdir,
        client=client,
        gene_policy=cfg.ingest.gene_policy,
        reference_genes=workdir.ingest_record().genes,
    )
    lines.append(
        f"add-batch: ingest: {ingest.n_samples} samples ({ingest.n_written} written, "
        f"{ingest.n_unchanged} unchanged), {ingest.n_cells:,} cells"
    )
    files = workdir.batch(name)
    files.root.mkdir(parents=True, exist_ok=True)
    _keep_tests_before(workdir, files)
    lines.append(map_batch(cfg, client, name, new))
    lines.extend(refit_and_report(cfg, name, client))
    return "\n".join(lines)


def refit_and_report(cfg: RunConfig, name: str, client: Client) -> list[str]:
    """Abundance over the cohort and every batch (unless current), then the change report;
    the neighbourhoods (the batch's cells counted into the cohort's), the expression models (pseudobulk of every sample, the batch's included), the
    predictions (the saved model applied to the batch's new patients) and the HTML report
    when the workdir had them."""
    lines = []
    if not is_current(cfg, "abundance"):
        lines.append(run_stage("abundance", cfg, client))
    else:
        lines.append("abundance: unchanged inputs and parameters, skipped")
    lines.append(write_changes(cfg, name))
    workdir = Workdir(cfg.workdir)
    if workdir.neighbourhoods.root.exists() and not is_current(cfg, "neighbourhoods"):
        lines.append(run_stage("neighbourhoods", cfg, client))  # the batch's cells counted in
    had_expression = workdir.expression.root.exists()
    if had_expression and not is_current(cfg, "expression"):
        lines.append(run_stage("expression", cfg, client))
    if had_expression:
        lines.append(write_expression_changes(cfg, name))
    if workdir.predict.root.exists():
        if not is_current(cfg, "predict"):
            lines.append(run_stage("predict", cfg, client))  # new patients' predictions
        lines.append(write_prediction_changes(cfg, name))
    if workdir.report.root.exists() and not is_current(cfg, "report"):
        lines.append(run_stage("report", cfg))
    return lines


def remap_stale_batches(cfg: RunConfig, client: Client) -> list[str]:
    """Map again every batch mapped onto an earlier analysis of the cohort (`run` calls
    this before a stage that reads the batch layers). A batch whose samples have all
    become part of the cohort (`add-batch --refit`, or a samplesheet that lists them)
    loses its cells store: its cells are in cohort.zarr now."""
    workdir = Workdir(cfg.workdir)
    current = stage_digests(cfg)["annotate"]
    cohort = set(workdir.ingest_record().samples)
    lines = []
    for name, layer in workdir.batch_layers().items():
        samples = set(layer.samples)
        if samples <= cohort:
            shutil.rmtree(layer.files.cells)
            lines.append(
                f"batch {name}: its samples are part of the cohort now; {layer.files.cells} removed"
            )
        elif samples & cohort:
            msg = (
                f"samples {sorted(samples & cohort)} of batch '{name}' are in the cohort's "
                "samplesheet but the batch's others are not: list all of the batch's "
                f"samples ({layer.files.samplesheet}) or none"
            )
            raise ImmunoprofileError(msg)
        elif layer.reference != current:
            rows = read_samplesheet(layer.files.samplesheet)
            lines.append(map_batch(cfg, client, name, rows))
    return lines


def refit_samplesheet(cfg: RunConfig, samplesheet: Path) -> Path:
    """``add-batch --refit``: WORKDIR/samplesheet_refit.csv with the cohort's samples
    (the config's samplesheet), every batch's and the new ones."""
    workdir = Workdir(cfg.workdir)
    if cfg.samplesheet is None:
        msg = "add-batch --refit needs the cohort's samplesheet: set 'samplesheet' in the config"
        raise ImmunoprofileError(msg)
    rows = read_samplesheet(cfg.samplesheet)
    if (
        workdir.has_ingest_record()
        and [r.sample_id for r in rows] != workdir.ingest_record().samples
    ):
        msg = (
            f"{cfg.samplesheet} does not list the samples {workdir.root} was analysed with; "
            "--refit starts from the config's samplesheet"
        )
        raise ImmunoprofileError(msg)
    for layer in workdir.batch_layers().values():
        rows += read_samplesheet(layer.files.samplesheet)
    new, _ = split_rows(workdir, read_samplesheet(samplesheet), name="")
    rows += new
    target = workdir.refit_samplesheet
    write_rows(target, rows)
    read_samplesheet(target)  # the combined sheet is valid (one response per patient, ...)
    return target

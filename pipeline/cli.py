"""The ``immunoprofile`` command line (also ``python -m pipeline``)."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from cluster.errors import ClusterError

from . import __version__
from .config import RunConfig, load_config
from .errors import ImmunoprofileError
from .registry import STAGE_NAMES, STAGES
from .runtime import limit_heap_arenas

EXIT_ERROR = 1


def _cmd_simulate(args: argparse.Namespace) -> int:
    from cluster.launch import start_client

    from .simulate import simulate_cohort

    cfg = load_config(args.config)
    sim = cfg.simulate
    updates: dict[str, object] = {}
    if args.seed is not None:
        updates["seed"] = args.seed
    if args.null:  # no abundance and no expression differences; patients still vary
        updates["effects"] = []
        updates["expression_effects"] = []
    if updates:
        sim = sim.model_copy(update=updates)
    with start_client(cfg.cluster) as client:
        result = simulate_cohort(sim, out=Path(args.out), client=client, overwrite=args.overwrite)
    skipped = f" ({result.n_skipped} already complete, skipped)" if result.n_skipped else ""
    print(
        f"simulated {result.n_samples} samples, {result.n_cells:,} cells{skipped} in "
        f"{result.seconds:.1f} s; samplesheet: {result.samplesheet}"
        + (f"; later batch: {result.late_samplesheet}" if result.late_samplesheet else "")
    )
    return 0


def _resolve_run_config(args: argparse.Namespace) -> RunConfig:
    cfg = load_config(args.config)
    updates: dict[str, object] = {}
    if args.samplesheet is not None:
        updates["samplesheet"] = Path(args.samplesheet)
    if args.workdir is not None:
        updates["workdir"] = Path(args.workdir)
    return cfg.model_copy(update=updates) if updates else cfg


def _performance_report(args: argparse.Namespace) -> contextlib.AbstractContextManager[object]:
    if not args.performance_report:
        return contextlib.nullcontext()
    from distributed import performance_report

    Path(args.performance_report).parent.mkdir(parents=True, exist_ok=True)
    return performance_report(filename=str(args.performance_report))


def _cmd_run(args: argparse.Namespace) -> int:
    from cluster.launch import start_client

    from .commands import run_stages
    from .commands.plan import format_plan, plan_run
    from .ingest import read_samplesheet
    from .integrate import require_extras
    from .registry import stages_until

    cfg = _resolve_run_config(args)
    if cfg.samplesheet is None:
        msg = (
            f"{args.config}: no samplesheet: set 'samplesheet' in the config or pass --samplesheet"
        )
        raise ImmunoprofileError(msg)
    wanted = [s.name for s in stages_until(args.until or STAGE_NAMES[-1])]
    read_samplesheet(cfg.samplesheet)  # checked before any cluster starts: bad input fails fast
    if args.force and args.force not in wanted:
        msg = f"--force {args.force}: the stage is after --until {args.until}"
        raise ImmunoprofileError(msg)
    if args.dry_run:
        print(format_plan(plan_run(cfg, wanted, force=args.force)))
        return 0
    if "integrate" in wanted:
        require_extras(cfg.integrate)  # scVI asked for without its extra
    with _writer(cfg, args), start_client(cfg.cluster) as client, _performance_report(args) as _:
        run_stages(
            cfg, client, wanted, force=args.force, restart_above=cfg.cluster.worker_restart_bytes()
        )
    return 0


@contextlib.contextmanager
def _writer(cfg: RunConfig, args: argparse.Namespace) -> Iterator[None]:
    """The workdir's writer lock, held by this command (before a cluster starts)."""
    from .workdir import Workdir

    command = shlex.join(["immunoprofile", *args.argv])
    with Workdir(cfg.workdir).lock(command) as said:
        for line in said:
            print(line, file=sys.stderr, flush=True)
        yield


def _cmd_add_batch(args: argparse.Namespace) -> int:
    from .add_batch import check_analysed
    from .ingest import read_samplesheet
    from .integrate import require_extras

    cfg = load_config(args.config)
    if args.workdir is not None:
        cfg = cfg.model_copy(update={"workdir": Path(args.workdir)})
    read_samplesheet(args.samplesheet)  # bad input fails before any cluster starts
    require_extras(cfg.integrate)  # the new cells are encoded as the cohort's were
    if not args.refit:
        check_analysed(cfg)  # before a cluster starts (and checked again under the lock)
    with _writer(cfg, args):
        return _add_batch_locked(args, cfg)


def _add_batch_locked(args: argparse.Namespace, cfg: RunConfig) -> int:
    from cluster.launch import start_client

    from .add_batch import add_batch, refit_samplesheet
    from .commands import run_stages

    if args.refit:
        sheet = refit_samplesheet(cfg, Path(args.samplesheet))
        cfg = cfg.model_copy(update={"samplesheet": sheet})
        print(
            f"add-batch --refit: the cohort with every batch and the new samples: {sheet} "
            "(use it as the samplesheet of later runs)",
            flush=True,
        )
        with start_client(cfg.cluster) as client:
            run_stages(
                cfg, client, list(STAGE_NAMES), restart_above=cfg.cluster.worker_restart_bytes()
            )
        return 0
    with start_client(cfg.cluster) as client:
        print(add_batch(cfg, Path(args.samplesheet), client, name=args.name), flush=True)
    return 0


def _cmd_power(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cluster.launch import start_client

    from .commands import run_power_command
    from .workdir import Workdir

    cfg = load_config(args.config)
    updates: dict[str, object] = {}
    if args.n_cohorts is not None:
        updates["n_cohorts"] = args.n_cohorts
    if args.power_cohorts is not None:
        updates["power_cohorts"] = args.power_cohorts
    try:  # the overrides are checked like the config's own values
        power = type(cfg.power).model_validate({**cfg.power.model_dump(), **updates})
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        raise ImmunoprofileError(problems) from None
    out = Path(args.out) if args.out else Workdir(cfg.workdir).power
    with start_client(cfg.cluster) as client:
        print(run_power_command(cfg.simulate, power, out=out, client=client))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from cluster.launch import start_client

    from .commands import run_predict_command

    cfg = load_config(args.config)
    if args.workdir is not None:
        cfg = cfg.model_copy(update={"workdir": Path(args.workdir)})
    with _writer(cfg, args), start_client(cfg.cluster) as client:
        print(run_predict_command(cfg, client), flush=True)
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from .commands.init import init_project

    cellranger = Path(args.cellranger) if args.cellranger else None
    result = init_project(Path(args.dir), cellranger=cellranger)
    found = (
        f" with {result.n_samples} sample(s) found in {args.cellranger}: fill in their "
        "patient_id, timepoint_months, response and batch"
        if result.n_samples
        else " (an example row: replace it with your samples)"
    )
    print(
        f"init: wrote {result.config} (every setting at its default, commented) and "
        f"{result.samplesheet}{found}; then: immunoprofile run {result.config} --dry-run"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .commands.export import export_h5ad

    result = export_h5ad(args.workdir, Path(args.h5ad), cells=args.cells, genes=args.genes or ())
    print(
        f"export: {result.n_cells:,} cells x {result.n_genes:,} genes (raw counts, every "
        f"per-cell result, embeddings, graph) in {result.path}"
    )
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .commands import validate_workdir

    report = validate_workdir(args.workdir)
    folders = f" and {report.n_folders} stage folder(s)" if report.n_folders else ""
    print(f"validate: {report.n_stores} store(s){folders} in {args.workdir} match their manifests")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="immunoprofile",
        description=(
            "Distributed single-cell immune profiling on Dask: QC, integration, B-cell "
            "subset annotation and longitudinal abundance testing of PBMC cohorts."
        ),
    )
    parser.add_argument("--version", action="version", version=f"immunoprofile {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a traceback on failure")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "simulate",
        help="write a synthetic cohort with planted truth",
        description=(
            "Write a seeded synthetic PBMC cohort to DIR: per-sample count matrices "
            "(10x HDF5 or MTX), samplesheet.csv (and samplesheet_late.csv for patients "
            "that arrive later) and truth/ (per-cell labels, per-sample proportions, "
            "planted effects). Samples are simulated in parallel on the configured cluster; "
            "a re-run with the same parameters skips complete samples."
        ),
    )
    p.add_argument("config", help="YAML run config (its 'simulate' section is used)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, help="override simulate.seed")
    p.add_argument(
        "--null", action="store_true", help="plant no abundance or expression effects (calibration)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace a non-matching --out")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser(
        "init",
        help="write a commented config and a samplesheet to start from",
        description=(
            "Write DIR/config.yaml (the workdir and samplesheet paths, every other setting "
            "listed commented out at its default with what it does) and DIR/samplesheet.csv "
            "(the required columns; with --cellranger one row per Cell Ranger count matrix "
            "found in FOLDER, the columns the data cannot tell left for you to fill). "
            "Existing files are never replaced."
        ),
    )
    p.add_argument("dir", help="folder for config.yaml and samplesheet.csv (created if missing)")
    p.add_argument(
        "--cellranger",
        metavar="FOLDER",
        help="a folder of Cell Ranger outputs (per sample: outs/filtered_feature_bc_matrix.h5 "
        "or the MTX folder)",
    )
    p.set_defaults(func=_cmd_init)

    p = sub.add_parser(
        "export",
        help="write a subset of an analysed workdir as one .h5ad",
        description=(
            "Write the QC-passed cells of WORKDIR (its cohort and added batches; all, or B "
            "cells only) as one .h5ad for a collaborator: raw counts (all genes, or those "
            "named), every per-cell result (QC, clusters, labels, confidences, cell "
            "ontology ids), the embeddings, the kNN graph and the label colours. The counts "
            "are streamed chunk by chunk; the file appears only when complete."
        ),
    )
    p.add_argument("workdir", help="an analysed workdir")
    p.add_argument("--h5ad", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--cells", choices=("all", "b"), default="all", help="all cells or B cells")
    p.add_argument("--genes", nargs="+", metavar="GENE", help="only these genes (symbols or IDs)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "run",
        help="run the pipeline stages in order",
        description=(
            "Run the stages in order, skipping those already done with unchanged inputs "
            "and parameters: " + "; ".join(f"{s.name} ({s.summary})" for s in STAGES) + "."
        ),
    )
    p.add_argument("config", help="YAML run config")
    p.add_argument("--samplesheet", help="override the config's samplesheet")
    p.add_argument("--workdir", help="override the config's workdir")
    p.add_argument(
        "--until",
        choices=STAGE_NAMES,
        metavar="STAGE",
        help=f"stop after STAGE (one of {', '.join(STAGE_NAMES)})",
    )
    p.add_argument(
        "--performance-report",
        metavar="HTML",
        help="write Dask's performance report of the run (task stream, worker profiles)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="say which stages would run and why (changed settings, inputs or algorithm "
        "version; not run yet; forced), without computing anything or starting a cluster",
    )
    p.add_argument(
        "--force",
        choices=STAGE_NAMES,
        metavar="STAGE",
        help="re-run STAGE and every stage after it even when current",
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "add-batch",
        help="add new samples to an analysed workdir",
        description=(
            "Map a new batch of samples into an analysed cohort without recomputing it: "
            "ingest them, apply the cohort's QC rules, project them onto its PCs and Harmony "
            "clusters, place them among its cells (graph, clusters, UMAP), label them with its "
            "fitted models, re-fit the abundance models and write what changed to "
            "WORKDIR/batches/NAME/changes.md. Nothing of the cohort is rewritten; running it "
            "again is a no-op."
        ),
    )
    p.add_argument("config", help="YAML run config of the existing cohort")
    p.add_argument("samplesheet", help="samplesheet of the new samples")
    p.add_argument("--workdir", help="override the config's workdir")
    p.add_argument("--name", help="the batch's name (default: the samplesheet's file name)")
    p.add_argument(
        "--refit",
        action="store_true",
        help="instead of mapping, re-run every stage on the cohort, its batches and the new "
        "samples together (writes WORKDIR/samplesheet_refit.csv)",
    )
    p.set_defaults(func=_cmd_add_batch)

    p = sub.add_parser(
        "power",
        help="type-I error and power of the abundance models, by simulation",
        description=(
            "Simulate abundance tables with the config's 'simulate' design: cohorts of "
            "simulate.n_patients without any planted effect give each contrast's type-I "
            "error; cohorts of each size in power.patients with power.effect planted on "
            "power.cell_type give the power curve. Runs on the configured cluster; writes "
            "type1.csv, type1_by_cell_type.csv, power.csv, power.png and summary.json."
        ),
    )
    p.add_argument("config", help="YAML run config ('simulate' and 'power' sections)")
    p.add_argument("--out", help="output folder (default: WORKDIR/power)")
    p.add_argument("--n-cohorts", type=int, help="override power.n_cohorts (null cohorts)")
    p.add_argument("--power-cohorts", type=int, help="override power.power_cohorts")
    p.set_defaults(func=_cmd_power)

    p = sub.add_parser(
        "predict",
        help="re-run the prediction of non-response on an analysed workdir",
        description=(
            "Run the predict stage again (whether or not it is current): baseline features, "
            "nested patient-level cross-validation with the permutation test, the saved "
            "model (WORKDIR/predict/model.json) and the predictions of patients it was not "
            "trained on. The earlier stages must be current (immunoprofile run)."
        ),
    )
    p.add_argument("config", help="YAML run config of the analysed cohort")
    p.add_argument("--workdir", help="override the config's workdir")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "validate",
        help="check every store of a workdir against its manifest",
        description=(
            "Re-read every store in WORKDIR and compare it with its manifest; check every "
            "stage folder's files (abundance/, report/) against their checksums."
        ),
    )
    p.add_argument("workdir")
    p.set_defaults(func=_cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    limit_heap_arenas()  # before the cluster's and the libraries' threads allocate
    try:
        return int(args.func(args))
    except (ImmunoprofileError, ClusterError) as exc:
        print(f"immunoprofile {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"immunoprofile {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an unexpected failure: one paragraph, traceback on --debug
        if args.debug:
            traceback.print_exc()
        print(
            f"immunoprofile {args.command}: unexpected error: {type(exc).__name__}: {exc}. "
            "This is a bug or an unhandled input; re-run with --debug for the traceback.",
            file=sys.stderr,
        )
        return EXIT_ERROR

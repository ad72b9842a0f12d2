"""``immunoprofile simulate``: a seeded synthetic cohort, sample by sample on the Dask cluster."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from distributed import Client, as_completed
from tqdm import tqdm

from .. import __version__
from ..config import SimulationConfig
from ..errors import ImmunoprofileError
from ..labels import DESIGN_COLUMNS
from ..store import atomic_path
from . import _programs as prog
from ._counts import SubStateGenes, draw_states, plan_cells, simulate_counts
from ._design import CohortDesign, SampleSpec, design_cohort
from ._expression import (
    ExpressionModel,
    ExpressionShifts,
    apply_batch_effect,
    apply_log_shift,
    build_expression_model,
    draw_planted_genes,
    draw_sub_state_genes,
)
from ._writers import write_10x_h5, write_10x_mtx, write_csv_atomic

PARAMS_FILE = ".simulation-params.json"
SAMPLESHEET_COLUMNS = [*DESIGN_COLUMNS, "path"]
EXTRA_COLUMNS = ["sex", "age", "sledai"]


@dataclass(frozen=True)
class SimulationResult:
    out: Path
    samplesheet: Path
    late_samplesheet: Path | None
    n_samples: int
    n_cells: int
    n_skipped: int
    seconds: float


def _barcodes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unique random 16-mer cell barcodes with the 10x ``-1`` suffix."""
    codes = np.unique(rng.integers(0, 4**16, size=int(n * 1.05) + 16, dtype=np.int64))
    codes = rng.permutation(codes)[:n]
    digits = (codes[:, None] >> (2 * np.arange(15, -1, -1))) & 3
    letters = np.frombuffer(b"ACGT", dtype="S1")[digits]
    return np.array([b"".join(row).decode() + "-1" for row in letters], dtype=object)


def _leaf_probs(spec: SampleSpec) -> np.ndarray:
    lin = dict(zip(prog.LINEAGES, spec.lineage_probs, strict=True))
    sub = dict(zip(prog.B_SUBSETS, spec.b_subset_probs, strict=True))
    return np.array([lin[c] if c in lin else lin["B"] * sub[c] for c in prog.CELL_TYPES])


def _input_path(spec: SampleSpec, fmt: str) -> str:
    return f"inputs/{spec.sample_id}.h5" if fmt == "h5" else f"inputs/{spec.sample_id}"


def _realized_proportions(spec: SampleSpec, truth: pd.DataFrame) -> pd.DataFrame:
    """True probabilities and realized counts among clean singlets, at both levels."""
    clean = truth[truth["kind"] == "singlet"]
    n_all = len(clean)
    lin_counts = clean["lineage"].value_counts()
    b_counts = clean.loc[clean["lineage"] == "B", "b_subset"].value_counts()
    n_b = int(lin_counts.get("B", 0))
    p_b = spec.lineage_probs[prog.LINEAGES.index("B")]
    rows = []
    for name, p in zip(prog.LINEAGES, spec.lineage_probs, strict=True):
        rows.append(("lineage", name, "PBMC", p, int(lin_counts.get(name, 0)), n_all))
    for name, p in zip(prog.B_SUBSETS, spec.b_subset_probs, strict=True):
        k = int(b_counts.get(name, 0))
        rows.append(("b_subset", name, "B", p, k, n_b))
        rows.append(("b_subset", name, "PBMC", p * p_b, k, n_all))
    frame = pd.DataFrame(
        rows, columns=["level", "cell_type", "denominator", "probability", "count", "total"]
    )
    frame.insert(0, "sample_id", spec.sample_id)
    return frame


def sub_state_shares(cfg: SimulationConfig, spec: SampleSpec) -> list[float]:
    """Each sub-state's share of its type in this sample: the logit of its fraction, its
    planted shift, a patient and a sample random effect (``patient_sd``, ``sample_sd``)."""
    shares = []
    for j, state in enumerate(cfg.sub_states):
        logit = np.log(state.fraction / (1 - state.fraction))
        if state.group in (spec.response, "all"):
            logit += state.log_ratio.get(spec.timepoint_months, 0.0)
        patient = np.random.default_rng(
            np.random.SeedSequence(cfg.seed, spawn_key=(6, j, spec.patient_index))
        )
        sample = np.random.default_rng(
            np.random.SeedSequence(cfg.seed, spawn_key=(7, j, spec.index))
        )
        logit += patient.normal(0.0, cfg.patient_sd) + sample.normal(0.0, cfg.sample_sd)
        shares.append(float(1 / (1 + np.exp(-logit))))
    return shares


def simulate_sample(
    spec: SampleSpec,
    model: ExpressionModel,
    batch_log_factor: np.ndarray,
    shifts: ExpressionShifts,
    *,
    cfg: SimulationConfig,
    out: Path,
    sub_state_genes: tuple[np.ndarray, ...] = (),
) -> dict[str, Any]:
    """Simulate one sample and write its count matrix and per-cell truth (a pure task)."""
    plan_seed = np.random.SeedSequence(cfg.seed, spawn_key=(100, spec.index))
    rng = np.random.default_rng(plan_seed)
    plan = plan_cells(
        rng,
        model,
        n_cells=spec.n_cells,
        type_probs=_leaf_probs(spec),
        median_umi=cfg.median_umi * spec.library_factor,
        umi_sdlog=cfg.umi_sdlog,
        doublet_rate=cfg.doublet_rate,
        low_quality_rate=cfg.low_quality_rate,
        ifn_score=spec.ifn_score,
        ifn_strength=cfg.ifn_strength,
    )
    barcodes = _barcodes(rng, spec.n_cells)
    states: tuple[SubStateGenes, ...] = ()
    if cfg.sub_states:
        state_types = [model.cell_types.index(s.cell_type) for s in cfg.sub_states]
        state_rng = np.random.default_rng(
            np.random.SeedSequence(cfg.seed, spawn_key=(102, spec.index))
        )
        plan = replace(plan, state=draw_states(state_rng, plan.cell_type,
                                               list(zip(state_types, sub_state_shares(cfg, spec), strict=True))))  # fmt: skip
        states = tuple(SubStateGenes(g, float(2.0**s.log2_fold))
                       for g, s in zip(sub_state_genes, cfg.sub_states, strict=True))  # fmt: skip
    profiles = apply_batch_effect(model.profiles, batch_log_factor)
    profiles = apply_log_shift(profiles, shifts.log_shift(
        *profiles.shape, patient_index=spec.patient_index, group=spec.response,
        month=spec.timepoint_months,
    ))  # fmt: skip
    counts = simulate_counts(
        np.random.SeedSequence(cfg.seed, spawn_key=(101, spec.index)), model, profiles, plan, states
    )
    types = np.array(model.cell_types, dtype=object)
    leaf = types[plan.cell_type]
    is_b = np.isin(leaf, prog.B_SUBSETS)
    heavy = np.array(prog.IGH_CONSTANT, dtype=object)
    light = np.array(prog.IG_LIGHT, dtype=object)
    partner = np.where(plan.partner_type >= 0, types[np.maximum(plan.partner_type, 0)], "")
    truth = pd.DataFrame(
        {
            "barcode": barcodes,
            "cell_type": leaf,
            "lineage": np.where(is_b, "B", leaf),
            "b_subset": np.where(is_b, leaf, ""),
            "kind": plan.kind,
            "doublet_partner": partner,
            "heavy_chain": np.where(plan.heavy >= 0, heavy[np.maximum(plan.heavy, 0)], ""),
            "light_chain": np.where(plan.light >= 0, light[np.maximum(plan.light, 0)], ""),
            "n_counts": np.asarray(counts.sum(axis=1)).ravel(),
        }
    )
    if plan.state is not None:
        names = np.array([s.name for s in cfg.sub_states] + [""], dtype=object)
        truth["sub_state"] = names[plan.state]
    target = out / _input_path(spec, cfg.format)
    writer = write_10x_h5 if cfg.format == "h5" else write_10x_mtx
    writer(target, counts, barcodes, model.genes.ids, model.genes.symbols)
    # The truth file is written last: its presence marks the sample complete.
    write_csv_atomic(out / "truth" / "cells" / f"{spec.sample_id}.csv.gz", truth)
    return {
        "sample_id": spec.sample_id,
        "n_cells": spec.n_cells,
        "nnz": int(counts.nnz),
        "total_counts": int(counts.data.sum(dtype=np.int64)),
        "proportions": _realized_proportions(spec, truth),
    }


def _params_digest(cfg: SimulationConfig) -> dict[str, Any]:
    params = cfg.model_dump(mode="json")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    return {"sha256": digest, "params": params}


def _prepare_out(out: Path, cfg: SimulationConfig, overwrite: bool) -> None:
    """Create ``out``; resume only a folder started with the same parameters."""
    marker = out / PARAMS_FILE
    wanted = _params_digest(cfg)
    if out.exists() and any(out.iterdir()):
        same = marker.exists() and json.loads(marker.read_text())["sha256"] == wanted["sha256"]
        if not same and not overwrite:
            msg = (
                f"output folder {out} is not empty and was not simulated with these "
                "parameters; choose another --out or pass --overwrite to replace it"
            )
            raise ImmunoprofileError(msg)
        if not same:
            shutil.rmtree(out)
    (out / "inputs").mkdir(parents=True, exist_ok=True)
    (out / "truth" / "cells").mkdir(parents=True, exist_ok=True)
    if not marker.exists():
        with atomic_path(marker) as tmp:
            tmp.write_text(json.dumps(wanted, indent=2, sort_keys=True))


def _is_complete(out: Path, spec: SampleSpec, fmt: str) -> bool:
    truth = out / "truth" / "cells" / f"{spec.sample_id}.csv.gz"
    return truth.exists() and (out / _input_path(spec, fmt)).exists()


def _samplesheet(specs: list[SampleSpec], fmt: str) -> pd.DataFrame:
    rows = [
        {
            "sample_id": s.sample_id,
            "patient_id": s.patient_id,
            "timepoint_months": s.timepoint_months,
            "response": s.response,
            "batch": s.batch,
            "path": _input_path(s, fmt),
            **{k: s.metadata[k] for k in EXTRA_COLUMNS},
        }
        for s in specs
    ]
    return pd.DataFrame(rows, columns=SAMPLESHEET_COLUMNS + EXTRA_COLUMNS)


def simulate_cohort(
    cfg: SimulationConfig, *, out: Path, client: Client, overwrite: bool = False
) -> SimulationResult:
    """Write a synthetic cohort to ``out``: inputs, samplesheet(s) and ``truth/``.

    Samples run in parallel on the cluster behind ``client``; a re-run with the same
    parameters skips samples already complete.
    """
    start = time.perf_counter()
    out = Path(out)
    _prepare_out(out, cfg, overwrite)
    design = design_cohort(cfg)
    model = build_expression_model(cfg.n_genes, cfg.seed, cfg.marker_strength, cfg.dn1_memory_genes)
    try:
        shifts, planted = draw_planted_genes(
            model, cfg.expression_effects, seed=cfg.seed, patient_sd=cfg.expression_patient_sd
        )
        sub_state_genes = tuple(draw_sub_state_genes(model, cfg.sub_states, seed=cfg.seed))
    except ValueError as err:
        raise ImmunoprofileError(str(err)) from None
    n_batches = max(s.batch_index for s in design.samples) + 1
    factors = [
        np.random.default_rng(np.random.SeedSequence(cfg.seed, spawn_key=(2, b))).normal(
            0.0, cfg.batch_effect_sd, cfg.n_genes
        )
        for b in range(n_batches)
    ]
    todo = [s for s in design.samples if not _is_complete(out, s, cfg.format)]
    results: list[dict[str, Any]] = []
    if todo:
        model_f = client.scatter(model, broadcast=True, hash=False)
        factor_f = [client.scatter(f, broadcast=True, hash=False) for f in factors]
        shifts_f = client.scatter(shifts, broadcast=True, hash=False)
        run = uuid.uuid4().hex[:8]  # fresh keys: never reuse an earlier call's result
        futures = [
            client.submit(
                simulate_sample,
                s,
                model_f,
                factor_f[s.batch_index],
                shifts_f,
                cfg=cfg,
                out=out,
                sub_state_genes=sub_state_genes,
                key=f"simulate-{s.sample_id}-{run}",
            )
            for s in todo
        ]
        bar = tqdm(
            total=len(futures), desc="simulate", unit="sample", file=sys.stderr, disable=None
        )
        for future in as_completed(futures):
            results.append(future.result())
            bar.update()
        bar.close()
    _write_truth(out, cfg, design, model, results)
    _write_expression_truth(out, cfg, model, planted)
    main = [s for s in design.samples if not s.late]
    late = [s for s in design.samples if s.late]
    sheet = out / "samplesheet.csv"
    write_csv_atomic(sheet, _samplesheet(main, cfg.format))
    late_sheet = None
    if late:
        late_sheet = out / "samplesheet_late.csv"
        write_csv_atomic(late_sheet, _samplesheet(late, cfg.format))
    return SimulationResult(
        out=out,
        samplesheet=sheet,
        late_samplesheet=late_sheet,
        n_samples=len(design.samples),
        n_cells=sum(s.n_cells for s in design.samples),
        n_skipped=len(design.samples) - len(todo),
        seconds=time.perf_counter() - start,
    )


def _write_truth(
    out: Path,
    cfg: SimulationConfig,
    design: CohortDesign,
    model: ExpressionModel,
    results: list[dict[str, Any]],
) -> None:
    truth = out / "truth"
    sample_rows = pd.DataFrame(
        [
            {
                "sample_id": s.sample_id,
                "patient_id": s.patient_id,
                "timepoint_months": s.timepoint_months,
                "response": s.response,
                "batch": s.batch,
                "late": s.late,
                "n_cells": s.n_cells,
                "ifn_score": s.ifn_score,
                "library_factor": s.library_factor,
                **s.metadata,
            }
            for s in design.samples
        ]
    )
    write_csv_atomic(truth / "samples.csv", sample_rows)
    # Realized counts: from this run's results, else re-read from the per-cell truth.
    done = {r["sample_id"]: r["proportions"] for r in results}
    frames = []
    for s in design.samples:
        if s.sample_id not in done:
            cells = pd.read_csv(truth / "cells" / f"{s.sample_id}.csv.gz", keep_default_na=False)
            done[s.sample_id] = _realized_proportions(s, cells)
        frames.append(done[s.sample_id])
    write_csv_atomic(truth / "proportions.csv", pd.concat(frames, ignore_index=True))
    write_csv_atomic(truth / "patients.csv", design.patients)
    write_csv_atomic(truth / "effects.csv", design.effects)
    write_csv_atomic(truth / "group_proportions.csv", design.group_proportions)
    write_csv_atomic(truth / "contrasts.csv", design.contrasts)
    markers = [
        (level, name, gene, cp10k)
        for level, table in (("lineage", prog.LINEAGE_MARKERS), ("b_subset", prog.B_SUBSET_MARKERS))
        for name, genes in table.items()
        for gene, cp10k in genes.items()
    ]
    write_csv_atomic(
        truth / "markers.csv",
        pd.DataFrame(markers, columns=["level", "cell_type", "gene", "cp10k"]),
    )
    genes = pd.DataFrame({"gene_id": model.genes.ids, "symbol": model.genes.symbols})
    genes["sampling"] = "poisson"
    genes.loc[model.dense, "sampling"] = "gamma_poisson"
    write_csv_atomic(truth / "genes.csv", genes)
    meta = {
        "immunoprofile_version": __version__,
        **_params_digest(cfg),
        "n_samples": len(design.samples),
        "n_cells": int(sample_rows["n_cells"].sum()),
    }
    with atomic_path(truth / "simulation.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))


def _write_expression_truth(
    out: Path, cfg: SimulationConfig, model: ExpressionModel, planted: list
) -> None:
    """``truth/expression_effects.csv`` (one row per planted gene and month) and
    ``truth/expression_contrasts.csv`` (the planted log2 fold change of every contrast of
    docs/contracts.md, per cell type and gene; genes not listed have none)."""
    times = cfg.timepoints_months
    rows, contrasts = [], []
    for k, cell_type, genes in planted:
        effect = cfg.expression_effects[k]
        level = effect.level
        for g in genes:
            ident = (level, cell_type, model.genes.symbols[g], model.genes.ids[g])
            for t in times:
                rows.append((*ident, effect.group, t, effect.log2_fold.get(t, 0.0)))
            fold = {(grp, t): effect.log2_fold.get(t, 0.0) if effect.group in (grp, "all")
                    else 0.0 for grp in ("responder", "non_responder") for t in times}  # fmt: skip
            for t in times:
                contrasts.append((*ident, f"response@month{t}",
                                  fold["non_responder", t] - fold["responder", t]))  # fmt: skip
            for t in times[1:]:
                d_r = fold["responder", t] - fold["responder", 0]
                d_n = fold["non_responder", t] - fold["non_responder", 0]
                contrasts.append((*ident, f"time{t}@responder", d_r))
                contrasts.append((*ident, f"time{t}@non_responder", d_n))
                contrasts.append((*ident, f"response:time{t}", d_n - d_r))
    ident_cols = ["level", "cell_type", "gene", "gene_id"]
    effects = pd.DataFrame(rows, columns=[*ident_cols, "group", "timepoint_months", "log2_fold"])
    table = pd.DataFrame(contrasts, columns=[*ident_cols, "contrast", "true_log2fc"])
    # a gene planted by two effects in one type: their folds add up
    table = table.groupby([*ident_cols, "contrast"], as_index=False, sort=False)[
        "true_log2fc"
    ].sum()
    write_csv_atomic(out / "truth" / "expression_effects.csv", effects)
    write_csv_atomic(out / "truth" / "expression_contrasts.csv", table)

"""The expression stage in a workdir: per-cell labels and the counts of every sample
(cohort and batch layers) in; ``WORKDIR/expression/`` out (built under a temporary name
with its manifest): the pseudobulk as AnnData, the DE table, the contrasts that could
not be estimated and why, and a summary.

Per cell type: sample x cell type groups below ``min_cells`` cells are left out of the
models (kept in the pseudobulk, flagged); a cell type with fewer than
``min_samples_per_group`` kept samples of responders or of non-responders is not tested;
genes pass edgeR's ``filterByExpr`` on the across-patients design; the fits (two per cell
type, `pipeline.expression._models`) run in parallel on the cluster.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata as ad
import numpy as np
import pandas as pd
import zarr
from anndata.io import read_elem
from distributed import as_completed

from ..abundance import contrast_names
from ..config import RunConfig
from ..errors import ImmunoprofileError
from ..labels import DESIGN_COLUMNS
from ..runtime import release_memory
from ..store import TMP_MARK, json_sha256, read_manifest, scratch_folder
from ..workdir import ExpressionFiles, Workdir
from ._kernels import filter_by_expr
from ._models import DE_COLUMNS, cell_type_designs, fit_deseq2
from ._programs import (
    PROGRAM_TEST_COLUMNS,
    ProgramFileError,
    Programs,
    fit_program_models,
    load_programs,
    program_scores,
    with_qvalues,
)
from ._pseudobulk import (
    create_sums,
    gene_names,
    pseudobulk_counts,
    pseudobulk_groups,
    sample_keys,
    sample_rows,
    sums_dtype,
    take_rows,
)

if TYPE_CHECKING:
    from ..config_analysis import ExpressionConfig
    from ..stages import StageContext

OBS_COLUMNS = (*DESIGN_COLUMNS, "qc_pass", "lineage", "b_subset")
DE_TABLE_COLUMNS = ["level", "cell_type", *DE_COLUMNS[:-1], "n_samples", "method"]
METHODS = ("deseq2_across_patients", "deseq2_patients_blocked")


def expression_digest_inputs(cfg: RunConfig, workdir: Workdir) -> dict[str, Any]:
    """Besides its parameters, the results depend on every batch layer and on the program
    file's contents."""
    return {
        "params": cfg.expression.model_dump(mode="json"),
        "programs_sha256": load_programs(cfg.expression.programs).sha256,
        "batches": {name: layer.digest for name, layer in workdir.batch_layers().items()},
    }


def pseudobulk_anndata(
    groups: pd.DataFrame, sums: np.ndarray | None, design: pd.DataFrame, var: pd.DataFrame
) -> ad.AnnData:
    """obs: one row per sample x cell type (`sample_id, level, cell_type, n_cells` and
    the samplesheet's design columns); X: the summed raw counts (None: none, written
    apart by `write_x`); var: the genes."""
    obs = groups.merge(design, on="sample_id", how="left")
    obs.index = (obs["sample_id"] + ":" + obs["level"] + ":" + obs["cell_type"]).to_numpy()
    return ad.AnnData(X=sums, obs=obs, var=var.copy())


def write_x(store: Path, sums: zarr.Array, block: int = 512) -> None:
    """The stored sums as the X of the AnnData-Zarr ``store`` (written without one),
    ``block`` groups at a time (as anndata writes a dense X: its encoding attributes)."""
    group = zarr.open_group(str(store), mode="r+")
    n, m = sums.shape
    x = group.create_array("X", shape=(n, m), dtype=sums.dtype,
                           chunks=(max(1, min(n, block)), max(1, min(m, 2048))))  # fmt: skip
    x.attrs.update({"encoding-type": "array", "encoding-version": "0.2.0"})
    for a in range(0, n, block):
        x[a : a + block] = take_rows(sums, np.arange(a, min(a + block, n)))
    zarr.consolidate_metadata(str(store))  # anndata reads the consolidated metadata


def with_samplesheet_columns(
    design: pd.DataFrame, manifests: dict[str, dict[str, Any]]
) -> pd.DataFrame:
    """``design`` (one row per sample) with the samplesheet's further columns (sex, age,
    sledai, ...), from the sample stores' manifests (ingest records each sample's
    samplesheet row); text columns categorical, missing where a later batch's samplesheet
    lacks a column."""
    meta = pd.DataFrame([{**m.get("parameters", {}).get("metadata", {}), "sample_id": sid}
                         for sid, m in manifests.items()])  # fmt: skip
    extra = [c for c in meta.columns if c not in design.columns]
    for c in extra:
        if not pd.api.types.is_numeric_dtype(meta[c]):
            meta[c] = meta[c].astype("category")
    return design.merge(meta[["sample_id", *extra]], on="sample_id", how="left")


def previous_pseudobulk(files: ExpressionFiles, keys: dict[str, str]) -> set[str]:
    """The samples whose pseudobulk rows an earlier, complete run of the stage computed
    from what they would be computed from now (`sample_keys`): add-batch computes only
    the new samples'."""
    if not files.manifest.exists() or not files.pseudobulk.exists():
        return set()
    try:
        group = zarr.open_group(str(files.pseudobulk), mode="r")
        old = read_elem(group["uns"]) if "uns" in group else {}
    except (KeyError, OSError, ValueError):
        return set()
    old_keys = old.get("sample_keys", {})
    return {s for s, k in keys.items() if old_keys.get(s) == k}


def reuse_rows(files: ExpressionFiles, groups: pd.DataFrame) -> np.ndarray:
    """The earlier run's summed counts of ``groups`` (sample x cell type rows; only those
    rows are read), in the stored dtype."""
    store = zarr.open_group(str(files.pseudobulk), mode="r")
    obs = read_elem(store["obs"])
    names = groups["sample_id"] + ":" + groups["level"] + ":" + groups["cell_type"]
    rows = pd.Index(obs.index).get_indexer(names)
    if (rows < 0).any() or not np.array_equal(
        obs["n_cells"].to_numpy()[rows], groups["n_cells"].to_numpy()
    ):
        msg = f"{files.pseudobulk} does not hold the groups its sample keys promise"
        raise RuntimeError(msg)
    x = store["X"]
    assert isinstance(x, zarr.Array)
    return np.asarray(x.get_orthogonal_selection((rows, slice(None))))


class DETable:
    """The DE table as it arrives, one piece per cell type x contrast in compact dtypes
    (categorical text, genes as codes), written in the order of docs/contracts.md (cell types as
    tested, contrasts as `contrast_names`, p-values ascending) without ever holding the
    whole table twice: at the study's size it has a million rows."""

    def __init__(self, todo: list, contrasts: list[str], genes: np.ndarray) -> None:
        self.order = {(lv, ct): i for i, (lv, ct, _) in enumerate(todo)}
        self.rank = {c: i for i, c in enumerate(contrasts)}
        self.dtypes: dict[str, Any] = {
            "level": pd.CategoricalDtype(list(dict.fromkeys(lv for lv, _, _ in todo))),
            "cell_type": pd.CategoricalDtype(list(dict.fromkeys(ct for _, ct, _ in todo))),
            "gene": pd.CategoricalDtype(pd.unique(genes)),
            "contrast": pd.CategoricalDtype(contrasts),
            "method": pd.CategoricalDtype(list(METHODS)),
            "n_samples": np.int32,
        }
        self.pieces: dict[tuple[int, int], pd.DataFrame] = {}

    def add(self, level: str, cell_type: str, method: str, table: pd.DataFrame) -> None:
        """One fit's table (`fit_deseq2`: `DE_COLUMNS`, genes x contrasts)."""
        table = table.assign(level=level, cell_type=cell_type, method=method)
        table = table.astype(self.dtypes)[DE_TABLE_COLUMNS]
        for contrast, piece in table.groupby("contrast", observed=True, sort=False):
            key = (self.order[level, cell_type], self.rank[str(contrast)])
            self.pieces[key] = piece.sort_values("pvalue", kind="stable")

    def __len__(self) -> int:
        return sum(len(p) for p in self.pieces.values())

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as out:
            out.write(",".join(DE_TABLE_COLUMNS) + "\n")
            for key in sorted(self.pieces):
                self.pieces[key].to_csv(out, header=False, index=False)

    def calls(self, alpha: float) -> pd.DataFrame:
        """Per cell type x contrast with calls: the number of genes at q < ``alpha``."""
        rows = [{"level": str(p["level"].iloc[0]), "cell_type": str(p["cell_type"].iloc[0]),
                 "contrast": str(p["contrast"].iloc[0]), "n": int((p["qvalue"] < alpha).sum())}
                for _, p in sorted(self.pieces.items())]  # fmt: skip
        return pd.DataFrame(
            [r for r in rows if r["n"]], columns=["level", "cell_type", "contrast", "n"]
        )


def plan_tests(
    obs: pd.DataFrame, params: ExpressionConfig
) -> tuple[list[tuple[str, str, pd.DataFrame]], list[dict[str, str]]]:
    """Cell types to test with their kept groups (rows of ``obs``), and the skipped ones
    with the reason."""
    todo, skipped = [], []
    for (level, cell_type), rows in obs.groupby(["level", "cell_type"], sort=False):
        if params.cell_types and cell_type not in params.cell_types:
            continue
        kept = rows[rows["n_cells"] >= params.min_cells]
        per_group = kept.drop_duplicates("sample_id")["response"].value_counts()
        short = [g for g in ("responder", "non_responder")
                 if per_group.get(g, 0) < params.min_samples_per_group]  # fmt: skip
        if short:
            have = ", ".join(f"{per_group.get(g, 0)} {g}" for g in ("responder", "non_responder"))
            skipped.append({
                "level": str(level), "cell_type": str(cell_type),
                "reason": (f"{have} samples with at least {params.min_cells} cells; "
                           f"expected at least {params.min_samples_per_group} of each"),
            })  # fmt: skip
            continue
        todo.append((str(level), str(cell_type), kept))
    return todo, skipped


def fit_stored(
    sums: str, rows: np.ndarray, cols: np.ndarray, genes: list[str], fit: Any
) -> tuple[pd.DataFrame, list[str]]:
    """`fit_and_release` of the rows ``rows`` and columns ``cols`` of the stored sums at
    ``sums`` (read by the worker: the driver never holds them)."""
    counts = zarr.open_array(sums, mode="r").get_orthogonal_selection((rows, cols))
    return fit_and_release(np.asarray(counts), genes, fit)


def fit_and_release(
    counts: np.ndarray, genes: list[str], fit: Any
) -> tuple[pd.DataFrame, list[str]]:
    """`fit_deseq2` as a worker's task that hands the fit's freed heap back when done
    (~0.4 GB of samples x genes arrays at 528 samples x 14,000 genes; ~0.1 s of ~40), so
    that fits one after another on a worker do not each start above the last."""
    try:
        return fit_deseq2(counts, genes, fit)
    finally:
        release_memory()


SUMS = "expression-sums"  # the scratch folder of the pseudobulk sums, in the workdir


def run_expression(ctx: StageContext) -> str:
    """Pseudobulk, filter, fit, write ``WORKDIR/expression/``; one summary line. The sums
    are kept on disk in a scratch folder of the workdir while the stage runs."""
    root = ctx.workdir.root
    for left in root.glob(f".{SUMS}{TMP_MARK}*"):  # of a killed run
        shutil.rmtree(left, ignore_errors=True)
    with scratch_folder(root, SUMS) as scratch:
        return _run_expression(ctx, scratch)


def _run_expression(ctx: StageContext, scratch: Path) -> str:
    params = ctx.cfg.expression
    client = ctx.cluster
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    cells = ctx.read_obs(OBS_COLUMNS, batches=True)
    stores, var = ctx.sample_stores(batches=True)
    manifests = {sid: read_manifest(store) or {} for sid, store in stores.items()}
    rows = sample_rows(cells["sample_id"])
    sizes = [int(m.get("n_obs", -1)) for m in manifests.values()]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()
    expected = [(s, a, n) for s, a, n in zip(stores, starts, sizes, strict=True) if n]
    if [(s, int(r[0]), len(r)) for s, r in rows.items()] != expected:
        msg = ("the cells of cohort.zarr and the batch layers are not in the order of the "
               "sample stores; run the stages again (immunoprofile run)")  # fmt: skip
        raise RuntimeError(msg)
    text = {c: str for c in DESIGN_COLUMNS if c != "timepoint_months"}
    first = [r[0] for r in rows.values()]
    design = cells[list(DESIGN_COLUMNS)].iloc[first].astype(text).reset_index(drop=True)
    design = with_samplesheet_columns(design, manifests)
    identity = {sid: json_sha256(m) for sid, m in manifests.items()}
    keys = sample_keys(cells, rows, identity, json_sha256([str(g) for g in var.index]))
    groups, codes = pseudobulk_groups(cells, rows)
    del cells
    previous = previous_pseudobulk(ctx.workdir.expression, keys)
    reused = groups["sample_id"].isin(previous).to_numpy()
    for sid in previous:
        codes[rows[sid]] = -1
    dtype = sums_dtype([m.get("count_sum") for m in manifests.values()])
    sums = create_sums(scratch / "sums.zarr", len(groups), len(var), dtype)
    pseudobulk_counts(stores, rows, codes, len(groups), var.index, client=client, dtype=dtype,
                      out=sums)  # fmt: skip
    del codes
    release_memory()  # the pseudobulk's reads leave heap on both sides; the fits need it
    client.run(release_memory)
    again = np.flatnonzero(reused)
    for a in range(0, again.size, 512):  # the earlier run's rows, a block at a time
        block = again[a : a + 512]
        sums.set_orthogonal_selection(
            (block, slice(None)), reuse_rows(ctx.workdir.expression, groups.iloc[block])
        )
    seconds["pseudobulk"] = time.perf_counter() - t

    t = time.perf_counter()
    pb = pseudobulk_anndata(groups, None, design, var)
    pb.uns["sample_keys"] = keys
    pb.obs["in_models"] = pb.obs["n_cells"] >= params.min_cells
    genes = np.array(gene_names(var), dtype=object)
    todo, skipped = plan_tests(pb.obs.reset_index(drop=True), params)
    jobs: list[tuple[float, str, str, Any, np.ndarray, np.ndarray]] = []
    n_genes: dict[str, int] = {}
    not_estimable: list[dict[str, str]] = []
    notes: list[str] = []
    for level, cell_type, kept in todo:
        key = f"{level}/{cell_type}"
        plans = cell_type_designs(kept[list(DESIGN_COLUMNS)], batch=params.batch_covariate)
        not_estimable += [{"level": level, "cell_type": cell_type, "contrast": c, "reason": r}
                          for c, r in plans.not_estimable.items()]  # fmt: skip
        if not plans.fits:
            continue
        rows = kept.index.to_numpy()
        keep_genes = filter_by_expr(take_rows(sums, rows), plans.fits[0].x.to_numpy(),
                                    min_count=params.min_count,
                                    min_total_count=params.min_total_count)  # fmt: skip
        n_genes[key] = int(keep_genes.sum())
        if not keep_genes.any():
            notes.append(f"{key}: no gene passes filterByExpr; not tested")
            continue
        by_sample = pd.Series(rows, index=kept["sample_id"].to_numpy())
        for fit in plans.fits:
            notes += [f"{key}: {n}" for n in fit.notes]
            fit_rows = by_sample.loc[fit.x.index].to_numpy()
            cost = len(fit_rows) * n_genes[key] * (1.5 if fit.name == "patients_blocked" else 1.0)
            jobs.append((cost, level, cell_type, fit, fit_rows, keep_genes))
    # the costliest fits first, so the last to finish are short; a few in flight at a
    # time, each reading its counts from the stored sums when it runs
    jobs.sort(key=lambda j: -j[0])
    meta: dict[Any, tuple[str, str, str]] = {}
    stored = str(scratch / "sums.zarr")

    def submit(job: tuple[float, str, str, Any, np.ndarray, np.ndarray]) -> Any:
        _, level, cell_type, fit, fit_rows, keep_genes = job
        future = client.submit(fit_stored, stored, fit_rows, np.flatnonzero(keep_genes),
                               list(genes[keep_genes]), fit, pure=False)  # fmt: skip
        meta[future.key] = (level, cell_type, fit.name)
        return future

    in_flight = 2 * max(1, len(client.scheduler_info().get("workers", {})))
    running = as_completed([submit(job) for job in jobs[:in_flight]])
    waiting = jobs[in_flight:]
    programs, found = _submit_programs(ctx, todo, stored, var)
    months = sorted({float(t) for t in design["timepoint_months"]})
    de = DETable(todo, contrast_names(months), genes)
    for future in running:
        if waiting:
            running.add(submit(waiting.pop(0)))
        level, cell_type, name = meta.pop(future.key)
        table, fit_notes = future.result()
        future.release()
        de.add(level, cell_type, f"deseq2_{name}", table)
        notes += [f"{level}/{cell_type}: {n}" for n in fit_notes]
    del jobs
    program_tables, score_tables = _program_tables(todo, client.gather(programs))
    seconds["models"] = time.perf_counter() - t

    calls = de.calls(params.alpha)
    summary = {
        "n_groups": len(groups),
        "n_in_models": int(pb.obs["in_models"].sum()),
        "samples_summed": len(keys) - len(previous),
        "samples_reused": sorted(previous),
        "cell_types_tested": [f"{lv}/{ct}" for lv, ct, _ in todo],
        "cell_types_skipped": skipped,
        "genes_tested": n_genes,
        "not_estimable": not_estimable,
        "calls_at_alpha": calls.to_dict(orient="records"),
        "alpha": params.alpha,
        "notes": list(dict.fromkeys(notes)),
        "programs": found,
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    with ctx.stage_folder() as (out, manifest):
        pb.write_zarr(out.pseudobulk)
        write_x(out.pseudobulk, sums)
        de.write_csv(out.de)
        pd.DataFrame(not_estimable, columns=["level", "cell_type", "contrast", "reason"]).to_csv(
            out.not_estimable, index=False
        )
        program_tables.to_csv(out.program_tests, index=False)
        score_tables.to_csv(out.program_scores, index=False)
        out.summary.write_text(json.dumps(summary, indent=2, default=str))
        manifest.update(n_groups=len(groups), n_tests=len(de))
    n_calls = int(calls["n"].sum())
    return (
        f"expression: {len(groups):,} sample x cell-type pseudobulks ({len(keys) - len(previous)} "
        f"samples summed, {len(previous)} unchanged), {len(todo)} cell types "
        f"tested ({len(skipped)} skipped), {len(de):,} tests, {n_calls:,} at q < "
        f"{params.alpha}; outputs in {ctx.workdir.expression.root}"
    )


def programs_stored(
    sums: str, rows: np.ndarray, symbols: list[str], programs: Programs, samples: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """One cell type's program scores (samples x programs, `program_scores`) and their
    tests (`fit_program_models`) from the rows ``rows`` of the stored sums at ``sums``
    (``samples``: their design columns), as a worker's task: the driver never reads the
    counts. None when no program is scored."""
    counts = zarr.open_array(sums, mode="r").get_orthogonal_selection((rows, slice(None)))
    score, _ = program_scores(np.asarray(counts), symbols, programs)
    if score.empty:
        return None
    table, _ = fit_program_models(score, samples)
    return table, score


def _submit_programs(
    ctx: StageContext, todo: list, stored: str, var: pd.DataFrame
) -> tuple[list[Any], dict[str, Any]]:
    """A task per tested cell type scoring and testing the programs (`programs_stored`),
    and what the program file holds and the data have of it."""
    try:
        programs = load_programs(ctx.cfg.expression.programs)
    except (OSError, ProgramFileError) as err:
        raise ImmunoprofileError(f"expression.programs: {err}") from None
    symbols = [str(s) for s in var.get("gene_symbols", pd.Series(var.index, index=var.index))]
    client = ctx.cluster
    shared = client.scatter([symbols, programs], broadcast=True, hash=False)
    futures = [
        client.submit(programs_stored, stored, kept.index.to_numpy(), *shared,
                      kept[list(DESIGN_COLUMNS)].reset_index(drop=True), pure=False)
        for _, _, kept in todo
    ]  # fmt: skip
    present = set(symbols)
    found = {"file": programs.path, "version": programs.version, "sha256": programs.sha256,
             "genes_found": {p: f"{sum(g in present for g in set(genes))} of {len(set(genes))}"
                             for p, genes in programs.genes.items()}}  # fmt: skip
    return futures, found


def _program_tables(
    todo: list, results: list[tuple[pd.DataFrame, pd.DataFrame] | None]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The program tests (BH q-values within each contrast) and the scores in long form,
    cell types as tested, from `programs_stored`'s ``results`` (one per ``todo`` entry)."""
    tests, scores = [], []
    for (level, cell_type, kept), result in zip(todo, results, strict=True):
        if result is None:
            continue
        table, score = result
        tests.append(table.assign(level=level, cell_type=cell_type, method="lmm"))
        long = score.assign(sample_id=kept["sample_id"].to_numpy()).melt(
            id_vars="sample_id", var_name="program", value_name="score"
        )
        scores.append(long.assign(level=level, cell_type=cell_type))
    program_tests = (with_qvalues(pd.concat(tests, ignore_index=True))[PROGRAM_TEST_COLUMNS]
                     if tests else pd.DataFrame(columns=PROGRAM_TEST_COLUMNS))  # fmt: skip
    score_columns = ["sample_id", "level", "cell_type", "program", "score"]
    program_scores_long = (pd.concat(scores, ignore_index=True)[score_columns] if scores
                           else pd.DataFrame(columns=score_columns))  # fmt: skip
    return program_tests, program_scores_long

"""The ingest stage: samplesheet -> one validated AnnData-Zarr store per sample."""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import Client, as_completed
from tqdm import tqdm

from .. import __version__
from ..errors import InputError
from ..store import remove_staging_leftovers, write_text_atomic
from ._checks import compare_gene_sets
from ._readers import Header
from ._sample import ingest_sample, sample_header
from ._samplesheet import SampleRow

SAMPLES_DIR = "samples"
STAGE_RECORD = "ingest.json"


@dataclass(frozen=True)
class IngestResult:
    n_samples: int
    n_written: int
    n_unchanged: int
    n_cells: int
    n_genes: int
    dropped_genes: dict[str, int]
    seconds: float


def sample_store_path(workdir: Path, sample_id: str) -> Path:
    return Path(workdir) / SAMPLES_DIR / f"{sample_id}.zarr"


def _progress(futures: list[Any], desc: str) -> list[Any]:
    results = []
    with tqdm(total=len(futures), desc=desc, unit="sample", file=sys.stderr, disable=None) as bar:
        for future in as_completed(futures):
            results.append(future.result())
            bar.update()
    return results


def _fail(problems: list[str], intro: str) -> None:
    msg = f"{intro}: " + "; ".join(problems)
    raise InputError(msg, problems=problems)


def ingest_samples(
    rows: list[SampleRow],
    *,
    workdir: Path,
    client: Client,
    gene_policy: str = "error",
    samplesheet: Path | None = None,
) -> IngestResult:
    """Write ``samples/<sample_id>.zarr`` for every row, in parallel on the cluster.

    Complete stores whose inputs and parameters are unchanged are left untouched; a changed
    input is rebuilt; leftovers of a killed run are removed first. All problems of all
    samples are reported together (`InputError`); stores of good samples stay complete.
    """
    start = time.perf_counter()
    workdir = Path(workdir)
    samples_dir = workdir / SAMPLES_DIR
    samples_dir.mkdir(parents=True, exist_ok=True)
    remove_staging_leftovers(samples_dir)
    # Task keys unique to this call: a key still held by the client from an earlier call
    # would return that call's (possibly stale) result.
    run = uuid.uuid4().hex[:8]

    headers: list[Header] = client.gather(
        client.map(
            sample_header, rows, key=[f"header-{r.sample_id}-{run}" for r in rows], pure=False
        )
    )
    problems = [
        f"sample '{r.sample_id}': {p}"
        for r, h in zip(rows, headers, strict=True)
        for p in h.problems
    ]
    problems += [
        f"sample '{r.sample_id}': {r.path} has no cells"
        for r, h in zip(rows, headers, strict=True)
        if not h.problems and h.n_cells == 0
    ]
    if problems:
        _fail(problems, f"{len(problems)} problem(s) in the input files; nothing was written")
    genes, dropped, gene_problems = compare_gene_sets(
        {r.sample_id: h.gene_ids for r, h in zip(rows, headers, strict=True)}, policy=gene_policy
    )
    if gene_problems:
        _fail(gene_problems, "the samples' gene sets differ; nothing was written")

    futures = [
        client.submit(
            ingest_sample,
            r,
            target=sample_store_path(workdir, r.sample_id),
            key=f"ingest-{r.sample_id}-{run}",
            pure=False,
        )
        for r in rows
    ]
    results = {res["sample_id"]: res for res in _progress(futures, "ingest")}
    failed = [
        f"sample '{sid}': {p}"
        for sid, res in results.items()
        if res["status"] == "failed"
        for p in res["problems"]
    ]
    if failed:
        ok = sum(res["status"] != "failed" for res in results.values())
        _fail(
            failed,
            f"{len(failed)} problem(s) in the count matrices ({ok} other sample(s) are complete and kept)",
        )

    first = headers[0]
    symbol_of = dict(zip(first.gene_ids, first.gene_symbols, strict=True))
    n_cells = int(sum(res["n_obs"] for res in results.values()))
    record = {
        "stage": "ingest",
        "immunoprofile_version": __version__,
        "samplesheet": str(samplesheet) if samplesheet else None,
        "samples": [r.sample_id for r in rows],
        "inputs": {r.sample_id: str(r.path) for r in rows},
        "gene_policy": gene_policy,
        "genes": genes,
        "gene_symbols": [symbol_of[g] for g in genes],
        "dropped_genes": dropped,
        "n_cells": n_cells,
    }
    write_text_atomic(workdir / STAGE_RECORD, json.dumps(record, indent=1))
    statuses = [res["status"] for res in results.values()]
    return IngestResult(
        n_samples=len(rows),
        n_written=statuses.count("written"),
        n_unchanged=statuses.count("unchanged"),
        n_cells=n_cells,
        n_genes=len(genes),
        dropped_genes={k: len(v) for k, v in dropped.items()},
        seconds=time.perf_counter() - start,
    )

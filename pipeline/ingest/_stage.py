"""The ingest stage: samplesheet -> one validated AnnData-Zarr store per sample."""

from __future__ import annotations

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
from ..store import remove_staging_leftovers
from ..workdir import IngestRecord, Workdir
from ._checks import compare_gene_sets, reference_gene_problems
from ._readers import Header
from ._sample import HeaderSummary, ingest_sample, sample_header, summarize_header
from ._samplesheet import SampleRow


@dataclass(frozen=True)
class IngestResult:
    n_samples: int
    n_written: int
    n_unchanged: int
    n_cells: int
    n_genes: int
    dropped_genes: dict[str, int]
    seconds: float


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


def _cohort_genes(
    rows: list[SampleRow], summaries: list[HeaderSummary], *, client: Client, policy: str
) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """The cohort's genes and symbols and the genes dropped per sample.

    Only one gene list per distinct gene set is fetched from the workers, so the driver's
    memory does not grow with the number of samples.
    """
    groups: dict[str, list[SampleRow]] = {}
    for row, summary in zip(rows, summaries, strict=True):
        groups.setdefault(summary.genes_sha256, []).append(row)
    members = list(groups.values())
    lists: list[Header] = client.gather(
        client.map(sample_header, [m[0] for m in members], pure=False)
    )
    genes, dropped, problems = compare_gene_sets(
        {m[0].sample_id: h.gene_ids for m, h in zip(members, lists, strict=True)}, policy=policy
    )
    also = {m[0].sample_id: [r.sample_id for r in m[1:]] for m in members if len(m) > 1}
    if problems:
        for sid, others in also.items():
            shown = ", ".join(f"'{o}'" for o in others[:5]) + (", ..." if len(others) > 5 else "")
            problems.append(f"samples {shown} have the same genes as '{sid}'")
        _fail(problems, "the samples' gene sets differ; nothing was written")
    for sid in list(dropped):
        for other in also.get(sid, []):
            dropped[other] = dropped[sid]
    symbol_of = dict(zip(lists[0].gene_ids, lists[0].gene_symbols, strict=True))
    return genes, [symbol_of[g] for g in genes], dropped


def ingest_samples(
    rows: list[SampleRow],
    *,
    workdir: str | Path | Workdir,
    client: Client,
    gene_policy: str = "error",
    samplesheet: Path | None = None,
    reference_genes: list[str] | None = None,
) -> IngestResult:
    """Write ``samples/<sample_id>.zarr`` for every row, in parallel on the cluster.

    Complete stores whose inputs and parameters are unchanged are left untouched; a changed
    input is rebuilt; leftovers of a killed run are removed first. All problems of all
    samples are reported together (`InputError`); stores of good samples stay complete.

    ``reference_genes`` (add-batch): the analysed cohort's genes; the samples are checked
    against them under ``gene_policy`` and the ingest record is not written (the cohort's
    record lists the cohort's samples only).
    """
    start = time.perf_counter()
    workdir = Workdir(workdir)
    workdir.samples.mkdir(parents=True, exist_ok=True)
    remove_staging_leftovers(workdir.samples)
    # Task keys unique to this call: a key still held by the client from an earlier call
    # would return that call's (possibly stale) result.
    run = uuid.uuid4().hex[:8]

    summaries: list[HeaderSummary] = client.gather(
        client.map(
            summarize_header, rows, key=[f"header-{r.sample_id}-{run}" for r in rows], pure=False
        )
    )
    problems = [
        f"sample '{r.sample_id}': {p}"
        for r, h in zip(rows, summaries, strict=True)
        for p in h.problems
    ]
    problems += [
        f"sample '{r.sample_id}': {r.path} has no cells"
        for r, h in zip(rows, summaries, strict=True)
        if not h.problems and h.n_cells == 0
    ]
    if problems:
        _fail(problems, f"{len(problems)} problem(s) in the input files; nothing was written")
    genes, symbols, dropped = _cohort_genes(rows, summaries, client=client, policy=gene_policy)
    if reference_genes is not None:
        problems = reference_gene_problems(genes, reference_genes, policy=gene_policy)
        if problems:
            names = ", ".join(f"'{r.sample_id}'" for r in rows)
            _fail(
                problems,
                f"the new samples ({names}) do not fit the cohort's genes; nothing was written",
            )

    futures = [
        client.submit(
            ingest_sample,
            r,
            target=workdir.sample_store(r.sample_id),
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

    n_cells = int(sum(res["n_obs"] for res in results.values()))
    statuses = [res["status"] for res in results.values()]
    result = IngestResult(
        n_samples=len(rows),
        n_written=statuses.count("written"),
        n_unchanged=statuses.count("unchanged"),
        n_cells=n_cells,
        n_genes=len(genes),
        dropped_genes={k: len(v) for k, v in dropped.items()},
        seconds=time.perf_counter() - start,
    )
    if reference_genes is not None:
        return result
    record = IngestRecord(
        immunoprofile_version=__version__,
        samplesheet=str(samplesheet) if samplesheet else None,
        samples=[r.sample_id for r in rows],
        inputs={r.sample_id: str(r.path) for r in rows},
        gene_policy=gene_policy,
        genes=genes,
        gene_symbols=symbols,
        dropped_genes=dropped,
        uniform_genes=len({h.genes_sha256 for h in summaries}) == 1,
        n_cells=n_cells,
    )
    workdir.write_ingest_record(record)
    return result

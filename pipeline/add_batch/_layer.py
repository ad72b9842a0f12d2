"""A batch's layer: ``batches/<name>/cells.zarr`` with its cells' per-cell results, and
the digest that makes mapping it again a no-op.

The layer's manifest records the batch digest (the cohort's annotate digest, the new
stores' input and parameter hashes, the ``add_batch`` section and `BATCH_VERSION`), the
annotate digest it was mapped onto (``reference``: a re-analysed cohort maps it again)
and its samples. Readers join the layers with cohort.zarr (`pipeline.results`).
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from distributed import Client

from .. import __version__
from ..config import RunConfig
from ..errors import InputError
from ..ingest import SampleRow
from ..stages import stage_digests
from ..store import json_sha256, read_manifest, write_anndata_store, write_text_atomic
from ..workdir import Workdir
from ._mapping import Reference, map_cells, read_reference

BATCH_VERSION = 1  # bump when the mapping's results change for the same inputs


def batch_digest(cfg: RunConfig, rows: list[SampleRow]) -> str:
    """What the batch's results depend on: the cohort's analysis and the new stores."""
    workdir = Workdir(cfg.workdir)
    stores = {}
    for row in rows:
        manifest = read_manifest(workdir.sample_store(row.sample_id)) or {}
        stores[row.sample_id] = [
            manifest.get("inputs", {}).get("sha256"),
            manifest.get("parameters_sha256"),
        ]
    return json_sha256(
        {
            "cohort": stage_digests(cfg)["annotate"],
            "stores": stores,
            "add_batch": cfg.add_batch.model_dump(mode="json"),
            "version": BATCH_VERSION,
        }
    )


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


def write_rows(path: Path, rows: list[SampleRow]) -> None:
    """A samplesheet of ``rows`` with absolute paths (to map the batch again later)."""
    table = pd.DataFrame(
        [{"sample_id": r.sample_id, **r.metadata, "path": str(r.path.resolve())} for r in rows]
    )
    write_text_atomic(path, table.to_csv(index=False))


def map_batch(cfg: RunConfig, client: Client, name: str, rows: list[SampleRow]) -> str:
    """Map ``rows`` (already ingested) as batch ``name``; skipped when its layer is
    current. Returns one line."""
    workdir = Workdir(cfg.workdir)
    digest = batch_digest(cfg, rows)
    files = workdir.batch(name)
    existing = read_manifest(files.cells) if files.cells.exists() else None
    if existing is not None and existing.get("digest") == digest:
        return f"batch {name}: mapped before with the same inputs, skipped"
    start = time.perf_counter()
    ref = read_reference(cfg)
    _check_patients(ref, rows)
    offset = len(workdir.ingest_record().samples)
    cells, summary, seconds = map_cells(cfg, client, rows, ref, seed_offset=offset)
    write_rows(files.samplesheet, rows)
    write_text_atomic(files.qc_summary, summary.to_csv(index=False))
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
    write_anndata_store(files.cells, cells, info)
    kept = int(cells.obs["qc_pass"].sum())
    return (
        f"batch {name}: {len(rows)} samples, {kept:,} of {cells.n_obs:,} cells pass QC, "
        f"mapped in {time.perf_counter() - start:.1f} s"
    )


__all__ = ["BATCH_VERSION", "batch_digest", "map_batch", "write_rows"]

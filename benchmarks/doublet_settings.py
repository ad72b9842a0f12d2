"""Benchmark: the qc stage's scrublet at several settings of the qc section, time per
sample and detection of the simulator's planted doublets.

On a simulated cohort's inputs (``immunoprofile simulate``: the count files and
``truth/cells``), for the first ``--samples`` samples of the samplesheet: `qc_sample` (the
qc stage's task: metrics, thresholds, scrublet, moments; one thread) with each ratio, and
against the truth (kind ``doublet``) over the cells scrublet scored: the AUC of the score,
the calls' recall (of all planted doublets and of those whose parents differ in lineage,
the ones a transcriptome can reveal) and precision, and the share of calls equal to the
first setting's. Medians over samples and each sample's values, one JSON line to
``--json``. A setting is a comma-separated list of the qc section's fields
(``doublet_neighbour_fraction=0.25,doublet_pca_cells=2000``; empty: the defaults);
``--ratios 2,1`` is short for ``--settings doublet_sim_ratio=2 doublet_sim_ratio=1``.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/doublet_settings.py \\
        /work/cmp/scaling/1M/data --samples 12 --ratios 2,1 \\
        --json benchmarks/results/doublet_settings.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.metrics import roc_auc_score

from pipeline.config import QCConfig
from pipeline.ingest import read_counts
from pipeline.qc import qc_sample
from pipeline.qc._kernels import gene_sets


def detection(score: np.ndarray, called: np.ndarray, truth: pd.DataFrame) -> dict[str, float]:
    scored = np.isfinite(score)
    planted = (truth["kind"] == "doublet").to_numpy()[scored]
    hetero = (
        planted
        & (
            truth["lineage"].astype(str).to_numpy()
            != truth["doublet_partner"].astype(str).to_numpy()
        )[scored]
    )
    call = called[scored]
    return {
        "auc": float(roc_auc_score(planted, score[scored])),
        "recall": float(call[planted].mean()),
        "recall_heterotypic": float(call[hetero].mean()),
        "precision": float(planted[call].mean()) if call.any() else float("nan"),
        "called": int(call.sum()),
        "planted": int(planted.sum()),
    }


def parse_setting(text: str) -> QCConfig:
    """``key=value,key=value`` of the qc section's fields (YAML values) as a QCConfig."""
    import yaml

    fields = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        fields[key.strip()] = yaml.safe_load(value)
    return QCConfig(**fields)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a simulated cohort's folder")
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--ratios", default=None)
    parser.add_argument("--settings", nargs="+", default=None)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    if args.settings is None:
        ratios = (args.ratios or "2,1").split(",")
        args.settings = [f"doublet_sim_ratio={r}" for r in ratios]
    settings = {name: parse_setting(name) for name in args.settings}
    sheet = pd.read_csv(args.data / "samplesheet.csv").head(args.samples)
    rows = []
    for i, sample in enumerate(sheet.itertuples()):
        adata = read_counts(args.data / sample.path)
        counts = sp.csr_matrix(adata.X)
        gene_set = gene_sets(adata.var["gene_symbols"].to_numpy())
        truth = pd.read_csv(args.data / "truth" / "cells" / f"{sample.sample_id}.csv.gz")
        truth = truth.set_index("barcode").loc[adata.obs_names]
        if i == 0:  # compile the numba kernels outside the timings
            qc_sample(counts[:500], gene_set=gene_set, params=QCConfig(), seed=0)
        row: dict = {"sample_id": sample.sample_id, "cells": counts.shape[0]}
        first = None
        for name, params in settings.items():
            t = time.perf_counter()
            part = qc_sample(counts, gene_set=gene_set, params=params, seed=i)
            row[f"seconds_{name}"] = round(time.perf_counter() - t, 3)
            called = part.flags["doublet"].to_numpy()
            for key, value in detection(part.doublet_score, called, truth).items():
                row[f"{key}_{name}"] = value
            first = called if first is None else first
            row[f"same_calls_{name}"] = float((called == first).mean())
        print(json.dumps(row), flush=True)
        rows.append(row)
    table = pd.DataFrame(rows)
    record = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": str(args.data),
        "samples": len(rows),
        "settings": list(settings),
        "median": {c: float(table[c].median()) for c in table.columns if c != "sample_id"},
        "per_sample": rows,
    }
    base = f"seconds_{args.settings[0]}"
    record["median_time_ratio"] = {
        name: float((table[f"seconds_{name}"] / table[base]).median()) for name in settings
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    with args.json.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(json.dumps({k: record[k] for k in ("median", "median_time_ratio")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

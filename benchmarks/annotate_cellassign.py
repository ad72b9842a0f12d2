"""Benchmark: B-subset annotation, the annotate stage against scvi-tools' CellAssign on
the same marker file and the same simulated cohorts (issue #25).

Per scenario the cohort of `annotate_accuracy.py` is reused from ``--root`` (built there
the same way when missing: simulate, ingest, qc, preprocess, integrate, graph). The
annotate stage's `annotate_cohort` (default settings) labels it; CellAssign then labels
the cells our lineage level calls B, with the marker file's ``b_subset`` level as its
binary matrix (a label's ``positive`` features 1, everything else, ``free`` included, 0;
a group such as ``switched_isotype`` is one feature, its genes' counts summed, as the
annotate stage does), size factors total_counts / mean(total_counts) over those cells,
trained on the CPU with one torch thread. With ``--true-b`` CellAssign also labels the
true B cells (from the simulator's truth), for reference. Every method is scored per
subset as `annotate_accuracy.py` does (`label_accuracy`: F1 against the truth over the
QC-passed singlets). Prints a Markdown table (scenario x method: DN1, DN2 and B
macro-F1, seconds).

    nice -n 10 python benchmarks/annotate_cellassign.py --root /work/cmp/ann \\
        --scenarios strength1.0,strength0.4,memlike_strength1.0,memlike_strength0.4,depth0.5 \\
        --true-b --json benchmarks/results/annotate_cellassign.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster

from pipeline.annotate import MarkerSet, annotate_cohort, feature_map, load_markers
from pipeline.cohort import open_cohort, open_counts
from pipeline.config import parse_config
from pipeline.labels import B_SUBSETS
from pipeline.simulate import label_accuracy, read_truth_cells

sys.path.insert(0, str(Path(__file__).resolve().parent))
from annotate_accuracy import SCENARIOS, run_scenario


def marker_matrix(markers: MarkerSet, symbols: pd.Index) -> tuple[pd.DataFrame, object]:
    """The ``b_subset`` level as CellAssign's features x labels 0/1 matrix (a label's
    programs' positives united; ``free`` features 0), and the level's `FeatureMap`."""
    fmap = feature_map(markers, "b_subset", symbols)
    rho = pd.DataFrame(0, index=list(fmap.features), columns=list(B_SUBSETS))
    for program in markers.levels["b_subset"]:
        present = [f for f in program.positive if f in rho.index]
        rho.loc[present, program.label] = 1
    return rho, fmap


def feature_counts(workdir: Path, rows: np.ndarray, fmap) -> np.ndarray:
    """cells x features counts of the cohort's ``rows`` (positions), read out of core:
    only the marker genes' columns and the chosen rows are computed."""
    counts = open_counts(workdir)
    genes = np.flatnonzero(np.asarray(fmap.matrix.sum(axis=1)).ravel() > 0)
    sub = counts.X[rows][:, genes].compute()
    return np.asarray((sub @ fmap.matrix[genes]).todense(), dtype=np.float32)


def cellassign_labels(
    counts: np.ndarray, total: np.ndarray, rho: pd.DataFrame, *, max_epochs: int, seed: int
) -> tuple[np.ndarray, dict]:
    """CellAssign's most probable label per cell (defaults but ``max_epochs``; CPU)."""
    import scvi
    import torch
    from scvi.external import CellAssign

    torch.set_num_threads(1)
    scvi.settings.seed = seed
    scvi.settings.verbosity = logging.WARNING
    for logger in ("lightning.pytorch", "lightning.fabric", "lightning_fabric"):
        logging.getLogger(logger).setLevel(logging.ERROR)
    adata = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(
            {"size_factor": total / total.mean()}, index=pd.RangeIndex(len(total)).astype(str)
        ),
        var=pd.DataFrame(index=rho.index),
    )
    CellAssign.setup_anndata(adata, size_factor_key="size_factor")
    model = CellAssign(adata, rho)
    model.train(max_epochs=max_epochs, accelerator="cpu", devices=1, enable_progress_bar=False)
    probs = model.predict()
    history = model.history
    elbo = history["elbo_validation"]["elbo_validation"].to_numpy()
    info = {
        "epochs": len(history["elbo_train"]),
        "max_epochs": max_epochs,
        "early_stopped": len(history["elbo_train"]) < max_epochs,
        "elbo_validation_last": round(float(elbo[-1]), 3),
        "elbo_validation_best": round(float(elbo.min()), 3),
        # convergence: the validation ELBO every 100 epochs
        "elbo_validation_by_100": [round(float(v), 3) for v in elbo[99::100]],
        "mean_max_probability": round(float(probs.to_numpy().max(axis=1).mean()), 4),
    }
    return probs.idxmax(axis=1).to_numpy(dtype=object), info


def score(obs: pd.DataFrame, truth: pd.DataFrame) -> dict:
    acc = label_accuracy(obs, truth)
    dn1 = acc.b_confusion.loc["DN1"] if "DN1" in acc.b_confusion.index else None
    return {
        "b_macro_f1": round(acc.b_macro_f1, 4),
        "b_f1": {k: round(v, 4) for k, v in acc.b_f1.items()},
        "b_proportion_error": round(acc.b_proportion_error, 4),
        "true_dn1_called": {} if dn1 is None else {k: int(v) for k, v in dn1.items() if v},
        # true subset -> called label -> cells (the true B cells)
        "b_confusion": {
            t: {k: int(v) for k, v in row.items() if v} for t, row in acc.b_confusion.iterrows()
        },
    }


def compare(
    root: Path,
    client: Client,
    name: str,
    simulate: dict,
    *,
    max_epochs: int,
    seed: int,
    true_b: bool,
) -> list[dict]:
    workdir = root / "work"
    samplesheet = root / "data" / "samplesheet.csv"
    if not (workdir / "cohort.zarr" / "obsp" / "connectivities").exists():
        run_scenario(root, client, name, simulate, variants={})  # builds the cohort
    stored = ad.read_zarr(workdir / "cohort.zarr")
    truth = read_truth_cells(samplesheet, stored.obs_names)
    obs = stored.obs.copy()
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    total = obs["total_counts"].to_numpy(dtype=np.float64)
    markers = load_markers()

    start = time.perf_counter()
    result = annotate_cohort(
        open_cohort(workdir),
        client=client,
        keep=keep,
        total_counts=total,
        markers=markers,
        connectivities=stored.obsp["connectivities"],
        params=parse_config({"annotate": {}}).annotate,
    )
    seconds = time.perf_counter() - start
    for level, call in result.levels.items():
        obs[level] = call.labels
    lineage_b = keep & (obs["lineage"].astype(str) == "B").to_numpy()
    rows = [
        {
            "method": "immunoprofile",
            "cells": "lineage_B",
            "n_cells": int(lineage_b.sum()),
            "seconds": round(seconds, 1),
            **score(obs, truth),
        }
    ]

    rho, fmap = marker_matrix(markers, stored.var["gene_symbols"])
    sets = {"lineage_B": lineage_b}
    if true_b:
        sets["true_B"] = keep & (truth["lineage"] == "B").to_numpy()
    for cells, mask in sets.items():
        start = time.perf_counter()
        where = np.flatnonzero(mask)
        counts = feature_counts(workdir, where, fmap)
        read = time.perf_counter() - start
        labels, info = cellassign_labels(
            counts, total[where], rho, max_epochs=max_epochs, seed=seed
        )
        seconds = time.perf_counter() - start
        called = obs.copy()
        b_subset = np.full(len(called), None, dtype=object)
        b_subset[where] = labels
        called["b_subset"] = pd.Series(b_subset, index=called.index, dtype=object)
        rows.append(
            {
                "method": "cellassign",
                "cells": cells,
                "n_cells": int(mask.sum()),
                "seconds": round(seconds, 1),
                "read_seconds": round(read, 1),
                **info,
                **score(called, truth),
            }
        )
    for row in rows:
        print(
            f"{name:>22} {row['method']:>13} ({row['cells']:>9}, {row['n_cells']} cells, "
            f"{row['seconds']} s): B macro-F1 {row['b_macro_f1']:.3f} {row['b_f1']}\n"
            f"{'':>24}true DN1 called: {row['true_dn1_called']}",
            flush=True,
        )
    return [{"scenario": name, "simulate": simulate, **row} for row in rows]


def table(rows: list[dict]) -> str:
    lines = [
        "| scenario | method | cells | DN1 F1 | DN2 F1 | B macro-F1 | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        epochs = f" ({r['epochs']} epochs)" if "epochs" in r else ""
        lines.append(
            f"| {r['scenario']} | {r['method']} | {r['cells']} | {r['b_f1']['DN1']:.3f} | "
            f"{r['b_f1']['DN2']:.3f} | {r['b_macro_f1']:.3f} | {r['seconds']}{epochs} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("/work/cmp/ann"),
        help="the cohorts, one folder per scenario (built when missing)",
    )
    parser.add_argument(
        "--max-epochs",
        type=int,
        default=400,
        help="CellAssign's (early stopping on the validation ELBO, its default, stays on)",
    )
    parser.add_argument(
        "--true-b", action="store_true", help="also run CellAssign on the true B cells"
    )
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--cells", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, help="append one JSON line per scenario x method")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("scvi", "lightning", "lightning.pytorch", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    base = {
        "seed": args.seed,
        "n_patients": args.patients,
        "cells_per_sample": args.cells,
        "n_genes": 6000,
    }
    rows: list[dict] = []
    with (
        LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, memory_limit="6GiB"
        ) as cluster,
        Client(cluster) as client,
    ):
        for name in args.scenarios.split(","):
            new = compare(
                args.root / name,
                client,
                name,
                {**base, **SCENARIOS[name]},
                max_epochs=args.max_epochs,
                seed=args.seed,
                true_b=args.true_b,
            )
            rows.extend(new)
            if args.json:
                with args.json.open("a") as f:
                    for row in new:
                        f.write(
                            json.dumps(
                                {
                                    "label": "annotate-cellassign",
                                    "patients": args.patients,
                                    "cells_per_sample": args.cells,
                                    **row,
                                }
                            )
                            + "\n"
                        )
    print(table(rows))


if __name__ == "__main__":
    main()

"""Benchmark: the neighbourhoods stage's calibration over independently simulated null cohorts.

Each cohort is simulated with its own seed and no planted abundance effect
(``simulate.effects: []``, ``sub_states: []``), then analysed by ``immunoprofile run
--until neighbourhoods`` with the default configuration, as a user would run it: its own
embedding, graph, labels, neighbourhoods and fits. All cohorts run in this one process on
one LocalCluster (the default profile), stage by stage as `immunoprofile run` runs them
(`run_stages`), so imports and compiled kernels are paid once. Recorded per cohort and contrast: the
number of neighbourhoods tested, the share at spatial FDR < 0.1, the share of p-values
below 0.05, the p-values' histogram in twenty bins (for the calibration plot) and the
counts below a few small thresholds (``THRESHOLDS``). One
JSON line per cohort is appended to ``--json``; cohorts already there are skipped, so an
interrupted run resumes. The cohort's files are deleted after it is read. ``--summary``
prints the table over the cohorts of ``--json`` (mean and max share at spatial FDR < 0.1
per contrast, mean share of p < 0.05) and ``--plot`` draws the pooled p-value histograms.

    python benchmarks/neighbourhoods_null_cohorts.py --cohorts 50 --root /work/null_cohorts \
        --json benchmarks/results/neighbourhoods_null_cohorts.jsonl
    python benchmarks/neighbourhoods_null_cohorts.py --summary \
        --json benchmarks/results/neighbourhoods_null_cohorts.jsonl \
        --plot docs/img/neighbourhoods_null_pvalues.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cluster.launch import start_client
from pipeline import load_config
from pipeline.commands.run import run_stages
from pipeline.registry import stages_until
from pipeline.simulate import simulate_cohort

BINS = np.linspace(0.0, 1.0, 21)
# p-value thresholds counted exactly (the histogram's bins are too wide for a test's tail)
THRESHOLDS = (1e-4, 1e-3, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.1)


def write_config(folder: Path, seed: int, args: argparse.Namespace) -> Path:
    config = {
        "workdir": str(folder / "work"),
        "samplesheet": str(folder / "data" / "samplesheet.csv"),
        "cluster": {"profile": "local"},
        "simulate": {
            "seed": seed,
            "n_patients": args.patients,
            "cells_per_sample": args.cells,
            "n_genes": args.genes,
            "n_batches": 3,
            "effects": [],
            "expression_effects": [],
            "sub_states": [],
        },
        # what the neighbourhoods do not read, made cheap: the UMAP (fitted on 5,000 cells,
        # the others placed), the abundance stage's label draws (hard labels only)
        "graph": {"umap_max_cells": 5000},
        "abundance": {"labels": "hard"},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def summarise(tests: pd.DataFrame, alpha: float) -> list[dict]:
    """Per family of neighbourhoods (tests.csv's ``denominator``; PBMC before it had one)
    and contrast."""
    rows = []
    if "denominator" not in tests:
        tests = tests.assign(denominator="PBMC")
    for (denominator, contrast), part in tests.groupby(["denominator", "contrast"], sort=False):
        p = part["pvalue"].to_numpy(dtype=float)
        fdr = part["spatial_fdr"].to_numpy(dtype=float)
        ok = np.isfinite(p)
        rows.append({
            "denominator": denominator, "contrast": contrast, "n_nhoods": len(part),
            "tested": int(ok.sum()),
            "share_fdr": float(np.mean(fdr[ok] < alpha)) if ok.any() else None,
            "share_p05": float(np.mean(p[ok] < 0.05)) if ok.any() else None,
            "p_hist": np.histogram(p[ok], bins=BINS)[0].tolist(),
            "p_below": [int((p[ok] < t).sum()) for t in THRESHOLDS],
        })  # fmt: skip
    return rows


def summarise_runs(path: Path, plot: Path | None) -> None:
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    rows = [
        {"seed": line["seed"], **c,
         "k": line.get("k_lineages", {}).get(c.get("denominator"), line["k"])}
        for line in lines for c in line["contrasts"]
    ]  # fmt: skip
    table = pd.DataFrame(rows)
    if "denominator" not in table:
        table["denominator"] = "PBMC"
    table["denominator"] = table["denominator"].fillna("PBMC")
    for denominator, part in table.groupby("denominator", sort=False):
        print(f"neighbourhoods of {denominator}:")
        target = plot
        if plot is not None and denominator != "PBMC":
            target = plot.with_name(f"{plot.stem}_{denominator}{plot.suffix}")
        _summarise_family(part, target)


def _summarise_family(table: pd.DataFrame, plot: Path | None) -> None:
    order = list(dict.fromkeys(table["contrast"]))
    summary = table.groupby("contrast", sort=False).agg(
        cohorts=("seed", "nunique"), tested=("tested", "median"),
        fdr_mean=("share_fdr", "mean"), fdr_max=("share_fdr", "max"),
        cohorts_with_any_call=("share_fdr", lambda s: int((s > 0).sum())),
        p05_mean=("share_p05", "mean"),
    ).loc[order]  # fmt: skip
    hist = table.groupby("contrast", sort=False)["p_hist"].apply(lambda h: np.sum(list(h), axis=0))
    summary["p05_pooled"] = [h[0] / h.sum() for h in hist.loc[order]]  # first bin: p < 0.05
    print(f"{table['seed'].nunique()} cohorts, k {sorted(table['k'].unique())}")
    print(summary.round(4).to_string())
    if plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(10, 8), sharex=True, sharey=True)
    width = BINS[1] - BINS[0]
    for ax, contrast in zip(axes.ravel(), order, strict=False):
        h = hist.loc[contrast]
        ax.bar(BINS[:-1], h / h.sum() / width, width=width, align="edge", color="0.6")
        ax.axhline(1.0, color="tab:red", lw=1)
        ax.set_title(contrast, fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("p-value")
    for ax in axes[:, 0]:
        ax.set_ylabel("density")
    family = table["denominator"].iloc[0]
    fig.suptitle(f"Neighbourhood ({family}) p-values over {table['seed'].nunique()} null cohorts")
    fig.tight_layout()
    fig.savefig(plot, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, default=50)
    parser.add_argument("--first-seed", type=int, default=1000)
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--cells", type=int, default=1000, help="mean cells per sample")
    parser.add_argument("--genes", type=int, default=3000)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--root", type=Path, help="cohorts are simulated and analysed here")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--keep", action="store_true", help="keep each cohort's files")
    parser.add_argument("--summary", action="store_true", help="only summarise --json")
    parser.add_argument("--plot", type=Path, help="with --summary: the p-value histograms")
    args = parser.parse_args()
    if args.summary:
        summarise_runs(args.json, args.plot)
        return
    if args.root is None:
        parser.error("--root is needed to run cohorts")
    done = set()
    if args.json.exists():
        done = {json.loads(line)["seed"] for line in args.json.read_text().splitlines()}
    seeds = [s for s in range(args.first_seed, args.first_seed + args.cohorts) if s not in done]
    if not seeds:
        return
    args.root.mkdir(parents=True, exist_ok=True)
    first = load_config(write_config(args.root, seeds[0], args))
    stages = [s.name for s in stages_until("neighbourhoods")]
    with start_client(first.cluster, quiet=True) as client:
        for seed in seeds:
            run_cohort(client, seed, stages, args)


def run_cohort(client, seed: int, stages: list[str], args: argparse.Namespace) -> None:
    """Simulate one null cohort, analyse it through neighbourhoods, append its line."""
    folder = args.root / f"seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    config = write_config(folder, seed, args)
    t = time.perf_counter()
    cfg = load_config(config)
    simulate_cohort(cfg.simulate, out=folder / "data", client=client)
    run_stages(cfg, client, stages)
    work = folder / "work" / "neighbourhoods"
    tests = pd.read_csv(work / "tests.csv")
    summary = json.loads((work / "summary.json").read_text())
    rows = summarise(tests, args.alpha)
    line = {
        "benchmark": "neighbourhoods_null_cohorts", "seed": seed, "patients": args.patients,
        "cells_per_sample": args.cells, "genes": args.genes, "alpha": args.alpha,
        "k": summary.get("k"),
        "k_lineages": {name: f["k"] for name, f in summary.get("lineages", {}).items()},
        "seconds": round(time.perf_counter() - t, 1),
        "contrasts": rows,
    }  # fmt: skip
    with args.json.open("a") as fh:
        fh.write(json.dumps(line) + "\n")
    worst = max((r["share_fdr"] or 0.0) for r in rows)
    p05 = np.mean([r["share_p05"] for r in rows if r["share_p05"] is not None])
    print(f"seed {seed}: {rows[0]['n_nhoods']} nhoods, k {line['k']}, max share at "
          f"FDR<{args.alpha} {worst:.4f}, mean p<0.05 {p05:.3f}, {line['seconds']} s",
          flush=True)  # fmt: skip
    if not args.keep:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()

"""Benchmark: B-subset annotation accuracy against the simulator's truth, per subset,
at weakened marker strengths, lower sequencing depth and DN1 at 2-8% of B cells.

Per scenario a cohort is simulated (``--patients`` x 3 timepoints x ``--cells`` cells;
the scenario's settings on top) and taken through ingest, qc, preprocess, integrate and
graph; the annotate stage's `annotate_cohort` then labels it (in memory, the store is not
rewritten), once per ``--variants`` entry (annotate settings as JSON), and the labels are
scored per subset (F1 against the truth over the QC-passed singlets; `label_accuracy`).
Prints per scenario and variant the F1 of every B subset, and where the true DN1 cells
went.

    python benchmarks/annotate_accuracy.py --json benchmarks/results/annotate_accuracy.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import anndata as ad
from distributed import Client, LocalCluster

from pipeline.annotate import annotate_cohort, load_markers
from pipeline.cohort import open_cohort
from pipeline.config import DEFAULT_B_SUBSET_PROPORTIONS, parse_config
from pipeline.ingest import ingest_samples, read_samplesheet
from pipeline.simulate import label_accuracy, read_truth_cells, simulate_cohort
from pipeline.stages import run_stage


def _dn1_share(share: float) -> dict[str, float]:
    """The default B-subset proportions with DN1 at ``share`` of B cells (the others
    scaled to the rest)."""
    rest = {k: v for k, v in DEFAULT_B_SUBSET_PROPORTIONS.items() if k != "DN1"}
    scale = (1 - share) / sum(rest.values())
    return {**{k: v * scale for k, v in rest.items()}, "DN1": share}


SCENARIOS: dict[str, dict] = {
    "strength1.0": {},
    "strength0.7": {"marker_strength": 0.7},
    "strength0.4": {"marker_strength": 0.4},
    "depth0.5": {"median_umi": 1750.0},
    "depth0.5_strength0.4": {"median_umi": 1750.0, "marker_strength": 0.4},
    "dn1_2pct": {"b_subset_proportions": _dn1_share(0.02)},
    "dn1_8pct": {"b_subset_proportions": _dn1_share(0.08)},
}
# the same with DN1 keeping switched memory's genes other than CD27 (`dn1_memory_genes`)
SCENARIOS.update(
    {f"memlike_{k}": {**v, "dn1_memory_genes": True} for k, v in list(SCENARIOS.items())}
)


def run_scenario(root: Path, client: Client, name: str, simulate: dict,
                 variants: dict[str, dict]) -> list[dict]:  # fmt: skip
    samplesheet = root / "data" / "samplesheet.csv"
    run = parse_config({"workdir": str(root / "work"), "samplesheet": str(samplesheet)})
    if not (root / "work" / "cohort.zarr" / "obsp" / "connectivities").exists():  # else reuse
        sim = simulate_cohort(parse_config({"simulate": simulate}).simulate, out=root / "data",
                              client=client)  # fmt: skip
        assert sim.samplesheet == samplesheet
        ingest_samples(read_samplesheet(samplesheet), workdir=run.workdir, client=client)
        for stage in ("qc", "preprocess", "integrate", "graph"):
            run_stage(stage, run, client)
    stored = ad.read_zarr(Path(run.workdir) / "cohort.zarr")
    truth = read_truth_cells(samplesheet, stored.obs_names)
    rows = []
    for variant, params in variants.items():
        obs = stored.obs.copy()
        start = time.perf_counter()
        result = annotate_cohort(
            open_cohort(run.workdir),
            client=client,
            keep=obs["qc_pass"].to_numpy(dtype=bool),
            total_counts=obs["total_counts"].to_numpy(),
            markers=load_markers(),
            connectivities=stored.obsp["connectivities"],
            params=parse_config({"annotate": params}).annotate,
        )
        seconds = time.perf_counter() - start
        for level, call in result.levels.items():
            obs[level] = call.labels
        acc = label_accuracy(obs, truth)
        dn1 = acc.b_confusion.loc["DN1"] if "DN1" in acc.b_confusion.index else None
        rows.append({
            "scenario": name, "variant": variant, "simulate": simulate, "annotate": params,
            "lineage_macro_f1": round(acc.lineage_macro_f1, 4),
            "b_macro_f1": round(acc.b_macro_f1, 4),
            "b_f1": {k: round(v, 4) for k, v in acc.b_f1.items()},
            "b_proportion_error": round(acc.b_proportion_error, 4),
            "true_dn1_called": {} if dn1 is None else {k: int(v) for k, v in dn1.items() if v},
            "n_b_cells": int(acc.b_confusion.to_numpy().sum()),
            "annotate_seconds": round(seconds, 1),
        })  # fmt: skip
        print(f"{name:>22} {variant:>12}: {acc}\n{'':>37}true DN1 called: {rows[-1]['true_dn1_called']}",
              flush=True)  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--variants", default='{"default": {}}',
                        help="JSON: variant name -> annotate settings")  # fmt: skip
    parser.add_argument("--patients", type=int, default=8)
    parser.add_argument("--cells", type=int, default=2500)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--root", type=Path, help="keep the cohorts here (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="append one JSON line per scenario x variant")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    variants = json.loads(args.variants)
    base = {"seed": args.seed, "n_patients": args.patients, "cells_per_sample": args.cells,
            "n_genes": 6000}  # fmt: skip
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, memory_limit="6GiB"
        ) as cluster,
        Client(cluster) as client,
    ):
        root = args.root or Path(tmp)
        for name in args.scenarios.split(","):
            rows = run_scenario(root / name, client, name, {**base, **SCENARIOS[name]}, variants)
            if args.json:
                with args.json.open("a") as f:
                    for row in rows:
                        f.write(json.dumps({"label": "annotate-accuracy", "patients": args.patients,
                                            "cells_per_sample": args.cells, **row}) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()

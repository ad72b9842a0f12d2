"""Benchmark: coverage of the planted abundance effects with hard labels and with label
draws (issue #25), when the B-subset markers are deliberately weakened.

1. The annotation's behaviour: a simulated cohort with weakened markers (a scenario of
   `annotate_accuracy.py`, e.g. ``strength0.4``: markers at 0.4 of their strength) is
   taken through the pipeline to the graph stage and annotated (`annotate_cohort`,
   default settings). For every true B subset, the B cells of that subset give a pool of
   (called label, program posteriors under the cohort-wide shares) pairs: what the
   annotation says about a cell of that subset. The calibration of the stored label
   probabilities is printed (mean top probability against the share right).
2. Replicate cohorts: ``--cohorts`` count tables from the simulator (`simulate_count_table`,
   ``--patients`` patients x 3 timepoints, the default planted effects: DN2 higher in
   non-responders, naive and transitional falling). Each sample's true B cells of a
   subset get the calls and posteriors of cells drawn (with replacement) from that
   subset's pool: the misclassification of the weakened annotation, cohort after cohort,
   without annotating a million cells each time. The label probabilities are then
   computed per replicate sample (`sample_label_probabilities`), as the annotate stage
   does, since they depend on the sample's composition.
3. Per cohort, the GLMM (B subsets within B) on the true labels, on the hard labels and
   over ``--draws`` label draws pooled by Rubin's rules (`fit_with_label_draws`' path:
   `draw_counts`, `rubin_pool`).
4. The estimand of each subset x contrast is the mean true-label estimate over the
   cohorts (the planted effect as the model measures it); coverage is the share of
   cohorts whose 95% interval holds it, per analysis, over the planted effects and over
   all subsets x contrasts.

    python benchmarks/abundance_label_uncertainty.py --scenario strength0.4 \
        --json benchmarks/results/abundance_label_uncertainty.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from distributed import Client, LocalCluster

import pipeline.annotate._stage as annotate_stage
from pipeline.abundance import abundance_counts, fit_abundance_models
from pipeline.abundance._draws import LEVEL_LABELS, draw_counts, rubin_pool
from pipeline.annotate import annotate_cohort, load_markers
from pipeline.annotate._cellcalls import call_on_workers
from pipeline.annotate._model import sample_label_probabilities
from pipeline.cohort import open_cohort
from pipeline.config import PlantedEffect, SimulationConfig
from pipeline.labels import B_SUBSETS
from pipeline.simulate import read_truth_cells, simulate_count_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from annotate_accuracy import SCENARIOS, run_scenario

KEYS = ["cell_type", "contrast"]
DN1_EFFECT = PlantedEffect(
    cell_type="DN1", group="non_responder", log_ratio={0: 0.8, 3: 0.8, 6: 0.8}
)
PLANTED = {("DN2", "response@month0"), ("DN2", "response@month3"), ("DN2", "response@month6"),
           ("DN2", "time3@responder"), ("DN2", "time6@responder"),
           ("naive", "time3@non_responder"), ("naive", "time6@non_responder"),
           ("transitional", "time6@non_responder")}  # fmt: skip
DN1_PLANTED = {("DN1", "response@month0"), ("DN1", "response@month3"), ("DN1", "response@month6")}


def annotation_pools(root: Path, client: Client, scenario: str, seed: int) -> dict:
    """Per true B subset: its cells' called subsets and program posteriors (under the
    model's cohort-wide shares; the label probabilities are recomputed per replicate
    sample from these, as the annotate stage computes them per sample)."""
    if not (root / "work" / "cohort.zarr" / "obsp" / "connectivities").exists():
        base = {"seed": seed, "n_patients": 8, "cells_per_sample": 2500, "n_genes": 6000}
        run_scenario(root, client, scenario, {**base, **SCENARIOS[scenario]}, {})
    stored = ad.read_zarr(root / "work" / "cohort.zarr")
    obs = stored.obs
    seen: dict = {}

    def spy(client, posts, cells, *, graph, rules, **kw):  # the B level's own posteriors
        if rules.vocabulary == tuple(B_SUBSETS):
            seen.update(
                prob=np.concatenate(client.gather(posts)), log_prior=rules.log_prior,
                program_labels=rules.program_labels, supported=rules.supported,
            )  # fmt: skip
        return call_on_workers(client, posts, cells, graph=graph, rules=rules, **kw)

    annotate_stage.call_on_workers = spy
    try:
        result = annotate_cohort(
            open_cohort(root / "work"),
            client=client,
            keep=obs["qc_pass"].to_numpy(dtype=bool),
            total_counts=obs["total_counts"].to_numpy(),
            markers=load_markers(),
            connectivities=stored.obsp["connectivities"],
        )
    finally:
        annotate_stage.call_on_workers = call_on_workers
    truth = read_truth_cells(root / "data" / "samplesheet.csv", stored.obs_names)
    b_call = result.levels["b_subset"]
    members = np.flatnonzero(result.levels["lineage"].labels == "B")  # rows of seen["prob"]
    called = b_call.labels[members].astype(object)
    true_subset = truth["b_subset"].astype(str).to_numpy()[members]
    stored_prob = np.asarray(b_call.probabilities)[members]
    pools = {s: (called[true_subset == s], seen["prob"][true_subset == s]) for s in B_SUBSETS}
    model = {k: seen[k] for k in ("log_prior", "program_labels", "supported")}
    ok = np.isin(true_subset, B_SUBSETS)
    best = np.array(LEVEL_LABELS["b_subset"])[stored_prob[ok].argmax(axis=1)]
    calibration = {
        "cells": int(ok.sum()),
        "mean_top_probability": float(stored_prob[ok].max(axis=1).mean()),
        "share_top_label_true": float((best == true_subset[ok]).mean()),
        "share_called_true": float((called[ok] == true_subset[ok]).mean()),
    }
    return {"pools": pools, "model": model, "calibration": calibration}


def _fit(counts: pd.DataFrame) -> pd.DataFrame:
    """The GLMM of the B subsets within B cells (the other models skipped)."""
    skip = frozenset((c, "PBMC") for c in (*LEVEL_LABELS["lineage"], *LEVEL_LABELS["b_subset"]))
    tests = fit_abundance_models(counts, methods=("glmm",), standard_errors=True, skip=skip).tests
    return tests[tests["denominator"] == "B"]


def one_cohort(
    index: int,
    pools: dict,
    model: dict,
    patients: int,
    draws: int,
    seed: int,
    dn1_effect: bool = False,
) -> pd.DataFrame:
    """True, hard-label and label-draw intervals of one replicate cohort."""
    sim = SimulationConfig(seed=seed * 1000 + index, n_patients=patients)
    if dn1_effect:
        sim = sim.model_copy(update={"effects": [*sim.effects, DN1_EFFECT]})
    true_counts = simulate_count_table(sim)
    rng = np.random.default_rng([seed, index])
    b = true_counts[true_counts["level"] == "b_subset"]
    design = ["sample_id", "patient_id", "timepoint_months", "response", "batch"]
    cells, called, b_rows = [], [], []
    for row in b[b["count"] > 0].itertuples():
        labels, prob = pools[row.cell_type]
        pick = rng.integers(0, len(labels), size=row.count)
        cells.append(np.repeat(row.sample_id, row.count))
        called.append(labels[pick])
        b_rows.append(prob[pick])
    sample = np.concatenate(cells)
    meta = b.drop_duplicates("sample_id").set_index("sample_id")[design[1:]]
    obs = meta.loc[sample].reset_index()
    obs["qc_pass"] = True
    obs["lineage"] = "B"
    obs["b_subset"] = np.concatenate(called)
    # the label probabilities as the annotate stage stores them: under each sample's
    # composition, re-estimated from these cells' evidence
    b_prob = sample_label_probabilities(
        np.vstack(b_rows), model["log_prior"], sample, program_labels=model["program_labels"],
        vocabulary=tuple(B_SUBSETS), supported=model["supported"],
    ).astype(np.float64)  # fmt: skip
    lin_prob = np.zeros((len(obs), len(LEVEL_LABELS["lineage"])))
    lin_prob[:, LEVEL_LABELS["lineage"].index("B")] = 1.0
    # the lineage level of the tables: the true lineage counts
    hard_counts = _with_lineages(abundance_counts(obs), true_counts)
    out = []
    for name, counts in (("true", true_counts), ("hard", hard_counts)):
        out.append(_fit(counts).assign(analysis=name))
    drawn = [
        _fit(_with_lineages(d, true_counts))
        for d in draw_counts(obs, lin_prob, b_prob, n_draws=draws, seed=seed * 1000 + index)
    ]
    pooled = rubin_pool(drawn)
    out.append(pooled.assign(analysis="draws"))
    cols = [*KEYS, "estimate", "ci_low", "ci_high", "pvalue", "analysis"]
    return pd.concat([o[cols] for o in out], ignore_index=True).assign(cohort=index)


def _with_lineages(b_table: pd.DataFrame, true_counts: pd.DataFrame) -> pd.DataFrame:
    """The b_subset rows of ``b_table`` with the true lineage rows (the models of B
    subsets within B need only the former; the table needs both levels)."""
    return pd.concat(
        [true_counts[true_counts["level"] == "lineage"], b_table[b_table["level"] == "b_subset"]],
        ignore_index=True,
    )


def summarise(results: pd.DataFrame, planted: set) -> dict:
    truth = results[results["analysis"] == "true"].groupby(KEYS)["estimate"].mean()
    results = results.join(truth.rename("estimand"), on=KEYS)
    results = results[np.isfinite(results["estimand"])]
    results["covered"] = (results["ci_low"] <= results["estimand"]) & (
        results["estimand"] <= results["ci_high"]
    )
    results["planted"] = [
        (c, k) in planted for c, k in zip(results["cell_type"], results["contrast"], strict=True)
    ]
    results["width"] = results["ci_high"] - results["ci_low"]
    results["bias"] = results["estimate"] - results["estimand"]
    out = {}
    for analysis, part in results.groupby("analysis"):
        ok = part[np.isfinite(part["estimate"])]
        per = ok.groupby(KEYS).agg(coverage=("covered", "mean"), bias=("bias", "mean"),
                                   width=("width", "median"))  # fmt: skip
        out[analysis] = {
            "coverage_all": round(float(ok["covered"].mean()), 4),
            "coverage_planted": round(float(ok[ok["planted"]]["covered"].mean()), 4),
            "coverage_min": round(float(per["coverage"].min()), 4),
            "worst": "/".join(per["coverage"].idxmin()),
            "median_width": round(float(ok["width"].median()), 4),
            "per_planted": {
                f"{c}/{k}": {
                    "coverage": round(float(per.loc[(c, k), "coverage"]), 3),
                    "bias": round(float(per.loc[(c, k), "bias"]), 3),
                }
                for c, k in sorted(planted)
                if (c, k) in per.index
            },
            "per_subset_coverage": {
                c: round(float(g["covered"].mean()), 3) for c, g in ok.groupby("cell_type")
            },
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="strength0.4")
    parser.add_argument("--root", type=Path, default=Path("/work/cmp/ann"))
    parser.add_argument("--cohorts", type=int, default=200)
    parser.add_argument("--patients", type=int, default=24)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--dn1-effect",
        action="store_true",
        help="also plant DN1 higher in non-responders (log-ratio 0.8)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                     memory_limit="6GiB") as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        source = annotation_pools(args.root / args.scenario, client, args.scenario, 31)
        print(f"{args.scenario}: calibration {source['calibration']}", flush=True)
        pools = client.scatter(source["pools"], broadcast=True)
        model = source["model"]
        futures = [
            client.submit(
                one_cohort,
                i,
                pools,
                model,
                args.patients,
                args.draws,
                args.seed,
                args.dn1_effect,
                pure=False,
            )
            for i in range(args.cohorts)
        ]
        results = pd.concat(client.gather(futures), ignore_index=True)
    summary = summarise(results, PLANTED | (DN1_PLANTED if args.dn1_effect else set()))
    for analysis in ("true", "hard", "draws"):
        s = summary[analysis]
        print(f"{analysis:>6}: coverage all {s['coverage_all']:.3f}, planted "
              f"{s['coverage_planted']:.3f}, worst {s['worst']} {s['coverage_min']:.3f}, "
              f"median width {s['median_width']:.3f}")  # fmt: skip
        print(f"        per planted effect: {s['per_planted']}")
    record = {"label": "abundance-label-uncertainty", "scenario": args.scenario,
              "dn1_effect": args.dn1_effect,
              "cohorts": args.cohorts, "patients": args.patients, "label_draws": args.draws,
              "seed": args.seed, "calibration": source["calibration"], **summary,
              "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

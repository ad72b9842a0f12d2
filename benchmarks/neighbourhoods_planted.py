"""Benchmark: what the neighbourhoods stage finds in a cohort with planted abundance
differences, against the simulator's truth (docs/benchmarks.md).

For a workdir analysed through ``neighbourhoods`` (config
benchmarks/configs/neighbourhoods_planted.yaml) and its simulated ``truth/``: each
neighbourhood's share of truly-DN2 cells and of cells of the planted sub-state; then, for
``response@month0``, the neighbourhoods called (spatial FDR < alpha) among those mostly
(>= 0.5) DN2 or sub-state, and among those with little of either (< 0.1: false
discoveries; naive B cells outside the sub-state change too, as its complement, so
neighbourhoods of them are not counted as false), beside the label-level tests of the
abundance stage. One record per family of neighbourhoods (tests.csv's ``denominator``),
each with the calls by the members' majority true subset and the same GLMM fitted on the
true B-subset labels within B (``truth_label_within_B``): a cohort's patients can differ
by chance in a subset without a planted effect, and calls there are not the method's.

    python benchmarks/neighbourhoods_planted.py WORKDIR TRUTH_DIR \
        --json benchmarks/results/neighbourhoods_planted.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import zarr


def truth_of_cells(workdir: Path, truth: Path) -> pd.DataFrame:
    obs = ad.io.read_elem(zarr.open_group(str(workdir / "cohort.zarr"), mode="r")["obs"])
    cells = obs[["sample_id", "barcode"]].astype(str).reset_index(drop=True)
    frames = []
    for sample in cells["sample_id"].unique():
        t = pd.read_csv(truth / "cells" / f"{sample}.csv.gz", keep_default_na=False)
        frames.append(t.assign(sample_id=sample))
    table = pd.concat(frames, ignore_index=True).astype({"barcode": str})
    merged = cells.merge(table, on=["sample_id", "barcode"], how="left", validate="one_to_one")
    if "sub_state" not in merged:  # a cohort simulated without sub-states
        merged["sub_state"] = ""
    return merged.fillna({"sub_state": "", "b_subset": ""})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("truth", type=Path)
    parser.add_argument("--contrast", default="response@month0")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    folder = args.workdir / "neighbourhoods"
    nhoods = ad.read_zarr(folder / "nhoods.zarr")
    tests = pd.read_csv(folder / "tests.csv")
    alpha = json.loads((folder / "summary.json").read_text())["alpha"]
    truth = truth_of_cells(args.workdir, args.truth)
    membership = nhoods.uns["membership"].tocsc()
    subset = truth["b_subset"].to_numpy()
    in_state = truth["sub_state"].to_numpy() != ""
    labels = pd.read_csv(args.workdir / "abundance" / "tests.csv")
    glmm = labels[(labels["method"] == "glmm") & (labels["contrast"] == args.contrast)]
    denominators = nhoods.obs.get("denominator", pd.Series("PBMC", index=nhoods.obs.index))
    realized = truth_label_tests(args.workdir, truth, args.contrast)
    for denominator in pd.unique(denominators.astype(str)):
        cols = np.flatnonzero(denominators.astype(str).to_numpy() == denominator)
        k = int(nhoods.obs["size"].iloc[cols[0]])
        part_matrix = membership[:, cols]
        members = part_matrix.indices.reshape(cols.size, k)
        record = _record(args, members, cols, tests, alpha, subset, in_state, glmm)
        record["denominator"] = denominator
        # calls in subsets whose *true* labels do not differ in this cohort (p >= 0.05 for
        # the contrast, within B): a simulated cohort's patients differ by chance, so a
        # subset without a planted effect can still differ in the cohort itself
        record["truth_label_within_B"] = realized
        quiet = {name for name, r in realized.items() if r["pvalue"] >= 0.05}
        calls = record["called_by_true_subset"]
        record["calls_where_true_labels_do_not_differ"] = int(sum(
            calls[name]["up"] + calls[name]["down"] for name in quiet if name in calls))  # fmt: skip
        print(json.dumps(record, indent=2))
        if args.json:
            with args.json.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


def truth_label_tests(workdir: Path, truth: pd.DataFrame, contrast: str) -> dict:
    """The abundance GLMM of each true B subset out of each sample's true B cells (the
    QC-passed cells), for ``contrast``: what the cohort's patients themselves show."""
    from pipeline.abundance import contrast_table, estimable_design, fit_binomial_glmm

    obs = ad.io.read_elem(zarr.open_group(str(workdir / "cohort.zarr"), mode="r")["obs"])
    keep = obs["qc_pass"].to_numpy(dtype=bool)
    columns = ["sample_id", "patient_id", "timepoint_months", "response", "batch"]
    samples = (obs.loc[keep, columns].astype({c: str for c in ("sample_id", "patient_id",
               "response", "batch")}).drop_duplicates("sample_id").reset_index(drop=True))  # fmt: skip
    design, _ = estimable_design(samples)
    order = design.samples["sample_id"].to_numpy()
    cells = truth[keep & (truth["b_subset"].to_numpy() != "")]
    totals = cells.groupby("sample_id").size().reindex(order).fillna(0).to_numpy(float)
    out = {}
    for subset in sorted(cells["b_subset"].unique()):
        count = (cells[cells["b_subset"] == subset].groupby("sample_id").size()
                 .reindex(order).fillna(0).to_numpy(float))  # fmt: skip
        fit = fit_binomial_glmm(count, totals, design.x, design.patient)
        row = contrast_table(fit.beta, fit.vcov, design.contrasts, design.df)
        row = row.set_index("contrast").loc[contrast]
        out[subset] = {"estimate": float(row["estimate"]), "pvalue": float(row["pvalue"])}
    return out


def _record(args, members, cols, tests, alpha, subset, in_state, glmm) -> dict:
    """What one family of neighbourhoods (columns ``cols``) calls for the contrast."""
    share = {
        "DN2": (subset == "DN2")[members].mean(axis=1),
        "sub_state": in_state[members].mean(axis=1),
        "naive_rest": ((subset == "naive") & ~in_state)[members].mean(axis=1),
    }
    part = tests[tests["contrast"] == args.contrast].set_index("nhood").loc[cols]
    called = (part["spatial_fdr"] < alpha).to_numpy()
    up = called & (part["estimate"].to_numpy() > 0)
    naive = (subset == "naive")[members].mean(axis=1)
    other = (share["DN2"] < 0.1) & (naive < 0.1)
    record = {"benchmark": "neighbourhoods_planted", "workdir": str(args.workdir),
              "contrast": args.contrast, "alpha": alpha, "n_nhoods": int(cols.size),
              "k": int(members.shape[1]), "called": int(called.sum()),
              "false_discoveries": int((called & other).sum()), "n_other": int(other.sum()),
              "false_discovery_share": float((called & other).sum() / max(called.sum(), 1))}  # fmt: skip
    down = called & (part["estimate"].to_numpy() < 0)
    for name, s in share.items():
        mostly = s >= 0.5
        record[f"{name}_nhoods"] = int(mostly.sum())
        record[f"{name}_called_up"] = int((up & mostly).sum())
        record[f"{name}_called_down"] = int((down & mostly).sum())
        record[f"{name}_sensitivity"] = float((up & mostly).sum() / max(mostly.sum(), 1))
        record[f"{name}_median_estimate"] = (
            float(np.nanmedian(part["estimate"].to_numpy()[mostly])) if mostly.any() else None
        )
    # every call by the members' majority true subset (or lineage: "" outside B)
    values, inverse = np.unique(subset, return_inverse=True)
    majority = values[[np.bincount(inverse[m], minlength=values.size).argmax() for m in members]]
    frame = pd.DataFrame({"majority": majority, "up": up, "down": down})
    record["called_by_true_subset"] = {
        (name or "not B"): {"nhoods": len(g), "up": int(g["up"].sum()),
                            "down": int(g["down"].sum())}
        for name, g in frame.groupby("majority")
    }  # fmt: skip
    for cell_type, denominator in (("DN2", "B"), ("naive", "B"), ("naive", "PBMC")):
        row = glmm[(glmm["cell_type"] == cell_type) & (glmm["denominator"] == denominator)].iloc[0]
        record[f"label_{cell_type}_{denominator}"] = {"estimate": float(row["estimate"]),
                                                      "pvalue": float(row["pvalue"]), "qvalue": float(row["qvalue"])}  # fmt: skip
    return record


if __name__ == "__main__":
    main()

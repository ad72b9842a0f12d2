"""Benchmark: the neighbourhoods stage's calibration under the null.

A workdir of a simulated cohort without planted abundance effects (``simulate.effects:
[]``), analysed through ``annotate``, is cut into neighbourhoods once as the stage does
(`make_neighbourhoods`, its default size and share); then each of ``--designs`` null
designs permutes the response labels across patients (group sizes kept) and the
timepoints among each patient's samples, and the stage's models (`fit_neighbourhoods`,
on a LocalCluster of 2 single-threaded workers) and spatial FDR are run on it. Recorded
per design and contrast: the share of neighbourhoods at spatial FDR < 0.1 and the share
of p-values below 0.05.

    python benchmarks/neighbourhoods_null.py WORKDIR --designs 50 \
        --json benchmarks/results/neighbourhoods_null.jsonl
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import zarr
from distributed import Client, LocalCluster

from pipeline.abundance import estimable_design
from pipeline.config import RunConfig
from pipeline.neighbourhoods import (
    estimable_contrasts,
    fit_neighbourhoods,
    make_neighbourhoods,
    neighbourhood_size,
    sample_counts,
    spatial_fdr,
)


def load(workdir: Path):
    group = zarr.open_group(str(workdir / "cohort.zarr"), mode="r")
    obs = ad.io.read_elem(group["obs"])
    rows = np.flatnonzero(obs["qc_pass"].to_numpy(dtype=bool))
    x = np.asarray(group["obsm/X_pca_harmony"][...], dtype=np.float32)[rows]
    graph = ad.io.read_elem(group["obsp/distances"]).tocsr()[rows][:, rows]
    return obs.iloc[rows].reset_index(drop=True), x, graph


def null_design(samples: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    patients = samples.drop_duplicates("patient_id")[["patient_id", "response"]]
    shuffled = dict(zip(patients["patient_id"], rng.permutation(patients["response"].to_numpy()),
                        strict=True))  # fmt: skip
    out = samples.copy()
    out["response"] = out["patient_id"].map(shuffled)
    for _, idx in out.groupby("patient_id").groups.items():
        out.loc[idx, "timepoint_months"] = rng.permutation(
            out.loc[idx, "timepoint_months"].to_numpy()
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--designs", type=int, default=50)
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=2027, help="seed of the null designs")
    parser.add_argument("--k", type=int, help="cells per neighbourhood (default: the stage's rule)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cfg = RunConfig()
    obs, x, graph = load(args.workdir)
    samples = (obs[["sample_id", "patient_id", "timepoint_months", "response"]]
               .astype({"sample_id": str, "patient_id": str, "response": str})
               .drop_duplicates("sample_id").reset_index(drop=True))  # fmt: skip
    samples["n_cells"] = samples["sample_id"].map(obs["sample_id"].astype(str).value_counts())
    k = args.k or neighbourhood_size(cfg, len(samples), len(obs))
    t = time.perf_counter()
    hoods = make_neighbourhoods(x, graph, k, prop=cfg.neighbourhoods.prop, seed=0)
    codes = pd.Categorical(obs["sample_id"].astype(str), categories=samples["sample_id"]).codes
    counts = sample_counts(hoods.members, np.asarray(codes, dtype=np.int64), len(samples))
    print(
        f"{len(hoods.index_cells)} neighbourhoods of {k} cells in {time.perf_counter() - t:.1f} s"
    )
    rng = np.random.default_rng(args.seed)
    records = []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        for d in range(args.designs):
            design, _ = estimable_design(null_design(samples, rng))
            assert design is not None
            order = samples.set_index("sample_id").index.get_indexer(design.samples["sample_id"])
            c, totals = counts[:, order], samples["n_cells"].to_numpy(dtype=float)[order]
            t = time.perf_counter()
            parts = client.gather([client.submit(fit_neighbourhoods, c[s : s + 250], totals, design, pure=False)
                                   for s in range(0, len(c), 250)])  # fmt: skip
            seconds = time.perf_counter() - t
            pvalue = np.vstack([p.pvalue for p in parts])
            unconverged = int(sum((~p.fits["converged"].astype(bool)).sum() for p in parts))
            for j, contrast in enumerate(estimable_contrasts(design)):
                fdr = spatial_fdr(pvalue[:, j], hoods.weights)
                ok = np.isfinite(pvalue[:, j])
                records.append({
                    "design": d, "seed": args.seed, "contrast": contrast, "n_nhoods": len(c), "k": k,
                    "tested": int(ok.sum()), "share_fdr": float(np.mean(fdr[ok] < args.alpha)),
                    "share_p05": float(np.mean(pvalue[ok, j] < 0.05)), "unconverged": unconverged,
                    "seconds": seconds,
                })  # fmt: skip
            last = pd.DataFrame(records[-len(estimable_contrasts(design)) :])
            print(
                f"design {d}: max share at FDR<{args.alpha} {last['share_fdr'].max():.3f}, "
                f"p<0.05 {last['share_p05'].mean():.3f}, {seconds:.1f} s",
                flush=True,
            )
    table = pd.DataFrame(records)
    print(table.groupby("contrast")[["share_fdr", "share_p05"]].agg(["mean", "max"]).round(4))
    if args.json:
        with args.json.open("a") as fh:
            for r in records:
                fh.write(
                    json.dumps(
                        {"benchmark": "neighbourhoods_null", "workdir": str(args.workdir), **r}
                    )
                    + "\n"
                )


if __name__ == "__main__":
    main()

"""Benchmark: the neighbourhoods stage's tests against pertpy's Milo on the same
neighbourhoods (issue #27).

For a workdir analysed through ``neighbourhoods``: an AnnData of the QC-passed cells
(sample_id, patient_id, response, timepoint) is given the stage's neighbourhoods in
pertpy's fields instead of `Milo.make_nhoods`'s (``obsm["nhoods"]``, the membership of
``neighbourhoods/nhoods.zarr`` with its columns in index-cell order;
``obs["nhood_ixs_refined"]``, 1 on the index cells; ``obs["nhood_kth_distance"]``, the
stage's kth distance there, 0 elsewhere); then `Milo.count_nhoods` (its counts must equal
nhoods.zarr's X) and `Milo.da_nhoods` with the design ``~ response * timepoint``
(responder and month 0 the reference levels; with a contrast pertpy drops the intercept,
so response@month0 is ``responsenon_responder-responseresponder`` and time<t>@responder is
``timepoint<t>``). Its logFC (log2 for edgeR) is correlated with the stage's ``estimate``
(natural-log odds ratio, GLMM with patient and sample random intercepts) on the
neighbourhoods both estimate, and the calls (SpatialFDR vs spatial_fdr < alpha) are
compared. ``--glmm`` adds pertpy's negative-binomial GLMM (``+ (1 | patient_id)``, natural
log); a binomial GLM without random effects (statsmodels, offset log n_cells) is the
middle reference. Wall time and peak RSS cover count_nhoods + da_nhoods.

Needs pertpy, which is not a dependency of the project: run it in a venv of its own
(Python >= 3.12; edgeR through R and rpy2), e.g.

    /root/.pyenv/versions/3.12.1/bin/python -m venv /work/pertpy-venv
    /work/pertpy-venv/bin/pip install 'pertpy[de]==1.4.0' 'rpy2==3.5.17' psutil statsmodels
    apt-get install -y r-bioc-edger
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        /work/pertpy-venv/bin/python benchmarks/neighbourhoods_pertpy.py WORKDIR --glmm \
        --json benchmarks/results/neighbourhoods_pertpy.jsonl
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import psutil
import scipy.sparse as sp
import statsmodels.api as sm
import zarr
from scipy import stats

RESPONSES = ["responder", "non_responder"]  # the first is the reference
DESIGN = "~ response * timepoint"
# the stage's contrast -> (pertpy's model_contrasts, column of the statsmodels design)
CONTRASTS = {
    "response@month0": ("responsenon_responder-responseresponder", "responsenon_responder"),
    "time3@responder": ("timepoint3", "timepoint3"),
    "time6@responder": ("timepoint6", "timepoint6"),
}


class PeakRss:
    """The process's peak resident memory (R runs inside it, through rpy2) while open,
    sampled every 20 ms."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = self.before = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def load(workdir: Path) -> tuple[ad.AnnData, ad.AnnData, np.ndarray]:
    """The QC-passed cells with pertpy's neighbourhood fields set from nhoods.zarr, the
    stage's neighbourhoods (rows in index-cell order), and the cells' cohort.zarr rows."""
    group = zarr.open_group(str(workdir / "cohort.zarr"), mode="r")
    obs = ad.io.read_elem(group["obs"])
    rows = np.flatnonzero(obs["qc_pass"].to_numpy(dtype=bool))
    nhoods = ad.read_zarr(workdir / "neighbourhoods" / "nhoods.zarr")
    nhoods = nhoods[np.argsort(nhoods.obs["index_cell"].to_numpy(), kind="stable")].copy()
    membership = sp.csc_matrix(nhoods.uns["membership"])[:, nhoods.obs["nhood"].to_numpy()]
    assert membership.shape[0] == len(obs), "membership rows beyond cohort.zarr's (batches)"
    dropped = np.setdiff1d(np.arange(len(obs)), rows)
    assert membership[dropped].nnz == 0, "neighbourhood members that did not pass QC"
    index = np.searchsorted(rows, nhoods.obs["index_cell"].to_numpy())
    assert np.array_equal(rows[index], nhoods.obs["index_cell"].to_numpy())

    cells = obs.iloc[rows]
    table = pd.DataFrame(
        {
            "sample_id": cells["sample_id"].astype(str).to_numpy(),
            "patient_id": cells["patient_id"].astype(str).to_numpy(),
            "response": pd.Categorical(cells["response"].astype(str), categories=RESPONSES),
            "timepoint": pd.Categorical(
                cells["timepoint_months"].astype(int).astype(str),
                categories=[str(t) for t in sorted(cells["timepoint_months"].astype(int).unique())],
            ),
        },
        index=cells.index.astype(str),
    )
    adata = ad.AnnData(obs=table)
    adata.obsm["nhoods"] = sp.csr_matrix(membership[rows], dtype=np.float32)
    refined = np.zeros(rows.size, dtype=int)
    refined[index] = 1
    adata.obs["nhood_ixs_refined"] = refined
    kth = np.zeros(rows.size)
    kth[index] = nhoods.obs["kth_distance"].to_numpy(dtype=float)
    adata.obs["nhood_kth_distance"] = kth
    return adata, nhoods, rows


def binomial_reference(nhoods: ad.AnnData, columns: list[str]) -> pd.DataFrame:
    """Per neighbourhood, a binomial GLM (no random effects) of its cells out of each
    sample's QC-passed cells on the stage's design; NaN where a compared design cell has
    no cells of the neighbourhood."""
    var = nhoods.var
    nr = (var["response"].astype(str) == RESPONSES[1]).to_numpy(dtype=float)
    month = var["timepoint_months"].to_numpy(dtype=int)
    x = {"(Intercept)": np.ones(len(var)), "responsenon_responder": nr}
    for t in sorted(set(month))[1:]:
        x[f"timepoint{t}"] = (month == t).astype(float)
    for t in sorted(set(month))[1:]:
        x[f"responsenon_responder:timepoint{t}"] = nr * (month == t)
    design = pd.DataFrame(x)
    totals = var["n_cells"].to_numpy(dtype=float)
    counts = np.asarray(nhoods.X, dtype=float)
    cell = pd.Series(list(zip(nr, month, strict=True)))
    out = np.full((counts.shape[0], len(columns)), np.nan)
    for i, y in enumerate(counts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.GLM(np.column_stack([y, totals - y]), design, family=sm.families.Binomial())
            beta = fit.fit().params
        sums = pd.Series(y).groupby(cell).sum()
        for j, column in enumerate(columns):
            compared = (
                [(0.0, 0), (1.0, 0)]
                if column.startswith("response")
                else [(0.0, 0), (0.0, int(column.removeprefix("timepoint")))]
            )
            if all(sums.get(c, 0) > 0 for c in compared):
                out[i, j] = beta[column]
    return pd.DataFrame(out, columns=columns)


def correlate(a: np.ndarray, b: np.ndarray) -> dict:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return {"n": int(ok.sum()), "pearson_r": None, "spearman_rho": None}
    return {
        "n": int(ok.sum()),
        "pearson_r": round(float(stats.pearsonr(a[ok], b[ok])[0]), 4),
        "spearman_rho": round(float(stats.spearmanr(a[ok], b[ok])[0]), 4),
    }


def calls(pertpy_fdr: np.ndarray, ours_fdr: np.ndarray, alpha: float) -> dict:
    """Agreement of the calls on every neighbourhood (not tested: not called)."""
    p = np.nan_to_num(pertpy_fdr, nan=1.0) < alpha
    o = np.nan_to_num(ours_fdr, nan=1.0) < alpha
    return {
        "called_pertpy": int(p.sum()),
        "called_ours": int(o.sum()),
        "called_both": int((p & o).sum()),
        "agreement": round(float((p == o).mean()), 4),
    }


def run_milo(mdata, contrasts: list[str], solver: str, design: str) -> tuple[dict, dict]:
    """pertpy's results per contrast (var of mdata['milo']) and the seconds of each."""
    import pertpy as pt

    milo, results, seconds = pt.tl.Milo(), {}, {}
    for contrast in contrasts:
        start = time.perf_counter()
        milo.da_nhoods(mdata, design=design, model_contrasts=CONTRASTS[contrast][0], solver=solver)
        seconds[contrast] = time.perf_counter() - start
        results[contrast] = mdata["milo"].var.copy()
    return results, seconds


def r_versions() -> dict:
    try:
        import rpy2
        import rpy2.robjects as ro

        def pkg(name: str) -> str:
            return str(ro.r(f'as.character(packageVersion("{name}"))')[0])

        return {
            "R": pkg("base"),
            "edgeR": pkg("edgeR"),
            "limma": pkg("limma"),
            "rpy2": rpy2.__version__,
        }
    except Exception as err:  # R or edgeR missing: the pydeseq2 solver needs neither
        return {"R": f"unavailable: {err}"}


def main() -> None:
    import pertpy as pt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--solver", choices=["edger", "pydeseq2"], default="edger")
    parser.add_argument("--contrasts", nargs="+", choices=list(CONTRASTS), default=list(CONTRASTS))
    parser.add_argument(
        "--glmm", action="store_true", help="also pertpy's NB GLMM with a patient random intercept"
    )
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    adata, nhoods, _ = load(args.workdir)
    tests = pd.read_csv(args.workdir / "neighbourhoods" / "tests.csv")
    models = {args.solver: (args.solver, DESIGN)}
    if args.glmm:
        models["glmm"] = (args.solver, f"{DESIGN} + (1 | patient_id)")

    figures, costs = {}, {}
    for name, (solver, design) in models.items():
        with PeakRss() as rss:
            start = time.perf_counter()
            mdata = pt.tl.Milo().count_nhoods(adata, sample_col="sample_id")
            count_seconds = time.perf_counter() - start
            results, seconds = run_milo(mdata, args.contrasts, solver, design)
            total = time.perf_counter() - start
        counts = pd.DataFrame(
            np.asarray(mdata["milo"].X.todense()).T, columns=mdata["milo"].obs_names
        )
        ours = pd.DataFrame(np.asarray(nhoods.X), columns=nhoods.var_names)[counts.columns]
        assert np.array_equal(counts.to_numpy(), ours.to_numpy()), "counts differ"
        costs[name] = {
            "design": design,
            "seconds": round(total, 2),
            "seconds_count_nhoods": round(count_seconds, 2),
            "seconds_da_nhoods": {c: round(s, 2) for c, s in seconds.items()},
            "peak_rss_mb": round(rss.peak / 2**20, 1),
            "rss_before_mb": round(rss.before / 2**20, 1),
        }
        figures[name] = results

    reference = binomial_reference(nhoods, [CONTRASTS[c][1] for c in args.contrasts])
    versions = {
        "pertpy": pt.__version__,
        "anndata": ad.__version__,
        "python": platform.python_version(),
        **r_versions(),
    }
    if args.solver == "pydeseq2" or args.glmm:
        versions["pydeseq2"] = version("pydeseq2")
    records = []
    for name in models:
        for j, contrast in enumerate(args.contrasts):
            var = figures[name][contrast]
            ours = tests[tests["contrast"] == contrast].set_index("nhood")
            ours = ours.loc[nhoods.obs["nhood"].to_numpy()]
            estimate = ours["estimate"].to_numpy(dtype=float)
            logfc = var["logFC"].to_numpy(dtype=float)
            binomial = reference.iloc[:, j].to_numpy()
            record = {
                "benchmark": "neighbourhoods_pertpy",
                "workdir": str(args.workdir),
                "n_cells": int(adata.n_obs),
                "n_samples": int(nhoods.n_vars),
                "n_nhoods": int(nhoods.n_obs),
                "contrast": contrast,
                "model": name,
                "solver": "glmm" if name == "glmm" else args.solver,
                "model_contrasts": CONTRASTS[contrast][0],
                "logfc_scale": "ln" if name == "glmm" else "log2",
                "pertpy_nan": int(np.isnan(logfc).sum()),
                "ours_nan": int(np.isnan(estimate).sum()),
                **correlate(logfc, estimate),
                **calls(
                    var["SpatialFDR"].to_numpy(dtype=float),
                    ours["spatial_fdr"].to_numpy(dtype=float),
                    args.alpha,
                ),
                "binomial_vs_ours": correlate(binomial, estimate),
                "binomial_vs_pertpy": correlate(binomial, logfc),
                "alpha": args.alpha,
                **costs[name],
                "versions": versions,
            }
            if name == "glmm":
                record["unconverged"] = int((~var["Converged"].astype(bool)).sum())
            records.append(record)
            print(json.dumps(record, indent=2))
    if args.json:
        with args.json.open("a") as fh:
            for record in records:
                fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

"""Benchmark: the neighbourhoods stage's tests against pertpy's Milo on the same
neighbourhoods (issue #27).

For a workdir analysed through ``neighbourhoods``: an AnnData of the QC-passed cells
(sample_id, patient_id, response, timepoint) gets the stage's neighbourhoods in pertpy's
fields instead of `Milo.make_nhoods`'s: ``obsm["nhoods"]``, the membership of
``neighbourhoods/nhoods.zarr`` with its columns in index-cell order (as make_nhoods
orders them), ``obs["nhood_ixs_refined"]``, 1 on the index cells, and
``obs["nhood_kth_distance"]``, the stage's kth distance there (0 elsewhere; it weighs
the spatial FDR). Then `Milo.count_nhoods` (its counts must equal nhoods.zarr's X) and
`Milo.da_nhoods`, whose logFC is correlated with the stage's ``estimate`` (natural-log
odds ratio; GLMM with patient and sample random intercepts) on the neighbourhoods both
estimate, and whose calls (SpatialFDR < alpha) are compared with the stage's.

The design is the stage's ``response * timepoint`` (months as a factor) in its cell-means
form ``~ group``, group = response x month: with ``model_contrasts`` pertpy drops the
intercept and hands the edgeR contrast to limma's makeContrasts, which refuses the
interaction columns' names (``responsenon_responder:timepoint3``); the two forms span
the same columns, so fits and contrasts are the same (checked: ``~ response * timepoint``
without a contrast tests its last coefficient, response:time6, against the cell-means
contrast). response@month0 is ``groupnon_responder_m0-groupresponder_m0``.

Models: pertpy's edgeR (or pydeseq2) solver, NB GLM without random effects, log2, library
size the neighbourhood counts' sum with TMM; with ``--glmm`` pertpy's NB GLMM
(``+ (1 | patient_id)``, natural log); and as the middle reference the binomial GLM
without random effects on the stage's counts out of each sample's cells (natural log).
One JSON line per model and contrast: ``seconds`` is count_nhoods + the first contrast's
da_nhoods (R's start-up, or the GLMM's numba compilation on a first run, included),
``seconds_da_nhoods`` each contrast's, ``peak_rss_mb`` the process's peak (R runs in
it) over all of the model's contrasts.

Needs pertpy, which is not a dependency of the project: run it in a venv of its own
(pertpy 1.4 needs Python >= 3.12; Debian's R 4.2 needs rpy2 < 3.6), e.g.

    apt-get install -y r-bioc-edger
    /root/.pyenv/versions/3.12.1/bin/python -m venv /work/pertpy-venv
    /work/pertpy-venv/bin/pip install 'pertpy[de]==1.4.0' 'rpy2==3.5.17' psutil 'pynndescent<0.6'
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
from importlib.metadata import version
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import psutil
import scipy.sparse as sp
import zarr
from scipy import stats

RESPONSES = ("responder", "non_responder")
GROUP_DESIGN = "~ group"  # group: the design cell, response x timepoint (see the docstring)


def cell_name(response: str, month: int) -> str:
    return f"{response}_m{month}"


def sample_cells(samples: pd.DataFrame) -> pd.Series:
    """Each sample's design cell (``response``, ``timepoint_months`` columns)."""
    months = samples["timepoint_months"].astype(int)
    return pd.Series(
        [cell_name(r, m) for r, m in zip(samples["response"].astype(str), months, strict=True)],
        index=samples.index,
    )


def cell_weights(contrast: str) -> dict[str, float]:
    """The stage's contrast (docs/contracts.md) as weights over the design cells."""
    r, nr = (f"{g}_m" for g in RESPONSES)
    if contrast.startswith("response@month"):
        t = contrast.removeprefix("response@month")
        return {nr + t: 1.0, r + t: -1.0}
    if contrast.startswith("response:time"):
        t = contrast.removeprefix("response:time")
        return {nr + t: 1.0, nr + "0": -1.0, r + t: -1.0, r + "0": 1.0}
    t, group = contrast.removeprefix("time").split("@")
    return {f"{group}_m{t}": 1.0, f"{group}_m0": -1.0}


def model_contrast(contrast: str) -> str:
    """The contrast in pertpy's (R's) spelling of the ``~ group`` coefficients."""
    terms = [f"{'+' if w > 0 else '-'}group{c}" for c, w in cell_weights(contrast).items()]
    return "".join(terms).removeprefix("+")


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


def load(workdir: Path) -> tuple[ad.AnnData, ad.AnnData]:
    """The QC-passed cells with pertpy's neighbourhood fields set from nhoods.zarr, the
    stage's neighbourhoods (rows in index-cell order)."""
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
            "timepoint": cells["timepoint_months"].astype(int).to_numpy(),
        },
        index=cells.index.astype(str),
    )
    months = sorted(table["timepoint"].unique())
    groups = [cell_name(r, m) for r in RESPONSES for m in months]
    table["group"] = pd.Categorical(
        sample_cells(table.rename(columns={"timepoint": "timepoint_months"})), categories=groups
    )
    table["timepoint"] = pd.Categorical(
        table["timepoint"].astype(str), categories=[str(m) for m in months]
    )
    adata = ad.AnnData(obs=table)
    adata.obsm["nhoods"] = sp.csr_matrix(membership[rows], dtype=np.float32)
    refined = np.zeros(rows.size, dtype=int)
    refined[index] = 1
    adata.obs["nhood_ixs_refined"] = refined
    kth = np.zeros(rows.size)
    kth[index] = nhoods.obs["kth_distance"].to_numpy(dtype=float)
    adata.obs["nhood_kth_distance"] = kth
    return adata, nhoods


def binomial_reference(nhoods: ad.AnnData, contrasts: list[str]) -> pd.DataFrame:
    """Per neighbourhood, the binomial GLM without random effects of its cells out of each
    sample's QC-passed cells on the design (saturated in the design cells, so its fit is
    the logit of each cell's pooled share): the contrasts' log odds ratios, NaN where a
    compared cell has none of the neighbourhood's cells."""
    cells = sample_cells(nhoods.var)
    counts = pd.DataFrame(np.asarray(nhoods.X, dtype=float).T).groupby(cells.to_numpy()).sum()
    totals = nhoods.var["n_cells"].groupby(cells.to_numpy()).sum().astype(float)
    share = counts.div(totals, axis=0)
    with np.errstate(divide="ignore"):
        logit = np.log(share) - np.log1p(-share)
    logit[counts == 0] = np.nan
    out = {}
    for contrast in contrasts:
        weights = pd.Series(cell_weights(contrast)).reindex(logit.index, fill_value=0.0)
        used = weights != 0
        out[contrast] = (logit[used].mul(weights[used], axis=0)).sum(skipna=False).to_numpy()
    return pd.DataFrame(out)


def correlate(a: np.ndarray, b: np.ndarray) -> dict:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return {"n": int(ok.sum()), "pearson_r": None, "spearman_rho": None}
    return {
        "n": int(ok.sum()),
        "pearson_r": round(float(stats.pearsonr(a[ok], b[ok])[0]), 4),
        "spearman_rho": round(float(stats.spearmanr(a[ok], b[ok])[0]), 4),
    }


def calls(pertpy_fdr: np.ndarray, ours_fdr: np.ndarray, labels: np.ndarray, alpha: float) -> dict:
    """Agreement of the calls on every neighbourhood (not tested: not called), and the
    majority labels of the neighbourhoods each calls."""
    p = np.nan_to_num(pertpy_fdr, nan=1.0) < alpha
    o = np.nan_to_num(ours_fdr, nan=1.0) < alpha

    def tally(called: np.ndarray) -> dict:
        return {str(k): int(v) for k, v in pd.Series(labels[called]).value_counts().items()}

    return {
        "called_pertpy": int(p.sum()),
        "called_ours": int(o.sum()),
        "called_both": int((p & o).sum()),
        "agreement": round(float((p == o).mean()), 4),
        "labels_called_pertpy": tally(p),
        "labels_called_ours": tally(o),
    }


def run_milo(mdata, solver: str, design: str, contrasts: list[str]) -> tuple[dict, dict]:
    """pertpy's results per contrast (``mdata["milo"].var``) and the seconds of each."""
    import pertpy as pt

    milo, results, seconds = pt.tl.Milo(), {}, {}
    for contrast in contrasts:
        start = time.perf_counter()
        milo.da_nhoods(
            mdata, design=design, model_contrasts=model_contrast(contrast), solver=solver
        )
        seconds[contrast] = round(time.perf_counter() - start, 2)
        results[contrast] = mdata["milo"].var.copy()
    return results, seconds


def interaction_check(mdata, solver: str, cell_means: pd.DataFrame) -> dict:
    """``~ response * timepoint`` without a contrast (pertpy then tests the last column,
    the last month's interaction) against the cell-means fit of that contrast."""
    import pertpy as pt

    pt.tl.Milo().da_nhoods(mdata, design="~ response * timepoint", solver=solver)
    var = mdata["milo"].var
    return {
        "max_abs_diff_logfc": float(np.nanmax(np.abs(var["logFC"] - cell_means["logFC"]))),
        "max_abs_diff_pvalue": float(np.nanmax(np.abs(var["PValue"] - cell_means["PValue"]))),
    }


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
    parser.add_argument(
        "--contrasts", nargs="+", help="default: every contrast of tests.csv, response@month0 first"
    )
    parser.add_argument(
        "--glmm", action="store_true", help="also pertpy's NB GLMM with a patient random intercept"
    )
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    adata, nhoods = load(args.workdir)
    tests = pd.read_csv(args.workdir / "neighbourhoods" / "tests.csv")
    contrasts = args.contrasts or sorted(
        tests["contrast"].unique(), key=lambda c: c != "response@month0"
    )
    models = {args.solver: (args.solver, GROUP_DESIGN)}
    if args.glmm:
        models["glmm"] = (args.solver, f"{GROUP_DESIGN} + (1 | patient_id)")

    figures, costs, check = {}, {}, None
    for name, (solver, design) in models.items():
        with PeakRss() as rss:
            start = time.perf_counter()
            mdata = pt.tl.Milo().count_nhoods(adata, sample_col="sample_id")
            seconds_count = round(time.perf_counter() - start, 2)
            results, seconds = run_milo(mdata, solver, design, contrasts)
        milo = mdata["milo"]
        counts = pd.DataFrame(milo.X.toarray().T, columns=milo.obs_names)
        ours = pd.DataFrame(np.asarray(nhoods.X), columns=nhoods.var_names)[counts.columns]
        assert np.array_equal(counts.to_numpy(), ours.to_numpy()), "pertpy's counts differ"
        costs[name] = {
            "design": design,
            "seconds": round(seconds_count + seconds[contrasts[0]], 2),
            "seconds_count_nhoods": seconds_count,
            "seconds_da_nhoods": seconds,
            "peak_rss_mb": round(rss.peak / 2**20, 1),
            "rss_before_mb": round(rss.before / 2**20, 1),
        }
        figures[name] = results
        last = f"response:time{max(adata.obs['timepoint'].astype(int))}"
        if name != "glmm" and last in results:
            check = {"contrast": last, **interaction_check(mdata, solver, results[last])}

    reference = binomial_reference(nhoods, contrasts)
    versions = {
        "pertpy": version("pertpy"),
        "anndata": version("anndata"),
        "python": platform.python_version(),
    }
    versions |= r_versions() if args.solver == "edger" else {}
    if args.solver == "pydeseq2" or args.glmm:
        versions["pydeseq2"] = version("pydeseq2")
    b_subset = nhoods.obs["b_subset"].astype(str).to_numpy()  # majority labels; B subsets within B
    labels = np.where(b_subset != "", b_subset, nhoods.obs["lineage"].astype(str).to_numpy())
    records = []
    for name in models:
        for contrast in contrasts:
            var = figures[name][contrast]
            ours = tests[tests["contrast"] == contrast].set_index("nhood").loc[nhoods.obs["nhood"]]
            estimate = ours["estimate"].to_numpy(dtype=float)
            logfc = np.array(var["logFC"], dtype=float)
            if name == "glmm":  # as the stage does, no estimate from an unconverged fit
                logfc[~var["Converged"].astype(bool).to_numpy()] = np.nan
            binomial = reference[contrast].to_numpy()
            record = {
                "benchmark": "neighbourhoods_pertpy",
                "workdir": str(args.workdir),
                "n_cells": int(adata.n_obs),
                "n_samples": int(nhoods.n_vars),
                "n_nhoods": int(nhoods.n_obs),
                "contrast": contrast,
                "solver": "glmm" if name == "glmm" else args.solver,
                "model_contrasts": model_contrast(contrast),
                "logfc_scale": "ln" if name == "glmm" else "log2",
                "pertpy_nan": int(var["logFC"].isna().sum()),
                "ours_nan": int(np.isnan(estimate).sum()),
                **correlate(logfc, estimate),
                **calls(
                    var["SpatialFDR"].to_numpy(dtype=float),
                    ours["spatial_fdr"].to_numpy(dtype=float),
                    labels,
                    args.alpha,
                ),
                "binomial_vs_ours": correlate(binomial, estimate),
                "binomial_vs_pertpy": correlate(binomial, logfc),
                "alpha": args.alpha,
                **costs[name],
                "versions": versions,
            }
            if name == "glmm":
                unconverged = ~var["Converged"].astype(bool) & var["logFC"].notna()
                record["unconverged"] = int(unconverged.sum())  # dropped from the correlation
            elif check is not None:
                record["check_response_star_timepoint"] = check
            records.append(record)
            print(json.dumps({k: v for k, v in record.items() if k != "versions"}))
    print(json.dumps(versions))
    if args.json:
        with args.json.open("a") as fh:
            fh.writelines(json.dumps(record) + "\n" for record in records)


if __name__ == "__main__":
    main()

"""Write the pseudobulk datasets that fit_deseq2_edger.R fits with R's DESeq2 and edgeR.

Run from the repository root:  .venv/bin/python tests/expression/data/deseq2_reference/make_datasets.py

A negative-binomial pseudobulk of 20 patients (10 responders, 10 non-responders) x
months 0, 3, 6 in 3 processing batches, 400 genes with patient-to-patient variation
(sd 0.3 on the log scale) and gene dispersions around 0.05; 40 genes higher in
non-responders at every month (log2 1), 40 genes falling in responders at months 3 and 6
(log2 -1). The design matrices are the pipeline's own (`cell_type_designs`), so R fits
exactly the designs the stage fits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.expression import cell_type_designs

HERE = Path(__file__).parent


def main() -> None:
    rng = np.random.default_rng(2026)
    n_patients, months, n_genes = 20, (0, 3, 6), 400
    rows = []
    for p in range(n_patients):
        response = "non_responder" if p % 2 else "responder"
        for i, t in enumerate(months):
            rows.append((f"P{p:02d}_m{t}", f"P{p:02d}", t, response, f"batch{(p + i) % 3 + 1}"))
    samples = pd.DataFrame(
        rows, columns=["sample_id", "patient_id", "timepoint_months", "response", "batch"]
    )
    base = np.exp(rng.normal(4.0, 1.5, n_genes))
    patient = rng.normal(0.0, 0.3, (n_patients, n_genes))
    dispersion = np.exp(rng.normal(np.log(0.05), 0.4, n_genes))
    batch = rng.normal(0.0, 0.1, (3, n_genes))
    log2 = np.zeros((len(samples), n_genes))
    nr = samples["response"].eq("non_responder").to_numpy()
    later = samples["timepoint_months"].gt(0).to_numpy()
    log2[np.ix_(nr, np.arange(40))] += 1.0
    log2[np.ix_(~nr & later, np.arange(40, 80))] -= 1.0
    p_index = samples["patient_id"].str[1:].astype(int).to_numpy()
    b_index = samples["batch"].str[-1].astype(int).to_numpy() - 1
    library = rng.uniform(0.5, 2.0, len(samples))
    mu = (base * library[:, None] * np.exp(patient[p_index] + batch[b_index])
          * 2.0 ** log2)  # fmt: skip
    counts = rng.poisson(rng.gamma(1.0 / dispersion, dispersion * mu))
    genes = [f"gene{i:03d}" for i in range(n_genes)]
    pd.DataFrame(counts, index=samples["sample_id"], columns=genes).to_csv(HERE / "counts.csv")
    samples.to_csv(HERE / "samples.csv", index=False)
    for fit in cell_type_designs(samples).fits:
        fit.x.to_csv(HERE / f"design_{fit.name}.csv")
        fit.contrasts.to_csv(HERE / f"contrasts_{fit.name}.csv")


if __name__ == "__main__":
    main()

"""Compare a batch added by add-batch with the same samples analysed from scratch.

    python benchmarks/compare_batch.py ADDED_WORKDIR SCRATCH_WORKDIR LATE_SAMPLESHEET [TRUTH_DIR]

Prints QC and label agreement of the batch's cells, both against the simulator's truth,
and whether every abundance estimate lies inside the from-scratch 95% interval.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from pipeline.results import read_obs_columns
from pipeline.workdir import Workdir


def main() -> None:
    inc_dir, full_dir, late_sheet = sys.argv[1:4]
    sheet = Path(late_sheet)
    truth = Path(sys.argv[4]) if len(sys.argv) > 4 else sheet.parent / "truth" / "cells"
    late = pd.read_csv(sheet)["sample_id"].astype(str).tolist()
    cols = ["sample_id", "qc_pass", "lineage", "b_subset"]
    a = read_obs_columns(Workdir(inc_dir).batch(sheet.stem).cells, cols, needs="")
    b = read_obs_columns(Workdir(full_dir).cohort, cols, needs="").loc[a.index]
    both = a["qc_pass"].to_numpy(bool) & b["qc_pass"].to_numpy(bool)
    same_qc = (a["qc_pass"].to_numpy(bool) == b["qc_pass"].to_numpy(bool)).mean()
    print("cells", len(a), "qc agree", same_qc)
    for lv in ("lineage", "b_subset"):
        m = both & (a[lv].notna() | b[lv].notna()).to_numpy()
        agree = (a[lv].astype(str)[m] == b[lv].astype(str)[m]).mean()
        print(lv, "agree", round(agree, 4), "of", int(m.sum()))
    t = pd.concat([pd.read_csv(truth / f"{s}.csv.gz").assign(sample_id=s) for s in late])
    t.index = t["sample_id"] + ":" + t["barcode"]
    for lv in ("lineage", "b_subset"):
        idx = a.index[both & a[lv].notna().to_numpy()]
        ok_a = (a.loc[idx, lv].astype(str) == t.loc[idx, lv].astype(str)).mean()
        ok_b = (b.loc[idx, lv].astype(str) == t.loc[idx, lv].astype(str)).mean()
        print(lv, "vs truth: add-batch", round(ok_a, 4), "from scratch", round(ok_b, 4))
    k = ["cell_type", "denominator", "contrast", "method"]
    ti = pd.read_csv(Path(inc_dir) / "abundance" / "tests.csv")
    tf = pd.read_csv(Path(full_dir) / "abundance" / "tests.csv")
    m = ti.merge(tf, on=k, suffixes=("_inc", "_full")).dropna(
        subset=["estimate_inc", "estimate_full"]
    )
    inside = m["estimate_inc"].between(m["ci_low_full"], m["ci_high_full"])
    diff = (m.estimate_inc - m.estimate_full).abs()
    se = (m.ci_high_full - m.ci_low_full) / 3.92
    print(
        "abundance within from-scratch CI:",
        int(inside.sum()),
        "of",
        len(m),
        "max |diff|",
        round(diff.max(), 4),
        "median |diff|",
        round(diff.median(), 4),
        "max |diff|/SE",
        round((diff / se).max(), 3),
    )
    base = m[(m.contrast == "response@month0") & (m.cell_type == "DN2")]
    print(base[[*k, "estimate_inc", "estimate_full", "qvalue_inc", "qvalue_full"]].to_string())


if __name__ == "__main__":
    main()

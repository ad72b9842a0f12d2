"""How much seurat_v3's clip changes: each batch's clip values from the qc stage's
per-sample moments (as preprocess computes them), then every sample's kept cells read and
compared with them. Prints how many (sample, gene) pairs have a count above their batch's
clip, in how many samples, how many entries that is, and the clips of those pairs.

    python benchmarks/clip_share.py /work/cmp/scaling/1M/work
"""

from __future__ import annotations

import argparse
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import zarr

from pipeline.cohort import read_sample_counts
from pipeline.preprocess._models import clip_values
from pipeline.preprocess._run import moments_per_batch
from pipeline.qc._run import MOMENT_SUM, MOMENT_SUMSQ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path, help="a workdir after its qc stage")
    parser.add_argument("--batch-key", default="batch")
    parser.add_argument("--span", type=float, default=0.3, help="preprocess.hvg_span")
    args = parser.parse_args()
    group = zarr.open_group(str(args.workdir / "cohort.zarr"), mode="r")
    columns = ["qc_pass", "sample_id", args.batch_key]
    obs = pd.DataFrame({c: ad.io.read_elem(group[f"obs/{c}"]) for c in columns})
    samples = [str(s) for s in ad.io.read_elem(group["uns/qc"])["moment_samples"]]
    moments = moments_per_batch(
        obs,
        np.asarray(ad.io.read_elem(group[f"varm/{MOMENT_SUM}"])),
        np.asarray(ad.io.read_elem(group[f"varm/{MOMENT_SUMSQ}"])),
        samples,
        args.batch_key,
    )
    if moments is None:
        raise SystemExit(f"{args.batch_key} varies within a sample: no per-batch moments")
    codes = pd.Categorical(obs[args.batch_key].astype(str)).codes
    _, clip = clip_values(moments, len(moments), args.span)
    kept = obs["qc_pass"].to_numpy(dtype=bool)
    sample_of = obs["sample_id"].astype(str).to_numpy()
    pairs, touched, above, clips = 0, 0, [], []
    for sample in samples:
        cells = np.flatnonzero(sample_of == sample)
        c = clip[int(codes[cells[0]])]
        x = read_sample_counts(args.workdir / "samples" / f"{sample}.zarr", None)
        x = x[kept[cells]].tocsc()
        hit = 0
        for j in range(x.shape[1]):
            values = x.data[x.indptr[j] : x.indptr[j + 1]]
            n = int(np.count_nonzero(values > c[j]))
            if n:
                hit += 1
                above.append(n)
                clips.append(float(c[j]))
        pairs += hit
        touched += hit > 0
    print(f"samples {len(samples)}, genes {clip.shape[1]}")
    print(f"(sample, gene) pairs with a count above the clip: {pairs}, in {touched} samples")
    if above:
        counts = np.array(above)
        print(f"entries above the clip: {counts.sum()} (per pair median {np.median(counts):g},")
        print(f"  max {counts.max()}); clips of those pairs {min(clips):.0f}-{max(clips):.0f}")


if __name__ == "__main__":
    main()

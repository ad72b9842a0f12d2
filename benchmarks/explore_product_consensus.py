"""Exploration (issue #25, not adopted yet): the B subsets' graph consensus as a product.

Today (`pipeline.annotate._model.graph_consensus`) a B cell's program posterior is mixed
linearly with its B-graph neighbours' evidence: ``(1 - w) * own + w * neighbours``,
``w = b_graph_weight`` 0.5. This script replaces it, for the level with program shares
(the B subsets), by the neighbours' evidence as a tempered local prior:
``own * neighbours ** W`` (renormalized), and scores the annotation per scenario cohort of
`annotate_accuracy.py` (reused from ``/work/cmp/ann``). It patches the private function
in this process only; the pipeline is unchanged.

    python benchmarks/explore_product_consensus.py 2.5 memlike_strength0.4 dn1_2pct depth0.5
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
from distributed import Client, LocalCluster

import pipeline.annotate._model as model
from pipeline.annotate import annotate_cohort, load_markers
from pipeline.cohort import open_cohort
from pipeline.simulate import label_accuracy, read_truth_cells

LINEAR = model.graph_consensus


def product_consensus(exponent: float):
    def consensus(prob, graph, weight, log_prior=None):
        if log_prior is None or weight == 0:  # lineages: unchanged
            return LINEAR(prob, graph, weight, log_prior)
        g = sp.csr_matrix(graph)
        degree = np.asarray(g.sum(axis=1, dtype=np.float64)).ravel()
        vote = prob / np.exp(log_prior - log_prior.max())[None]
        vote = vote / vote.sum(axis=1, keepdims=True)
        neighbours = g @ vote.astype(g.dtype) / np.where(degree > 0, degree, 1.0)[:, None]
        mixed = prob * np.power(np.maximum(neighbours, 1e-6), exponent)
        mixed = mixed / mixed.sum(axis=1, keepdims=True)
        mixed[degree == 0] = prob[degree == 0]
        return mixed.astype(np.float32)

    return consensus


def main() -> None:
    exponent, scenarios = float(sys.argv[1]), sys.argv[2:]
    model.graph_consensus = product_consensus(exponent)
    warnings.filterwarnings("ignore")
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        for name in scenarios:
            root = Path("/work/cmp/ann") / name
            stored = ad.read_zarr(root / "work" / "cohort.zarr")
            obs = stored.obs.copy()
            result = annotate_cohort(
                open_cohort(root / "work"), client=client,
                keep=obs["qc_pass"].to_numpy(dtype=bool),
                total_counts=obs["total_counts"].to_numpy(), markers=load_markers(),
                connectivities=stored.obsp["connectivities"],
            )  # fmt: skip
            for level, call in result.levels.items():
                obs[level] = call.labels
            truth = read_truth_cells(root / "data" / "samplesheet.csv", stored.obs_names)
            acc = label_accuracy(obs, truth)
            print(exponent, name, {k: round(v, 3) for k, v in acc.b_f1.items()}, flush=True)


if __name__ == "__main__":
    main()

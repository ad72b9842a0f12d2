"""The graph stage in a workdir: the integrated embedding in; the kNN graph, the Leiden
clusters and the UMAP out."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ..errors import ImmunoprofileError
from ..results import leiden_key
from ..runtime import release_memory
from ..store import TMP_MARK, scratch_folder
from ._sharded import build_graph_on_workers

if TYPE_CHECKING:
    from ..stages import StageContext

PARTS = "graph-parts"  # the scratch folder of the graph's parts, in the workdir


def run_graph(ctx: StageContext) -> str:
    """On the workers, block by block (`build_graph_on_workers`): the driver reads two
    obs columns and holds the UMAP and the clusters; Leiden runs on a worker. The workers
    save the graph's parts in a scratch folder of the workdir as they make them and
    write the matrices from there."""
    g = ctx.cfg.graph
    element = f"obsm/{g.use_rep}"
    if not ctx.has(element):
        msg = (
            f"graph.use_rep is {g.use_rep}, which the integrate stage did not compute "
            f"(integrate.method is {ctx.cfg.integrate.method})"
        )
        raise ImmunoprofileError(msg)
    obs = ctx.read_obs(["qc_pass", "sample_id"])
    sample = obs["sample_id"].astype("category")
    # codes in the order of the sorted names: the stratified draws group as by the names
    sample = sample.cat.reorder_categories(sorted(sample.cat.categories))
    root = ctx.workdir.root
    for left in root.glob(f".{PARTS}{TMP_MARK}*"):  # of a killed run
        shutil.rmtree(left, ignore_errors=True)
    # the graph's parts go to files as the workers make them, read back when written
    with scratch_folder(root, PARTS) as parts:
        result = build_graph_on_workers(
            ctx.cluster,
            str(ctx.workdir.cohort),
            element,
            obs["qc_pass"].to_numpy(dtype=bool),
            sample.cat.codes.to_numpy(),
            params=g,
            parts_folder=str(parts),
        )
        del obs, sample
        release_memory()
        clusters = {}
        for r, labels in result.clusters.items():
            names = [str(i) for i in range(int(labels.max()) + 1)]
            clusters[leiden_key(r)] = pd.Categorical.from_codes(labels, categories=names)
        neighbors = {
            "connectivities_key": "connectivities",
            "distances_key": "distances",
            "params": {
                "n_neighbors": g.n_neighbors,
                "method": "umap",
                "metric": "euclidean",
                "use_rep": g.use_rep,
            },
        }
        record = {"params": g.model_dump(mode="json"), "seconds": result.seconds, **result.info}
        ctx.update_cohort(
            obs=pd.DataFrame(clusters),
            elems={
                "obsp/distances": result.distances,
                "obsp/connectivities": result.connectivities,
                "obsm/X_umap": result.umap,
                "uns/neighbors": neighbors,
                "uns/graph": record,
            },
        )
    counts = ", ".join(
        f"{len(np.unique(v[v >= 0]))} clusters at {r:g}" for r, v in result.clusters.items()
    )
    sec = result.seconds
    steps = sec["neighbors"] + sec["umap"] + sec.get("leiden_wait", sec["leiden"])
    return f"graph: {g.n_neighbors}-NN graph on {g.use_rep}, {counts}, in {steps:.1f} s"

"""Annotate new cells with the cohort's fitted marker models (add-batch): no refit.

The annotate stage records each level's fitted model (program rates, NB shapes, priors)
in ``cohort.zarr``'s ``uns["annotate"]``; new cells get their posteriors under those
models, mixed with their neighbours' among the new cells (the graph consensus), and the
same labelling rules (`call_labels`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anndata as ad
import dask
import numpy as np
import scipy.sparse as sp
from distributed import Client

from ..cohort import cell_chunks
from ..config import AnnotateConfig
from ..errors import ImmunoprofileError
from ..labels import UNASSIGNED
from ._markers import LEVELS, FeatureMap, MarkerSet, feature_map
from ._model import (
    Consensus,
    MarkerModel,
    call_labels,
    marker_support,
    posteriors,
    sample_label_probabilities,
)
from ._stage import SIZE_UNIT, _feature_counts, _level_graph, by_level


def stored_model(
    record: Mapping[str, Any], markers: MarkerSet, level: str, symbols: Any
) -> tuple[MarkerModel, tuple[str, ...], FeatureMap]:
    """The level's fitted `MarkerModel` from its ``uns["annotate"][level]["model"]``
    record, with its programs' labels and the level's feature map over ``symbols``."""
    fmap = feature_map(markers, level, symbols)
    m = record["model"]
    names = [str(p) for p in np.asarray(m["programs"])]
    features = tuple(str(f) for f in np.asarray(m["features"]))
    if features != fmap.features:
        msg = (
            f"the cohort's {level} model has features {list(features)}, but the marker "
            f"file and genes give {list(fmap.features)}: the marker file or the genes "
            "changed since the annotate stage; re-run it (or add-batch --refit)"
        )
        raise ImmunoprofileError(msg)
    by_name = {p.name: p for p in markers.levels[level]}
    programs = tuple(by_name[n] for n in names)
    model = MarkerModel.from_record(
        m, marker=fmap.marker_matrix(programs), free=fmap.free_matrix(programs)
    )
    return model, tuple(p.label for p in programs), fmap


def annotate_query(
    cells: ad.AnnData,
    *,
    client: Client,
    keep: np.ndarray,
    total_counts: np.ndarray,
    markers: MarkerSet,
    record: Mapping[str, Any],
    connectivities: sp.spmatrix | None,
    params: AnnotateConfig,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Level -> (labels, confidence, label probabilities) of the new cells (a lazily opened view, X chunked by
    cells), under the models in ``record`` (the cohort's ``uns["annotate"]``) and the
    annotate section's labelling rules ``params``.

    ``connectivities`` is the new cells' kNN graph among themselves (None: no graph
    consensus); the B subsets' consensus uses the new B cells' own graph (`b_cell_graph`)
    as the annotate stage does. Cells not in ``keep`` get None and NaN; the label
    probabilities are `sample_label_probabilities` (cells x the level's labels +
    unassigned), each sample's composition re-estimated among the new cells.
    """
    symbols = cells.var.get("gene_symbols", cells.var_names)
    models = {level: stored_model(record[level], markers, level, symbols) for level in LEVELS}
    gene_to_feature = sp.hstack([models[level][2].matrix for level in LEVELS], format="csr")
    keep = np.asarray(keep, dtype=bool)
    mapping = client.scatter(gene_to_feature, broadcast=True, hash=False)
    parts = [
        dask.delayed(_feature_counts)(c.block, keep[c.rows], mapping) for c in cell_chunks(cells.X)
    ]
    features = sp.vstack(client.compute(parts, sync=True), format="csr")  # kept cells only
    kept = np.flatnonzero(keep)
    sample = cells.obs["sample_id"].astype(str).to_numpy()
    size = np.asarray(total_counts, dtype=np.float64) / SIZE_UNIT
    graph = None if connectivities is None else sp.csr_matrix(connectivities)
    widths = [len(models[level][2].features) for level in LEVELS]
    offsets = dict(zip(LEVELS, np.cumsum([0, *widths[:-1]]), strict=True))

    def level_call(
        level: str, consensus: Consensus, members: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        model, program_labels, fmap = models[level]
        cols = np.arange(offsets[level], offsets[level] + len(fmap.features))
        labels = np.full(keep.size, None, dtype=object)
        confidence = np.full(keep.size, np.nan, dtype=np.float32)
        probabilities = np.full((keep.size, len(LEVELS[level]) + 1), np.nan, dtype=np.float32)
        rows = kept[members]
        if rows.size and len(set(program_labels)) < 2:  # the level was not annotated
            labels[rows] = UNASSIGNED
            probabilities[rows] = 0.0
            probabilities[rows, -1] = 1.0
        elif rows.size:
            prob = posteriors(features[np.flatnonzero(members)][:, cols], size[rows], model)
            mask = np.zeros(keep.size, dtype=bool)
            mask[rows] = True
            sub, _ = _level_graph(
                level, cells, client=client, members=mask, rows=rows,
                connectivities=graph, total_counts=total_counts, params=params,
            )  # fmt: skip
            called, conf, _ = call_labels(
                prob,
                sub,
                consensus,
                program_labels=program_labels,
                vocabulary=tuple(LEVELS[level]),
                supported=marker_support(model) >= params.min_marker_support,
                min_confidence=params.min_confidence,
                log_prior=model.log_prior,
            )
            labels[rows], confidence[rows] = called, conf
            probabilities[rows] = sample_label_probabilities(
                prob, model.log_prior, sample[rows], program_labels=program_labels,
                vocabulary=tuple(LEVELS[level]),
                supported=marker_support(model) >= params.min_marker_support,
            )  # fmt: skip
        return labels, confidence, probabilities

    # members: positions among the kept cells
    return by_level(np.ones(kept.size, dtype=bool), params, level_call, lambda out, _: out[0][kept])

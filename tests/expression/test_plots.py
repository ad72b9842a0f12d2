"""The expression stage's report figures."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from pipeline.expression import (
    program_trajectories,
    sample_order,
    top_genes_heatmap,
    volcano_grid,
)


def _de() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frames = []
    for cell_type, n_hits in (("naive", 2), ("DN2", 9), ("B", 0)):
        p = rng.uniform(0.01, 1, 200)
        p[:n_hits] = 1e-8
        frames.append(pd.DataFrame({
            "cell_type": cell_type, "gene": [f"G{i}" for i in range(200)],
            "contrast": "response@month0", "log2fc": rng.normal(0, 1, 200), "pvalue": p,
            "qvalue": np.minimum(p * 200, 1.0),
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def test_volcano_panels_put_the_cell_types_with_most_calls_first() -> None:
    fig = volcano_grid(_de(), contrast="response@month0")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["DN2: 9 genes at q < 0.05", "naive: 2 genes at q < 0.05",
                      "B: 0 genes at q < 0.05"]  # fmt: skip
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert len(labels) == 5 and set(labels) <= {f"G{i}" for i in range(9)}


def test_a_contrast_without_tests_or_a_short_table_is_refused() -> None:
    with pytest.raises(ValueError, match="no tested genes for contrast 'time3@responder'"):
        volcano_grid(_de(), contrast="time3@responder")
    with pytest.raises(ValueError, match="lacks columns"):
        volcano_grid(_de().drop(columns="qvalue"), contrast="response@month0")


def _pseudobulk() -> ad.AnnData:
    """DN2 pseudobulk of 4 patients x 2 months, gene G0 higher in non-responders."""
    rng = np.random.default_rng(1)
    obs = pd.DataFrame({
        "sample_id": [f"P{p}_m{m}" for p in range(4) for m in (0, 6)],
        "patient_id": [f"P{p}" for p in range(4) for _ in (0, 6)],
        "timepoint_months": [m for _ in range(4) for m in (6, 0)],
        "response": ["non_responder" if p % 2 else "responder" for p in range(4) for _ in (0, 6)],
        "cell_type": "DN2", "in_models": True,
    })  # fmt: skip
    x = rng.poisson(50, (8, 200)).astype(np.int64)
    x[obs["response"] == "non_responder", 0] *= 8
    return ad.AnnData(X=x, obs=obs.set_index(obs["sample_id"].to_numpy()),
                      var=pd.DataFrame(index=[f"G{i}" for i in range(200)]))  # fmt: skip


def test_samples_are_ordered_by_group_then_month_then_patient() -> None:
    order = sample_order(_pseudobulk().obs)
    assert list(order["sample_id"]) == ["P0_m6", "P2_m6", "P0_m0", "P2_m0",
                                        "P1_m6", "P3_m6", "P1_m0", "P3_m0"]  # fmt: skip


def test_heatmap_shows_the_top_genes_scaled_per_gene_in_sample_order() -> None:
    de = _de()
    fig = top_genes_heatmap(_pseudobulk(), de, cell_type="DN2", contrast="response@month0",
                            n_genes=9)  # fmt: skip
    heat = fig.axes[1]
    rows = [t.get_text() for t in heat.get_yticklabels()]
    assert rows == [f"G{i}" for i in range(9)]  # q-value order (ties by p-value)
    z = heat.images[0].get_array()
    assert z.shape == (9, 8)
    np.testing.assert_allclose(np.asarray(z).mean(axis=1), 0, atol=1e-9)  # centred per gene
    # G0, planted higher in non-responders: the right half (non-responders) is positive
    assert (np.asarray(z)[0, 4:] > 0).all() and (np.asarray(z)[0, :4] < 0).all()
    with pytest.raises(ValueError, match="no tested genes of 'pDC'"):
        top_genes_heatmap(_pseudobulk(), de, cell_type="pDC", contrast="response@month0")


def test_trajectories_draw_one_line_per_patient_and_one_mean_per_group() -> None:
    pb = _pseudobulk()
    scores = pd.DataFrame({"sample_id": np.tile(pb.obs["sample_id"], 2), "cell_type": "DN2",
                           "program": np.repeat(["ifn", "abc"], 8),
                           "score": np.arange(16, dtype=float)})  # fmt: skip
    fig = program_trajectories(scores, pb.obs, cell_type="DN2")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["ifn", "abc"]
    lines = panels[0].get_lines()
    assert len(lines) == 4 + 2
    first = lines[0]  # patient P0, months in order
    assert list(first.get_xdata()) == [0, 6] and list(first.get_ydata()) == [1.0, 0.0]
    with pytest.raises(ValueError, match="no program scores for 'B'"):
        program_trajectories(scores, pb.obs, cell_type="B")

"""The expression stage's report figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.expression import volcano_grid


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

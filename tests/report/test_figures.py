"""The report's figure helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.report._figures import rows_by_value


@pytest.mark.parametrize("as_category", [True, False], ids=["categorical", "text"])
def test_rows_by_value_are_pandas_groups_in_order_of_first_appearance(as_category) -> None:
    """Each value's rows (as pandas groups them), the values in order of first
    appearance; missing values and unused categories left out."""
    rng = np.random.default_rng(0)
    values = rng.choice(["P2_m0", "P10_m3", "P1_m6", None], size=500).astype(object)
    column = pd.Series(values)
    if as_category:
        column = column.astype(pd.CategoricalDtype(["P1_m6", "P10_m3", "P2_m0", "unused"]))
    names, rows = rows_by_value(column)
    assert names == list(dict.fromkeys(v for v in values if v is not None))
    groups = pd.Series(np.arange(500)).groupby(values.astype(str)).indices
    for name, at in zip(names, rows, strict=True):
        np.testing.assert_array_equal(at, groups[name])
    assert rows_by_value(pd.Series([], dtype="category")) == ([], [])

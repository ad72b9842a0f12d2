"""The change report's comparison of the abundance tests before and after a batch."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.add_batch import moved_contrasts


def _tests(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame({"cell_type": [r[0] for r in rows], "denominator": "B",
                         "contrast": "response@month0", "method": "glmm",
                         "estimate": [r[1] for r in rows], "qvalue": [r[2] for r in rows]})  # fmt: skip


def test_moved_contrasts_name_every_kind_of_change() -> None:
    before = _tests([("a", 1.0, 0.01), ("b", np.nan, np.nan), ("c", -1.0, 0.5),
                     ("d", 0.5, 0.01), ("e", 0.4, 0.3)])  # fmt: skip
    after = _tests([("a", 0.9, 0.2), ("b", 2.0, 0.3), ("c", -1.1, 0.01), ("d", -0.5, 0.01),
                    ("e", 0.5, 0.4), ("f", 1.0, 0.5)])  # fmt: skip
    moved = moved_contrasts(before, after, 0.05).set_index("cell_type")["change"].to_dict()
    assert moved == {"a": "no longer significant", "b": "now estimable", "c": "now significant",
                     "d": "changed sign", "f": "new contrast"}  # fmt: skip
    assert set(moved_contrasts(None, after, 0.05)["change"]) == {"new contrast"}

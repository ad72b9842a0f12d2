"""The change report's comparison of the abundance tests before and after a batch."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.add_batch import moved_contrasts, moved_gene_calls


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


def test_gene_calls_that_moved_and_new_genes_only_when_significant() -> None:
    def de(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
        return pd.DataFrame({"level": "b_subset", "cell_type": "DN2", "gene": [r[0] for r in rows],
                             "contrast": "response@month0", "method": "deseq2_across_patients",
                             "log2fc": [r[1] for r in rows], "qvalue": [r[2] for r in rows]})  # fmt: skip

    before = de([("IFI27", 1.2, 0.01), ("ISG15", 0.8, 0.2), ("CD19", 0.1, 0.9)])
    after = de([("IFI27", 1.1, 0.09), ("ISG15", 0.9, 0.03), ("CD19", 0.2, 0.8),
                ("FCRL5", 1.5, 0.001), ("ZEB2", 0.3, 0.6)])  # fmt: skip
    moved = moved_gene_calls(before, after, 0.05).set_index("gene")["change"].to_dict()
    assert moved == {"IFI27": "no longer significant", "ISG15": "now significant",
                     "FCRL5": "newly tested, significant"}  # fmt: skip
    row = moved_gene_calls(before, after, 0.05).set_index("gene").loc["IFI27"]
    assert (row["log2fc_before"], row["qvalue_after"]) == (1.2, 0.09)

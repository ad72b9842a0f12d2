"""Our labels in other vocabularies: Cell Ontology ids and CellTypist / Azimuth labels."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from pipeline.annotate import cell_type_columns, compatible_fraction, load_vocabularies
from pipeline.labels import B_SUBSETS, LINEAGES, UNASSIGNED


def test_every_label_has_an_ontology_term_and_the_broader_ones_say_so() -> None:
    vocab = load_vocabularies()
    assert vocab.version >= 1 and len(vocab.sha256) == 64
    for level, labels in (("lineage", LINEAGES), ("b_subset", B_SUBSETS)):
        terms = vocab.levels[level]
        assert set(terms) == {*labels, UNASSIGNED}
        for label, t in terms.items():
            assert re.fullmatch(r"CL:\d{7}", t.cl_id) or (
                label == UNASSIGNED and t.cl_id == "unknown"
            )
            assert t.cl_match in {"exact", "broader"} and t.cl_name
        exact = [t.cl_id for t in terms.values() if t.cl_match == "exact"]
        assert len(exact) == len(set(exact))  # no two labels claim one exact term
    b = vocab.levels["b_subset"]
    assert b["DN1"].cl_id == b["DN2"].cl_id and b["DN2"].cl_match == "broader"
    assert vocab.ours("b_subset", "Age-associated B cells") == {"DN2"}
    assert vocab.ours("b_subset", "Memory B cells") == {
        "unswitched_memory",
        "switched_memory",
        "DN1",
    }
    assert vocab.ours("lineage", "CD14 Mono") == {"mono_CD14"}


def test_cell_type_is_the_finest_label_with_its_ontology_id() -> None:
    lineage = pd.Series(["B", "B", "T_CD4", None, "unassigned"], dtype=object)
    b_subset = pd.Series(["DN2", "unassigned", None, None, None], dtype=object)
    out = cell_type_columns(lineage, b_subset)
    assert out["cell_type"].astype(object).where(out["cell_type"].notna(), None).tolist() == [
        "DN2", "B", "T_CD4", None, "unassigned",
    ]  # fmt: skip
    ids = out["cell_type_ontology_term_id"]
    assert ids.astype(object).where(ids.notna(), None).tolist() == [
        "CL:0000981", "CL:0000236", "CL:0000624", None, "unknown",
    ]  # fmt: skip


def test_cell_type_of_the_stage_categoricals_is_that_of_their_text() -> None:
    """The stage passes categoricals whose categories are every label of the level (most
    absent): the same columns, categories included, as from the labels as text."""
    rng = np.random.default_rng(3)
    lin = rng.choice(np.array(["B", "T_CD4", UNASSIGNED, None], dtype=object), 300)
    sub = np.where(lin == "B", rng.choice(np.array(["DN2", "naive", UNASSIGNED]), 300), None)
    want = cell_type_columns(pd.Series(lin), pd.Series(sub))
    got = cell_type_columns(
        pd.Series(pd.Categorical(lin, categories=[*LINEAGES, UNASSIGNED])),
        pd.Series(pd.Categorical(sub, categories=[*B_SUBSETS, UNASSIGNED])),
    )
    pd.testing.assert_frame_equal(got, want)
    assert set(got["cell_type"].cat.categories) == {"B", "T_CD4", UNASSIGNED, "DN2", "naive"}


def test_reference_labels_in_a_known_vocabulary_are_compared_through_the_table() -> None:
    ours = np.array(["DN2", "switched_memory", "naive", "DN1", UNASSIGNED], dtype=object)
    theirs = np.array(
        ["Age-associated B cells", "Memory B cells", "Memory B cells", "Naive B cells", "B naive"],
        dtype=object,
    )
    fraction, n = compatible_fraction("b_subset", ours, theirs)
    assert n == 4 and fraction == 0.5  # the unassigned cell is not counted
    assert compatible_fraction("b_subset", ours, np.array(["x"] * 5, dtype=object)) == (None, 0)

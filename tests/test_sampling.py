"""Stratified subsamples: every group in proportion, seeded, all items when small."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.sampling import rows_by_value, sorted_codes, stratified_sample


def test_each_group_keeps_its_share_and_the_draw_is_seeded() -> None:
    groups = np.repeat(["a", "b", "c"], [6000, 3000, 1000])
    rows = stratified_sample(groups, 1000, seed=4)
    assert (np.diff(rows) > 0).all()  # sorted, no repeats
    shares = {g: int((groups[rows] == g).sum()) for g in "abc"}
    assert shares == {"a": 600, "b": 300, "c": 100}
    np.testing.assert_array_equal(rows, stratified_sample(groups, 1000, seed=4))
    assert not np.array_equal(rows, stratified_sample(groups, 1000, seed=5))


def test_small_groups_keep_one_and_small_inputs_are_whole() -> None:
    groups = np.array(["a"] * 999 + ["rare"])
    assert "rare" in groups[stratified_sample(groups, 10, seed=0)]
    np.testing.assert_array_equal(stratified_sample(groups, 5000, seed=0), np.arange(1000))


def test_sorted_codes_group_as_the_text_does() -> None:
    """A categorical column's categories come in the order the samples were read, not
    sorted; its codes, numbered as the text sorts, give the same stratified subsample as
    the text (annotate's marker models are fitted on it), and missing values are -1."""
    rng = np.random.default_rng(4)
    names = np.array(["S10", "S2", "S1", "S03"], dtype=object)
    text = names[rng.integers(0, names.size, size=2000)]
    column = pd.Series(pd.Categorical(text, categories=["S10", "S2", "S1", "S03"]))
    codes = sorted_codes(column)
    assert np.array_equal(codes, np.unique(text, return_inverse=True)[1])
    assert np.array_equal(stratified_sample(codes, 300, 7), stratified_sample(text, 300, 7))
    assert np.array_equal(sorted_codes(text), codes)  # plain text: the same
    assert sorted_codes(pd.Series(["b", None, "a"]))[1] == -1


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


def test_stratified_draws_are_those_of_a_scan_per_group() -> None:
    """The groups' members from one sort draw exactly what a scan of the items per group
    drew (the seeded subsamples of earlier runs stay the same)."""

    def by_scan(groups: np.ndarray, size: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        chosen = []
        for g in np.unique(groups):
            members = np.flatnonzero(groups == g)
            take = min(members.size, max(1, round(size * members.size / groups.size)))
            chosen.append(rng.choice(members, take, replace=False))
        return np.sort(np.concatenate(chosen))

    rng = np.random.default_rng(1)
    for groups in (rng.integers(0, 40, 5000), rng.choice(["b", "a", "c10", "c2"], 3000)):
        for size in (17, 900):
            np.testing.assert_array_equal(
                stratified_sample(groups, size, 3), by_scan(groups, size, 3)
            )

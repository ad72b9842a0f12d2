"""Stratified subsamples: every group in proportion, seeded, all items when small."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.sampling import sorted_codes, stratified_sample


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

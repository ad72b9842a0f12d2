"""Stratified subsamples: every group in proportion, seeded, all items when small."""

from __future__ import annotations

import numpy as np

from pipeline.sampling import stratified_sample


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

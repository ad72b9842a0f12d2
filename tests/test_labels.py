"""Sample ids and batch names name folders in the workdir."""

from __future__ import annotations

import pytest

from pipeline.labels import NAME_MAX_LENGTH, name_problem


@pytest.mark.parametrize("name", ["P001_m0", "s.1-b", "_x", "9", "a" * NAME_MAX_LENGTH])
def test_folder_safe_names_pass(name: str) -> None:
    assert name_problem(name) is None


@pytest.mark.parametrize(
    "name", ["", ".", "..", ".x.tmp-1", "-rf", "a/b", "a b", "é", "x\n", "a\\b"]
)
def test_names_that_are_no_plain_folder_name_are_refused(name: str) -> None:
    problem = name_problem(name)
    assert problem is not None and "must start with a letter, digit or '_'" in problem


def test_a_name_longer_than_a_file_name_allows_is_refused() -> None:
    assert name_problem("a" * 101) == "is 101 characters long; at most 100 are allowed"

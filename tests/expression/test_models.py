"""Designs of the expression fits and the pure kernels (no cluster)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pipeline.expression import (
    cell_type_designs,
    group_sums,
    hat_values,
    pseudobulk_groups,
    sample_rows,
)


def _samples(n_patients: int = 6, months=(0, 3, 6), batches: int = 2) -> pd.DataFrame:
    rows = [(f"P{p}_m{t}", f"P{p}", t, "non_responder" if p % 2 else "responder",
             f"b{(p + i) % batches}") for p in range(n_patients) for i, t in enumerate(months)]  # fmt: skip
    return pd.DataFrame(
        rows, columns=["sample_id", "patient_id", "timepoint_months", "response", "batch"]
    )


def test_a_complete_design_gets_both_fits_with_every_contrast() -> None:
    plans = cell_type_designs(_samples())
    fits = {f.name: f for f in plans.fits}
    assert list(fits["across_patients"].contrasts.index) == [
        "response@month0", "response@month3", "response@month6"]  # fmt: skip
    blocked = fits["patients_blocked"]
    assert set(blocked.contrasts.index) == {
        "time3@responder", "time3@non_responder", "response:time3",
        "time6@responder", "time6@non_responder", "response:time6"}  # fmt: skip
    # patients nested in groups: one column per patient, none for response itself
    assert sum(c.startswith("patient") for c in blocked.x.columns) == 6
    inter = blocked.contrasts.loc["response:time6"]
    assert inter["non_responder:month6"] == 1 and inter["responder:month6"] == -1
    assert not plans.not_estimable


def test_missing_design_cells_are_named_not_estimated() -> None:
    s = _samples()
    s = s[~((s["response"] == "responder") & (s["timepoint_months"] == 6))]
    plans = cell_type_designs(s)
    assert "no responder patient has samples at month 0 and month 6" in plans.not_estimable[
        "time6@responder"]  # fmt: skip
    assert "response:time6" in plans.not_estimable
    assert "no responder samples at month 6" in plans.not_estimable["response@month6"]
    estimated = {c for f in plans.fits for c in f.contrasts.index}
    assert estimated.isdisjoint(plans.not_estimable)
    assert "time6@non_responder" in estimated


def test_batch_is_left_out_when_confounded_and_too_few_samples_say_so() -> None:
    s = _samples()
    s["batch"] = np.where(s["response"] == "responder", "b0", "b1")
    plans = cell_type_designs(s)
    across = next(f for f in plans.fits if f.name == "across_patients")
    assert not any(c.startswith("batch") for c in across.x.columns)
    assert any("confounded" in n for n in across.notes)
    pilot = cell_type_designs(_samples(n_patients=2, months=(0, 6)))  # 1 patient per group
    assert not pilot.fits
    assert "leave no degrees of freedom" in pilot.not_estimable["response@month0"]
    assert "no residual degrees of freedom" in pilot.not_estimable["time6@responder"]


@pytest.mark.parametrize("n_cells", [50, 9_000])  # 9,000: across the kernel's cell slices
def test_group_sums_adds_each_cell_to_each_of_its_groups(n_cells: int) -> None:
    rng = np.random.default_rng(0)
    x = sp.random(n_cells, 30, density=0.3, format="csr", random_state=1, dtype=np.float64)
    x.data = np.ceil(x.data * 10)
    codes = np.column_stack([rng.integers(-1, 4, n_cells), rng.integers(-1, 7, n_cells)])
    codes[:, 1] = np.where(codes[:, 1] >= 0, codes[:, 1] + 4, -1)  # a second level: 4..10
    groups, sums = group_sums(x, codes)
    dense = x.toarray()
    for g, row in zip(groups, sums, strict=True):
        cells = (codes == g).any(axis=1)
        np.testing.assert_array_equal(row, dense[cells].sum(axis=0))
    assert set(groups) == set(codes[codes >= 0])


def test_groups_cover_qc_passed_labelled_cells_at_both_levels() -> None:
    cells = pd.DataFrame({
        "sample_id": ["s1", "s1", "s1", "s2", "s2"],
        "qc_pass": [True, True, False, True, True],
        "lineage": ["B", "T_CD4", "B", "B", "unassigned"],
        "b_subset": ["DN2", "", "naive", "unassigned", ""],
    })  # fmt: skip
    rows = sample_rows(cells["sample_id"])
    assert {k: v.tolist() for k, v in rows.items()} == {"s1": [0, 1, 2], "s2": [3, 4]}
    # the same from categorical labels (as read from cohort.zarr), categories in any order
    as_read = cells.astype({"sample_id": pd.CategoricalDtype(["s2", "s1"]), "lineage": "category",
                            "b_subset": "category"})  # fmt: skip
    assert list(sample_rows(as_read["sample_id"])) == ["s1", "s2"]
    assert (
        pseudobulk_groups(as_read, rows)[1].tolist() == pseudobulk_groups(cells, rows)[1].tolist()
    )
    groups, codes = pseudobulk_groups(cells, rows)
    names = (groups["sample_id"] + ":" + groups["level"] + ":" + groups["cell_type"]).tolist()
    assert names == ["s1:lineage:T_CD4", "s1:lineage:B", "s2:lineage:B", "s1:b_subset:DN2"]
    assert groups["n_cells"].tolist() == [1, 1, 1, 1]
    assert codes.tolist() == [[1, 3], [0, -1], [-1, -1], [2, -1], [-1, -1]]


def test_hat_values_are_leverages() -> None:
    x = np.column_stack([np.ones(6), [0, 0, 0, 1, 1, 1.0]])
    np.testing.assert_allclose(hat_values(x), np.full(6, 1 / 3))

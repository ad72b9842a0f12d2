"""Label draws and Rubin's rules (`pipeline.abundance._draws`): the drawn tables, the
hierarchy of the draws, and the pooled intervals against R's mice on the same numbers."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pandas as pd
import pytest
from distributed import Client

from pipeline.abundance import abundance_counts
from pipeline.abundance._draws import draw_counts, probability_matrix, rubin_pool
from pipeline.labels import B_SUBSETS, LINEAGES

REFERENCE = Path(__file__).parent / "data" / "rubin_reference"


def _obs(n_per_sample: int = 400, samples: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    n = n_per_sample * samples
    sample = np.repeat([f"s{i}" for i in range(samples)], n_per_sample)
    lineage = rng.choice(["B", "T_CD4", "NK"], size=n, p=[0.3, 0.5, 0.2])
    b_subset = np.where(lineage == "B", rng.choice(["naive", "DN2"], size=n), None)
    return pd.DataFrame({
        "sample_id": sample,
        "patient_id": np.repeat([f"p{i // 2}" for i in range(samples)], n_per_sample),
        "timepoint_months": np.tile(np.repeat([0, 3], n_per_sample), samples // 2),
        "response": np.repeat(["responder", "non_responder"] * (samples // 2), n_per_sample),
        "batch": "b1",
        "qc_pass": np.arange(n) % 23 != 0,
        "lineage": lineage,
        "b_subset": b_subset,
    })  # fmt: skip


def test_certain_probabilities_draw_the_hard_table() -> None:
    obs = _obs()
    lin = probability_matrix(obs["lineage"], None, "lineage")  # no stored ones: one-hot
    sub = probability_matrix(obs["b_subset"], None, "b_subset")
    drawn = list(draw_counts(obs, lin, sub, n_draws=3, seed=1))
    hard = abundance_counts(obs)
    for table in drawn:
        pd.testing.assert_frame_equal(table, hard)


def test_draws_follow_the_probabilities_and_the_hierarchy() -> None:
    """A third of the B cells are B with probability 0.5 (else NK), and naive / DN2 with
    0.7 / 0.3: over draws the mean counts are the probabilities' sums, cells drawn NK
    never count as a B subset, and every level's counts add up to its totals."""
    obs = _obs()
    lin = probability_matrix(obs["lineage"], None, "lineage")
    sub = probability_matrix(obs["b_subset"], None, "b_subset")
    b, nk = LINEAGES.index("B"), LINEAGES.index("NK")
    naive, dn2 = B_SUBSETS.index("naive"), B_SUBSETS.index("DN2")
    unsure = np.flatnonzero(obs["lineage"].to_numpy() == "B")[::3]
    lin[unsure, b], lin[unsure, nk] = 0.5, 0.5
    sub[unsure] = 0.0
    sub[unsure, naive], sub[unsure, dn2] = 0.7, 0.3
    tables = list(draw_counts(obs, lin, sub, n_draws=200, seed=2))
    keep = obs["qc_pass"].to_numpy()
    expected_b = lin[keep, b].sum()
    b_counts = [t.query("level == 'lineage' and cell_type == 'B'")["count"].sum() for t in tables]
    assert np.mean(b_counts) == pytest.approx(expected_b, rel=0.01)
    assert np.std(b_counts) > 0  # the unsure cells do move
    expected_dn2 = (lin[keep, b] * sub[keep, dn2]).sum()
    dn2_counts = [
        t.query("level == 'b_subset' and cell_type == 'DN2'")["count"].sum() for t in tables
    ]
    assert np.mean(dn2_counts) == pytest.approx(expected_dn2, rel=0.02)
    for t in tables:
        for _, part in t.groupby(["level", "sample_id"]):
            assert part["count"].sum() == part["total"].iloc[0]
        b_total = t.query("level == 'lineage' and cell_type == 'B'").set_index("sample_id")["count"]
        sub_total = t[t["level"] == "b_subset"].drop_duplicates("sample_id").set_index("sample_id")
        assert (sub_total["total"] == b_total.reindex(sub_total.index)).all()
    # the same seed, the same draws
    again = next(draw_counts(obs, lin, sub, n_draws=1, seed=2))
    pd.testing.assert_frame_equal(again, tables[0])


def test_stored_probabilities_are_checked_and_fall_back_to_hard_labels() -> None:
    obs = _obs(n_per_sample=10, samples=2)
    stored = np.full((len(obs), len(LINEAGES) + 1), np.nan, dtype=np.float32)
    stored[0] = 0.0
    stored[0, LINEAGES.index("NK")] = 2.0  # rows are normalized
    prob = probability_matrix(obs["lineage"], stored, "lineage")
    assert prob[0, LINEAGES.index("NK")] == 1.0
    hard = LINEAGES.index(obs["lineage"].iloc[1])
    assert prob[1, hard] == 1.0 and prob[1].sum() == 1.0  # a NaN row: the hard label
    with pytest.raises(ValueError, match=r"obsm lineage_probabilities has shape \(20, 3\)"):
        probability_matrix(obs["lineage"], stored[:, :3], "lineage")


def test_identical_draws_pool_to_the_complete_data_test() -> None:
    one = pd.DataFrame({"cell_type": ["DN2", "naive"], "denominator": "B",
                        "contrast": "response@month0", "method": ["glmm", "propeller"],
                        "estimate": [0.8, -0.2], "se": [0.3, 0.1], "df": [np.nan, 17.0],
                        "ci_low": 0.0, "ci_high": 0.0, "pvalue": 0.0})  # fmt: skip
    pooled = rubin_pool([one] * 5)
    assert np.allclose(pooled["estimate"], one["estimate"])
    assert np.allclose(pooled["fmi"], 0.0)
    from scipy.stats import norm, t

    half = [norm.ppf(0.975) * 0.3, t.ppf(0.975, 17) * 0.1]
    assert np.allclose(pooled["ci_high"] - pooled["estimate"], half)


def test_rubin_rules_agree_with_mice() -> None:
    """mice::pool.scalar on the same estimates and variances
    (tests/abundance/data/rubin_reference/make_reference.R): the pooled estimate, total
    variance, Barnard-Rubin degrees of freedom (complete-data df 20, and infinite)."""
    ref = json.loads((REFERENCE / "reference.json").read_text())
    for case in ref:
        draws = [
            pd.DataFrame({"cell_type": ["DN2"], "denominator": "B", "contrast": "c",
                          "method": "glmm", "estimate": [q], "se": [np.sqrt(u)],
                          "df": [np.nan if case["dfcom"] is None else case["dfcom"]]})
            for q, u in zip(case["Q"], case["U"], strict=True)
        ]  # fmt: skip
        pooled = rubin_pool(draws).iloc[0]
        assert pooled["estimate"] == pytest.approx(case["qbar"], rel=1e-10)
        from scipy.stats import t

        half = pooled["ci_high"] - pooled["estimate"]
        assert half == pytest.approx(t.ppf(0.975, case["df"]) * np.sqrt(case["t"]), rel=1e-8)
        assert pooled["fmi"] == pytest.approx(case["lambda"], rel=1e-8)


def test_the_workers_draw_what_this_process_draws(
    monkeypatch: pytest.MonkeyPatch, client: Client
) -> None:
    """The stage keeps the stored probabilities as they are (float32, read by the tasks
    from a Dask array) and draws a block of cells at a time, each block seeded by its
    number: the tables are those of `probability_matrix`'s whole matrices in this
    process, and of a task per block on the workers."""
    from pipeline.abundance import _draws

    monkeypatch.setattr(_draws, "DRAW_ROWS", 97)  # 17 blocks
    obs = _obs()
    rng = np.random.default_rng(7)
    stored = rng.dirichlet(np.ones(len(LINEAGES) + 1), size=len(obs)).astype(np.float32)
    stored[::5] = np.nan  # no stored row: the hard label
    b_stored = rng.dirichlet(np.ones(len(B_SUBSETS) + 1), size=len(obs)).astype(np.float32)
    b_stored[obs["lineage"].to_numpy() != "B"] = np.nan
    whole = list(draw_counts(
        obs, probability_matrix(obs["lineage"], stored, "lineage"),
        probability_matrix(obs["b_subset"], b_stored, "b_subset"), n_draws=3, seed=5,
    ))  # fmt: skip
    lazy = [da.from_array(m, chunks=(150, m.shape[1])) for m in (stored, b_stored)]
    on_workers = list(draw_counts(
        obs, _draws.label_probabilities(obs["lineage"], lazy[0], "lineage"),
        _draws.label_probabilities(obs["b_subset"], lazy[1], "b_subset"), n_draws=3, seed=5,
        client=client,
    ))  # fmt: skip
    for a, b in zip(whole, on_workers, strict=True):
        pd.testing.assert_frame_equal(a, b)
    assert any(not a.equals(whole[0]) for a in whole[1:])  # the draws do differ
    again = next(draw_counts(
        obs, _draws.label_probabilities(obs["lineage"], stored, "lineage"),
        _draws.label_probabilities(obs["b_subset"], b_stored, "b_subset"), n_draws=1, seed=5,
    ))  # fmt: skip
    pd.testing.assert_frame_equal(again, whole[0])  # the same seed, the same first draw
    zeros = stored.copy()
    zeros[1] = 0.0
    with pytest.raises(ValueError, match="obsm lineage_probabilities has rows of zeros for 1"):
        _draws.label_probabilities(obs["lineage"], zeros, "lineage")
    # read by the tasks: they check the rows and say which obsm key is wrong
    with pytest.raises(ValueError, match="obsm lineage_probabilities has rows of zeros for 1"):
        next(draw_counts(
            obs, _draws.label_probabilities(obs["lineage"], da.from_array(zeros), "lineage"),
            _draws.label_probabilities(obs["b_subset"], lazy[1], "b_subset"), n_draws=1,
            seed=5, client=client,
        ))  # fmt: skip

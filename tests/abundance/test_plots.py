"""The abundance report figures against small synthetic counts and tests tables."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from pipeline.abundance._plots import (
    composition_plot,
    forest_grid,
    forest_plot,
    trajectory_plot,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt

PATIENTS = {
    "P1": "responder", "P2": "responder", "P3": "non_responder",
    "P4": "non_responder", "P5": "non_responder", "P6": "unknown",
}  # fmt: skip
MONTHS = (0, 3, 6)
NO_B_SAMPLE = "P4_m3"


def _counts(patients: dict[str, str] = PATIENTS, seed: int = 0) -> pd.DataFrame:
    """Tidy counts: lineage (T_CD4, B, NK, unassigned) and b_subset (naive, DN2,
    unassigned) per sample; NO_B_SAMPLE has no B cells."""
    rng = np.random.default_rng(seed)
    rows = []
    for patient, response in patients.items():
        for month in MONTHS:
            sid = f"{patient}_m{month}"
            design = {"sample_id": sid, "patient_id": patient, "timepoint_months": month,
                      "response": response, "batch": f"b{month // 3}"}  # fmt: skip
            drawn = rng.integers([300, 20, 50, 0], [900, 200, 300, 30])
            lineage = dict(zip(["T_CD4", "B", "NK", "unassigned"], drawn, strict=True))
            if sid == NO_B_SAMPLE:
                lineage["B"] = 0
            drawn = rng.multinomial(lineage["B"], [0.7, 0.2, 0.1])
            subsets = dict(zip(["naive", "DN2", "unassigned"], drawn, strict=True))
            for level, table in (("lineage", lineage), ("b_subset", subsets)):
                total = int(sum(table.values()))
                for cell_type, count in table.items():
                    rows.append({**design, "level": level, "cell_type": cell_type,
                                 "count": int(count), "total": total})  # fmt: skip
    return pd.DataFrame(rows)


def _tests() -> pd.DataFrame:
    contrasts = ["response:time6", "time6@responder", "response@month6", "time6@non_responder",
                 "response@month0", "time3@responder", "time3@non_responder",
                 "response@month3"]  # fmt: skip
    rows = []
    for c, contrast in enumerate(contrasts):
        for t, cell_type in enumerate(["naive", "DN2", "unassigned"]):
            estimate = 0.3 * (t + 1) * (-1) ** c
            rows.append({"cell_type": cell_type, "denominator": "B", "contrast": contrast,
                         "estimate": estimate, "ci_low": estimate - 0.4,
                         "ci_high": estimate + 0.4, "pvalue": 0.01 * (t + 1),
                         "qvalue": 0.02 * (t + 1) ** 2, "method": "glmm",
                         "level": "b_subset"})  # fmt: skip
    tests = pd.DataFrame(rows)
    nan_row = (tests["contrast"] == "response@month3") & (tests["cell_type"] == "unassigned")
    tests.loc[nan_row, ["estimate", "ci_low", "ci_high", "pvalue", "qvalue"]] = np.nan
    other_method = tests.iloc[:3].assign(method="clr", estimate=9.0)
    return pd.concat([tests, other_method], ignore_index=True)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=80)
    assert path.exists() and path.stat().st_size > 1000
    plt.close(fig)


def _lines(ax, kind: str) -> list:
    return [line for line in ax.lines if (line.get_gid() or "").startswith(kind)]


def test_trajectory_within_b_cells(tmp_path: Path) -> None:
    counts = _counts()
    fig = trajectory_plot(counts, level="b_subset", denominator="B", cell_types=["DN2", "naive"])
    assert len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["DN2", "naive"]
    ax = fig.axes[0]
    assert len(_lines(ax, "patient:")) == len(PATIENTS) == 6
    assert len(_lines(ax, "median:")) == 3  # responder, non_responder, unknown
    b = counts[(counts["level"] == "b_subset") & (counts["cell_type"] == "DN2")]
    p1 = b[b["patient_id"] == "P1"].sort_values("timepoint_months")
    (line,) = [line for line in ax.lines if line.get_gid() == "patient:P1"]
    np.testing.assert_array_equal(line.get_xdata(), MONTHS)
    np.testing.assert_allclose(line.get_ydata(), 100 * p1["count"] / p1["total"])
    (p4,) = [line for line in ax.lines if line.get_gid() == "patient:P4"]
    np.testing.assert_array_equal(p4.get_xdata(), [0, 6])  # the sample without B cells left out
    _save(fig, tmp_path / "trajectory_b.png")


def test_trajectory_b_subset_within_pbmc(tmp_path: Path) -> None:
    counts = _counts()
    fig = trajectory_plot(counts, level="b_subset", denominator="PBMC", cell_types=["naive"])
    (line,) = [line for line in fig.axes[0].lines if line.get_gid() == "patient:P1"]
    rows = counts[counts["patient_id"] == "P1"].sort_values("timepoint_months")
    naive = rows[rows["cell_type"] == "naive"]["count"].to_numpy()
    pbmc = rows[rows["cell_type"] == "T_CD4"]["total"].to_numpy()  # the lineage total
    np.testing.assert_allclose(line.get_ydata(), 100 * naive / pbmc)
    assert "PBMC" in fig.axes[0].get_ylabel()
    _save(fig, tmp_path / "trajectory_pbmc.png")


def test_trajectory_lineage_default_types_skip_unassigned(tmp_path: Path) -> None:
    fig = trajectory_plot(_counts(), level="lineage", denominator="PBMC")
    assert [ax.get_title() for ax in fig.axes] == ["T_CD4", "NK", "B"]  # contract order
    assert all(len(_lines(ax, "patient:")) == 6 for ax in fig.axes)
    assert all(ax.get_xlabel() == "timepoint (months)" for ax in fig.axes)
    _save(fig, tmp_path / "trajectory_lineage.png")


def _points(ax) -> dict[str, float]:
    """Cell type -> x of its estimate marker."""
    labels = [t.get_text() for t in ax.get_yticklabels()]
    points = {}
    for collection in ax.collections:
        if (collection.get_gid() or "").startswith("estimate"):
            for x, y in collection.get_offsets():
                points[labels[round(y)]] = float(x)
    return points


def test_forest_plot_points_are_the_estimates(tmp_path: Path) -> None:
    tests = _tests()
    fig = forest_plot(tests, contrast="response@month3", denominator="B")
    (ax,) = fig.axes
    rows = tests[(tests["contrast"] == "response@month3") & (tests["method"] == "glmm")]
    expected = rows.dropna(subset="estimate").set_index("cell_type")["estimate"].to_dict()
    assert _points(ax) == pytest.approx(expected)
    texts = [t.get_text() for t in ax.texts]
    assert "not fitted" in texts  # the NaN row
    assert "q=0.02" in texts and "q=NA" in texts
    (starred,) = [c for c in ax.collections if c.get_gid() == "estimate:significant"]
    assert len(starred.get_offsets()) == 1  # only q=0.02 < 0.05
    _save(fig, tmp_path / "forest.png")


def test_forest_grid_orders_contrasts(tmp_path: Path) -> None:
    fig = forest_grid(_tests(), denominator="B")
    titles = [ax.get_title().split("\n")[0] for ax in fig.axes]
    assert titles == [
        "response@month0", "response@month3", "response@month6", "time3@responder",
        "time6@responder", "time3@non_responder", "time6@non_responder", "response:time6",
    ]  # fmt: skip
    assert len({ax.get_ylim() for ax in fig.axes}) == 1
    assert _points(fig.axes[0]) == pytest.approx({"naive": 0.3, "DN2": 0.6, "unassigned": 0.9})
    assert "not fitted" in [t.get_text() for t in fig.axes[1].texts]
    _save(fig, tmp_path / "forest_grid.png")
    chosen = forest_grid(_tests(), denominator="B", contrasts=["time3@responder"])
    assert len(chosen.axes) == 1


def _bar_heights(ax, sample: str) -> list[float]:
    i = [t.get_text() for t in ax.get_xticklabels()].index(sample)
    return [container[i].get_height() for container in ax.containers]


def test_composition_bars_sum_to_one(tmp_path: Path) -> None:
    fig = composition_plot(_counts(), level="b_subset")
    ax = fig.axes[1]
    assert len(ax.containers) == 3  # naive, DN2, unassigned
    assert sum(_bar_heights(ax, "P1_m3")) == pytest.approx(1.0)
    assert sum(_bar_heights(ax, NO_B_SAMPLE)) == 0.0
    assert "no cells" in [t.get_text() for t in ax.texts]
    order = [t.get_text() for t in ax.get_xticklabels()]
    assert order[:3] == ["P1_m0", "P1_m3", "P1_m6"] and order[-3:] == ["P6_m0", "P6_m3", "P6_m6"]
    assert order.index("P2_m6") < order.index("P3_m0")  # responders before non-responders
    assert ax.get_legend().get_texts()[-1].get_text() == "unassigned"
    _save(fig, tmp_path / "composition.png")


def test_composition_of_132_samples(tmp_path: Path) -> None:
    patients = {f"Q{i:02d}": ("responder", "non_responder", "unknown")[i % 3] for i in range(44)}
    fig = composition_plot(_counts(patients, seed=1), level="lineage")
    ax = fig.axes[1]
    labels = ax.get_xticklabels()
    assert len(labels) == 132 and labels[0].get_fontsize() <= 5
    assert sum(_bar_heights(ax, "Q07_m6")) == pytest.approx(1.0)
    _save(fig, tmp_path / "composition_132.png")


@pytest.mark.parametrize("column", ["total", "timepoint_months"])
def test_missing_count_column_is_named(column: str) -> None:
    counts = _counts().drop(columns=column)
    with pytest.raises(ValueError, match=rf"\['{column}'\]"):
        trajectory_plot(counts, level="b_subset", denominator="B")
    with pytest.raises(ValueError, match=rf"\['{column}'\]"):
        composition_plot(counts, level="lineage")


def test_invalid_level_or_denominator_is_named() -> None:
    counts = _counts()
    with pytest.raises(ValueError, match="'T_cells'"):
        trajectory_plot(counts, level="T_cells", denominator="PBMC")
    with pytest.raises(ValueError, match="'T_cells'"):
        composition_plot(counts, level="T_cells")
    with pytest.raises(ValueError, match="denominator 'B' is not valid for level 'lineage'"):
        trajectory_plot(counts, level="lineage", denominator="B")
    with pytest.raises(ValueError, match="denominator 'CD45'"):
        trajectory_plot(counts, level="b_subset", denominator="CD45")
    with pytest.raises(ValueError, match=r"cell types \['pDC'\]"):
        trajectory_plot(counts, level="lineage", denominator="PBMC", cell_types=["pDC"])


def test_invalid_tests_table_or_selection_is_named() -> None:
    tests = _tests()
    with pytest.raises(ValueError, match=r"\['ci_high'\]"):
        forest_plot(tests.drop(columns="ci_high"), contrast="response@month0", denominator="B")
    with pytest.raises(ValueError, match="denominator 'PBMC'"):
        forest_grid(tests, denominator="PBMC")
    with pytest.raises(ValueError, match="'response@month9'"):
        forest_plot(tests, contrast="response@month9", denominator="B")
    with pytest.raises(ValueError, match=r"\['time9@responder'\]"):
        forest_grid(tests, denominator="B", contrasts=["time9@responder"])

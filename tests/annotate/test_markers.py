"""The packaged marker file and the marker-file checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.annotate import LEVELS, feature_map, load_markers
from pipeline.errors import ImmunoprofileError


def test_packaged_markers_cover_every_label_with_a_citation() -> None:
    markers = load_markers()
    assert markers.version >= 1 and len(markers.sha256) == 64
    for level, vocabulary in LEVELS.items():
        programs = markers.levels[level]
        assert {p.label for p in programs} == set(vocabulary)
        assert all(p.citation and p.positive for p in programs)
    # isotype-aware: IgD and the switched isotypes separate the memory and DN subsets
    b = {p.name: set(p.positive) for p in markers.levels["b_subset"]}
    assert "IGHD" in b["naive"] and "IGHD" not in b["switched_memory"] | b["DN1"] | b["DN2"]
    assert "switched_isotype" in b["switched_memory"] & b["DN1"] & b["DN2"]
    assert "CD27" in b["switched_memory"] and "CD27" not in b["DN1"] | b["DN2"]
    assert {"ITGAX", "TBX21", "FCRL5", "ZEB2"} <= b["DN2"] and "CR2" not in b["DN2"]
    # DN1's sources say nothing of switched memory's other genes: left free, not absent
    free = {p.name: set(p.free) for p in markers.levels["b_subset"]}
    assert {"TNFRSF13C", "SSPN", "COCH"} <= free["DN1"] and not free["DN1"] & b["DN1"]
    assert "TNFRSF13C" in load_markers().features("b_subset")
    assert markers.genes_of("switched_isotype") == (
        "IGHG1", "IGHG2", "IGHG3", "IGHG4", "IGHA1", "IGHA2",
    )  # fmt: skip


def test_feature_map_sums_groups_and_reports_missing_genes() -> None:
    markers = load_markers()
    symbols = np.array(["CD27", "IGHG1", "IGHA2", "IGHD", "MS4A1", "OTHER"])
    fmap = feature_map(markers, "b_subset", symbols)
    assert fmap.genes["switched_isotype"] == ("IGHG1", "IGHA2")
    j = fmap.features.index("switched_isotype")
    assert fmap.matrix[:, j].toarray().ravel().tolist() == [0, 1, 1, 0, 0, 0]
    assert "TBX21" in fmap.missing and "CD27" in fmap.features


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("version: 1\nlevels: [1]\n", "key 'levels'"),
        ("version: x\nlevels: {}\n", "key 'version'"),
        (
            "version: 1\nlevels:\n  lineage:\n    T_helper: {positive: [CD4], citation: x}\n",
            "key 'levels.lineage.T_helper': label 'T_helper' is not one of",
        ),
        (
            "version: 1\nlevels:\n  lineage:\n    B: {positive: [MS4A1]}\n",
            "key 'levels.lineage.B.citation'",
        ),
        ("version: 1\nlevels: {lineage: {B: {citation: x}}}\n", "key 'levels.lineage.B.positive'"),
        ("version: 1\ngroups: {ig: IGHG1}\nlevels: {}\n", "key 'groups.ig'"),
        (
            "version: 1\nlevels: {lineage: {B: {positive: [CD19], free: [CD19], citation: x}}}\n",
            "key 'levels.lineage.B.free': ['CD19'] are also listed as positive",
        ),
        (
            "version: 1\nlevels: {lineage: {B: {positive: [CD19], free: CD22, citation: x}}}\n",
            "key 'levels.lineage.B.free': expected a list of features",
        ),
        ("version: [\n", "not valid YAML"),
    ],
)
def test_bad_marker_files_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ImmunoprofileError, match=r"invalid marker file|not valid YAML") as err:
        load_markers(path)
    assert expected in str(err.value) and str(path) in str(err.value)


def test_missing_marker_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ImmunoprofileError, match=r"nope\.yaml"):
        load_markers(tmp_path / "nope.yaml")

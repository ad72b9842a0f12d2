"""Imports point one way: command line -> stages -> kernels / io; cluster apart."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNELS = [
    "pipeline/simulate/_design.py",
    "pipeline/simulate/_counts.py",
    "pipeline/simulate/_expression.py",
    "pipeline/simulate/_programs.py",
    "pipeline/ingest/_checks.py",
    "pipeline/qc/_kernels.py",
    "pipeline/qc/_doublets.py",
    "pipeline/qc/_thresholds.py",
    "pipeline/preprocess/_kernels.py",
    "pipeline/preprocess/_models.py",
]
IO_OR_CLUSTER = ("dask", "distributed", "h5py", "zarr", "anndata", "cluster", "tqdm")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add("." * node.level + node.module)
    return names


@pytest.mark.parametrize("rel", KERNELS)
def test_kernels_do_no_io_and_start_no_cluster(rel: str) -> None:
    imported = _imports(ROOT / rel)
    bad = {n for n in imported if n.split(".")[0] in IO_OR_CLUSTER or n.endswith("_writers")}
    assert not bad, f"{rel} imports {bad}"


def test_cluster_package_does_not_import_pipeline() -> None:
    for path in (ROOT / "cluster").glob("*.py"):
        assert not any(n.split(".")[0] == "pipeline" for n in _imports(path)), path


def test_only_the_command_line_starts_clusters() -> None:
    for path in (ROOT / "pipeline").rglob("*.py"):
        if path.name == "cli.py":
            continue
        assert not any(n.startswith("cluster.launch") for n in _imports(path)), path


def test_modules_stay_readable_in_one_sitting() -> None:
    for path in [*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "cluster").rglob("*.py")]:
        assert len(path.read_text().splitlines()) <= 400, path

"""environment.yml mirrors pyproject.toml's dependencies."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# PyPI name -> conda-forge name where they differ
CONDA_NAMES = {
    "torch": "pytorch",
    "igraph": "python-igraph",
    "dask[array]": "dask",
    "types-PyYAML": "types-pyyaml",
}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ ]", requirement, maxsplit=1)[0]


def test_every_dependency_is_in_environment_yml() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {_name(d) for d in env["dependencies"] if isinstance(d, str)}
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda |= {_name(d) for d in pip}  # packages only on PyPI
    missing = [w for w in wanted if CONDA_NAMES.get(w, w) not in conda]
    assert not missing, f"environment.yml lacks {missing}"
    assert "-e ." in pip

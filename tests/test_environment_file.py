"""environment.yml mirrors pyproject.toml's runtime dependencies, and only those."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
# PyPI name -> conda-forge name where they differ
CONDA_NAMES = {"torch": "pytorch", "igraph": "python-igraph", "dask[array]": "dask"}


def _split(requirement: str) -> tuple[str, str]:
    requirement = requirement.split("#")[0].strip()
    name = re.split(r"[<>=!~ ]", requirement, maxsplit=1)[0]
    return CONDA_NAMES.get(name, name), requirement[len(name) :].replace(" ", "")


def _environment() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    entries = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip
    return dict(_split(d) for d in entries + [p for p in pip if p != "-e ."])


def test_environment_yml_has_the_runtime_dependencies_with_their_ranges() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = _environment()
    for requirement in project["dependencies"]:
        name, spec = _split(requirement)
        assert env.get(name) == spec, f"environment.yml: {name}{env.get(name)}, pyproject: {spec}"


def test_extras_stay_out_of_the_users_environment() -> None:
    """The development tools and the optional scVI extra are not installed for a user."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = _environment()
    runtime = {_split(r)[0] for r in project["dependencies"]}
    for extra in ("dev", "scvi"):
        for requirement in project["optional-dependencies"][extra]:
            name = _split(requirement)[0]
            assert name in runtime or name not in env, f"environment.yml installs {extra}: {name}"

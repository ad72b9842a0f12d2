"""A user's install, as `pip install immunoprofile` gives it, and `make demo` in it (slow).

A fresh virtual environment (uv, from the package index) gets the package without the
scVI extra (no torch, no scvi-tools) and every direct dependency at the lowest version
pyproject.toml allows; the demo cohort is then simulated and run end to end with it. The
rest of the suite runs in `make install`'s environment: the newest versions, with the
scVI extra. Together they test both ends of the declared ranges.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import anndata as ad
import pytest
import yaml
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
# what a build of the package reads (the rest of the checkout is not shipped)
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "pipeline", "cluster")


def _floors() -> dict[str, Version]:
    """Lowest allowed version of each direct dependency with a lower bound."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {}
    for requirement in project["dependencies"]:
        if m := re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?>=([0-9.]+)", requirement):
            out[m.group(1)] = Version(m.group(3))
    return out


def _run(args: list[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def lowest_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv (a dev dependency) is not installed"
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    for name in PACKAGE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    venv = root / "venv"
    made = _run([uv, "venv", "--python", sys.executable, venv], root, 120)
    assert made.returncode == 0, made.stderr
    # --compile-bytecode: as pip does by default (uv does not); without it each process of
    # the first run compiles the same modules (~20 s more in the demo's run)
    installed = _run(
        [uv, "pip", "install", "--python", venv / "bin" / "python", "--compile-bytecode",
         "--resolution", "lowest-direct", source],
        root, 900,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    return venv


def test_the_install_has_no_scvi_extra_and_the_lowest_versions(lowest_venv: Path) -> None:
    script = (
        "import importlib.metadata as m, importlib.util as u, json\n"
        "print(json.dumps({'torch': u.find_spec('torch') is not None,"
        " 'scvi': u.find_spec('scvi') is not None,"
        f" 'versions': {{n: m.version(n) for n in {sorted(_floors())!r}}}}}))"
    )
    proc = _run([lowest_venv / "bin" / "python", "-c", script], lowest_venv, 120)
    assert proc.returncode == 0, proc.stderr
    import json

    found = json.loads(proc.stdout)
    assert not found["torch"] and not found["scvi"]
    above = {
        name: version
        for name, version in found["versions"].items()
        if Version(version) != _floors()[name]
    }
    assert not above, f"not at their lower bounds: {above}"


@pytest.mark.slow
def test_the_demo_runs_in_a_users_install(lowest_venv: Path, tmp_path: Path) -> None:
    """`make demo`'s two commands, then `validate`; a config that asks for scVI fails at
    once with a message that names the setting and the extra."""
    exe = lowest_venv / "bin" / "immunoprofile"
    # the demo's config with a smaller cohort (the suite's time; `make demo` itself runs
    # in `make install`'s environment)
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    demo["simulate"].update(cells_per_sample=250, n_genes=5000)
    config = tmp_path / "demo.yaml"
    config.write_text(yaml.safe_dump(demo))
    sim = _run([exe, "simulate", config, "--out", "demo_data"], tmp_path, 600)
    assert sim.returncode == 0, sim.stderr
    proc = _run([exe, "run", config], tmp_path, 900)
    assert proc.returncode == 0, proc.stderr
    work = tmp_path / "demo_work"
    assert (work / "abundance" / "tests.csv").exists()
    assert (work / "expression" / "de.csv").exists()
    assert (work / "report" / "index.html").exists()
    cohort = ad.read_zarr(work / "cohort.zarr")
    assert cohort.n_obs > 4_000 and "X_pca_harmony" in cohort.obsm
    assert cohort.obs["b_subset"].notna().sum() > 200
    check = _run([exe, "validate", "demo_work"], tmp_path, 300)
    assert check.returncode == 0, check.stderr

    scvi = tmp_path / "scvi.yaml"
    scvi.write_text(config.read_text() + "integrate:\n  method: scvi\n")
    asked = _run([exe, "run", scvi, "--workdir", "scvi_work"], tmp_path, 120)
    assert asked.returncode != 0
    assert "integrate.method: scvi" in asked.stderr
    assert "immunoprofile[scvi]" in asked.stderr
    assert not (tmp_path / "scvi_work").exists()  # refused before anything was written

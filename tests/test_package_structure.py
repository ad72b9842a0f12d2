"""The package's shape: imports point one way (command line -> commands -> stages ->
stage machinery -> shared helpers -> workdir and store -> configuration), no module
reaches into another package's private module, kernels do no I/O, every default lives
in the configuration, and the tests mirror the package."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import pipeline
from pipeline.config import (
    AbundanceConfig,
    AddBatchConfig,
    AnnotateConfig,
    GraphConfig,
    IngestConfig,
    IntegrateConfig,
    PowerConfig,
    PreprocessConfig,
    QCConfig,
    SimulationConfig,
)
from pipeline.config_analysis import ReferenceConfig
from pipeline.registry import STAGES

ROOT = Path(__file__).resolve().parents[1]
STAGE_PACKAGES = {s.name for s in STAGES}
# Layers, top first: a module may import its own layer's and lower layers' modules only.
LAYERS: list[set[str]] = [
    {"cli", "__main__"},
    {"commands", "add_batch"},
    {*STAGE_PACKAGES, "simulate"},
    {"stages", "explore"},
    {"cohort", "results", "sampling", "moments", "runtime"},
    {"workdir", "store", "registry"},
    {
        "config",
        "config_analysis",
        "config_reference",
        "labels",
        "errors",
        "",
    },  # "": the package itself
]
KERNELS = [
    "pipeline/moments.py",
    "pipeline/sampling.py",
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
    "pipeline/integrate/_harmony.py",
    "pipeline/integrate/_mapping.py",
    "pipeline/integrate/_metrics.py",
    "pipeline/graph/_knn.py",
    "pipeline/graph/_layout.py",
    "pipeline/graph/_query.py",
    "pipeline/annotate/_model.py",
    "pipeline/abundance/_design.py",
    "pipeline/abundance/_glmm.py",
    "pipeline/abundance/_propeller.py",
]
IO_OR_CLUSTER = ("dask", "distributed", "h5py", "zarr", "anndata", "cluster", "tqdm")
IO_MODULES = ("pipeline.store", "pipeline.workdir", "pipeline.stages", "pipeline.cohort")


def _modules() -> list[Path]:
    return sorted((ROOT / "pipeline").rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative ones resolved; for
    ``from X import a`` both X and X.a, since ``a`` may be a module)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names.add(module)
            names |= {f"{module}.{a.name}" for a in node.names}
    return {n for n in names if n != "__future__"}


def _top(module: str) -> str:
    """The pipeline layer key of a module: its first component below ``pipeline``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _layer(module: str) -> int:
    key = _top(module)
    for i, layer in enumerate(LAYERS):
        if key in layer:
            return i
    raise AssertionError(f"{module} is in no layer of {__name__}.LAYERS: add it")


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@pytest.mark.parametrize(
    "path",
    [p for p in _modules() if p != ROOT / "pipeline" / "__init__.py"],  # the facade: lazy names
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_imports_point_down_the_layers(path: Path) -> None:
    here = _module_name(path)
    for name in _imports(path):
        if not name.startswith("pipeline") or not _is_module(name):
            continue
        assert _layer(name) >= _layer(here), f"{here} (layer {_layer(here)}) imports {name}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_another_packages_private_module(path: Path) -> None:
    here = _module_name(path)
    own = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for name in _imports(path):
        if not name.startswith("pipeline") or not _is_module(name):
            continue
        parts = name.split(".")
        private = [i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")]
        if private:
            owner = ".".join(parts[: private[0]])
            assert owner == own, f"{here} imports {name}, private to {owner}"


def test_nothing_below_the_command_line_imports_it_or_starts_clusters() -> None:
    for path in _modules():
        if path.name in ("cli.py", "__main__.py"):
            continue
        for name in _imports(path):
            assert not name.startswith(("pipeline.cli", "cluster.launch")), (path, name)


def test_cluster_package_does_not_import_pipeline() -> None:
    for path in (ROOT / "cluster").glob("*.py"):
        assert not any(n.split(".")[0] == "pipeline" for n in _imports(path)), path


@pytest.mark.parametrize("rel", KERNELS)
def test_kernels_do_no_io_and_start_no_cluster(rel: str) -> None:
    imported = _imports(ROOT / rel)
    bad = {
        n
        for n in imported
        if n.split(".")[0] in IO_OR_CLUSTER or n.startswith(IO_MODULES) or n.endswith("_writers")
    }
    assert not bad, f"{rel} imports {bad}"


# ---- one default per parameter --------------------------------------------------------

SECTIONS = {
    "ingest": [IngestConfig],
    "cohort": [IngestConfig],
    "qc": [QCConfig],
    "preprocess": [PreprocessConfig],
    "integrate": [IntegrateConfig],
    "graph": [GraphConfig],
    "annotate": [AnnotateConfig, ReferenceConfig],
    "abundance": [AbundanceConfig, PowerConfig],
    "simulate": [SimulationConfig],
    "add_batch": [AddBatchConfig],
}
# a kernel's parameter is the config field's name without its section's method prefix
PREFIXES = ("harmony_", "scvi_", "doublet_", "hvg_", "metrics_")
ALIASES = {"expected_doublet_rate": "expected_rate"}


def _config_defaults(package: str) -> dict[str, list[object]]:
    out: dict[str, list[object]] = {}
    for section in SECTIONS[package]:
        for name, field in section.model_fields.items():
            if field.is_required():
                continue
            default = field.get_default(call_default_factory=True)
            names = {name, ALIASES.get(name, name)}
            names |= {name.removeprefix(p) for p in PREFIXES if name.startswith(p)}
            for n in names:
                out.setdefault(n, []).append(default)
    return out


def _same(a: object, b: object) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return (a == b and type(a) is not bool) or a is b


@pytest.mark.parametrize("package", sorted(SECTIONS))
def test_a_parameter_named_after_a_config_field_has_its_default(package: str) -> None:
    """Calling a function without such an argument gives what the pipeline's default
    config gives: no function default differs from the configuration's."""
    defaults = _config_defaults(package)
    module = importlib.import_module(f"pipeline.{package}")
    names = [module.__name__]
    if hasattr(module, "__path__"):
        names += [f"{module.__name__}.{m.name}" for m in pkgutil.iter_modules(module.__path__)]
    drift = []
    for name in names:
        mod = importlib.import_module(name)
        for fname, func in inspect.getmembers(mod, inspect.isfunction):
            if func.__module__ != name:
                continue
            for p in inspect.signature(func).parameters.values():
                if p.default is inspect.Parameter.empty or p.name not in defaults:
                    continue
                if not any(_same(p.default, d) for d in defaults[p.name]):
                    drift.append(
                        f"{name}.{fname}({p.name}={p.default!r}): config {defaults[p.name]}"
                    )
    assert not drift, "\n".join(drift)


# ---- tests mirror the package ------------------------------------------------------------


def test_every_package_and_stage_has_its_tests() -> None:
    packages = {p.parent.name for p in (ROOT / "pipeline").glob("*/__init__.py")}
    for name in packages | STAGE_PACKAGES:
        tests = list((ROOT / "tests" / name).glob("test_*.py"))
        assert tests, f"pipeline/{name} has no tests/{name}/test_*.py"


def test_every_test_folder_is_a_package_of_the_tree() -> None:
    packages = {p.parent.name for p in (ROOT / "pipeline").glob("*/__init__.py")} | {"cluster"}
    for folder in (ROOT / "tests").iterdir():
        if folder.is_dir() and (folder / "__init__.py").exists():
            assert folder.name in packages, f"tests/{folder.name} mirrors no package"


def test_every_module_with_functions_has_a_test_module() -> None:
    tested_with = {
        "config_analysis": "config",  # the schema's sections, one test module
        "config_reference": "docs",  # docs/configuration.md is its output
    }
    for path in (ROOT / "pipeline").glob("*.py"):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text())
        if any(isinstance(n, ast.FunctionDef) for n in tree.body):
            name = tested_with.get(path.stem, path.stem)
            assert (ROOT / "tests" / f"test_{name}.py").exists(), path.name


def test_the_package_imports_no_heavy_module_for_its_configuration() -> None:
    """`import pipeline` (the config, in a notebook or the command line's parser) does
    not import anndata, zarr or dask: the notebook names load on first use."""
    import subprocess
    import sys

    code = "import sys, pipeline; print(sorted(m for m in ('anndata', 'zarr', 'dask') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert pipeline.Workdir.__name__ == "Workdir"

"""The marker sets: loading and checking the versioned marker file (no numerics).

The file format and its semantics are documented at the top of ``markers.yaml``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import yaml

from ..errors import ImmunoprofileError
from ..labels import B_SUBSETS, LINEAGES

LEVELS: dict[str, tuple[str, ...]] = {"lineage": LINEAGES, "b_subset": B_SUBSETS}
DEFAULT_MARKERS = "markers.yaml"


@dataclass(frozen=True)
class Program:
    """One model component: the features it expresses above background, and its label."""

    name: str
    label: str
    positive: tuple[str, ...]
    citation: str
    free: tuple[str, ...] = ()  # features whose level the sources leave open


@dataclass(frozen=True)
class MarkerSet:
    version: int
    name: str
    sha256: str
    text: str  # the file as read (kept with every run's outputs)
    groups: dict[str, tuple[str, ...]]
    levels: dict[str, tuple[Program, ...]]

    def features(self, level: str) -> tuple[str, ...]:
        """Every feature of the level, in first-listed order."""
        out: list[str] = []
        for program in self.levels[level]:
            out.extend(f for f in (*program.positive, *program.free) if f not in out)
        return tuple(out)

    def genes_of(self, feature: str) -> tuple[str, ...]:
        return self.groups.get(feature, (feature,))


def _problem(source: str, key: str, expected: str) -> str:
    return f"{source}: key '{key}': {expected}"


def load_markers(path: str | Path | None = None) -> MarkerSet:
    """Read and check a marker file (the packaged one when ``path`` is None).

    Every problem of the file is reported together, naming its key.
    """
    if path is None:
        text = resources.files(__package__).joinpath(DEFAULT_MARKERS).read_text()
        source = f"{__package__}/{DEFAULT_MARKERS}"
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            msg = f"marker file {path}: cannot be read ({exc.strerror})"
            raise ImmunoprofileError(msg) from None
        source = str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = f"{source}: not valid YAML ({exc})"
        raise ImmunoprofileError(msg) from None
    if not isinstance(data, dict):
        msg = f"{source}: expected a mapping with keys version, groups, levels"
        raise ImmunoprofileError(msg)
    problems: list[str] = []
    version = data.get("version")
    if not isinstance(version, int):
        problems.append(_problem(source, "version", f"expected an integer, got {version!r}"))
    groups_raw = data.get("groups") or {}
    groups: dict[str, tuple[str, ...]] = {}
    if not isinstance(groups_raw, dict):
        problems.append(_problem(source, "groups", "expected a mapping of name: [genes]"))
        groups_raw = {}
    for name, genes in groups_raw.items():
        if not isinstance(genes, list) or not genes or not all(isinstance(g, str) for g in genes):
            problems.append(_problem(source, f"groups.{name}", "expected a list of gene symbols"))
        else:
            groups[str(name)] = tuple(genes)
    levels_raw = data.get("levels")
    levels: dict[str, tuple[Program, ...]] = {}
    if not isinstance(levels_raw, dict):
        problems.append(_problem(source, "levels", f"expected a mapping with {list(LEVELS)}"))
        levels_raw = {}
    for level, vocabulary in LEVELS.items():
        entries = levels_raw.get(level)
        if not isinstance(entries, dict) or not entries:
            problems.append(_problem(source, f"levels.{level}", "expected a mapping of labels"))
            continue
        programs = []
        for name, entry in entries.items():
            key = f"levels.{level}.{name}"
            if not isinstance(entry, dict):
                problems.append(_problem(source, key, "expected a mapping with 'positive'"))
                continue
            unknown = set(entry) - {"positive", "free", "citation", "label"}
            if unknown:
                problems.append(_problem(source, key, f"unknown fields {sorted(unknown)}"))
            label = str(entry.get("label", name))
            if label not in vocabulary:
                problems.append(
                    _problem(source, key, f"label {label!r} is not one of {list(vocabulary)}")
                )
            positive = entry.get("positive")
            if not isinstance(positive, list) or not positive:
                problems.append(_problem(source, f"{key}.positive", "expected a list of features"))
                continue
            free = entry.get("free", [])
            if not isinstance(free, list) or not all(isinstance(f, str) for f in free):
                problems.append(_problem(source, f"{key}.free", "expected a list of features"))
                free = []
            both = sorted(set(free) & set(map(str, positive)))
            if both:
                problems.append(
                    _problem(source, f"{key}.free", f"{both} are also listed as positive")
                )
            if not str(entry.get("citation", "")).strip():
                problems.append(_problem(source, f"{key}.citation", "every label needs a source"))
            programs.append(
                Program(
                    name=str(name),
                    label=label,
                    positive=tuple(str(p) for p in positive),
                    citation=str(entry.get("citation", "")),
                    free=tuple(free),
                )
            )
        missing = set(vocabulary) - {p.label for p in programs}
        if programs and missing:
            problems.append(
                _problem(source, f"levels.{level}", f"no entry for labels {sorted(missing)}")
            )
        levels[level] = tuple(programs)
    if problems:
        msg = "invalid marker file: " + "; ".join(problems)
        raise ImmunoprofileError(msg)
    return MarkerSet(
        version=int(version),  # type: ignore[arg-type]
        name=str(data.get("name", "")),
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        text=text,
        groups=groups,
        levels=levels,
    )


@dataclass(frozen=True)
class FeatureMap:
    """How a level's features are summed from the dataset's genes."""

    features: tuple[str, ...]  # present in the data (at least one gene)
    genes: dict[str, tuple[str, ...]]  # feature -> genes present
    missing: tuple[str, ...]  # features with no gene in the data
    matrix: sp.csr_matrix  # dataset genes x features, 0/1

    def marker_matrix(self, programs: tuple[Program, ...]) -> np.ndarray:
        """programs x features, True where the program lists the feature."""
        return np.array([[f in p.positive for f in self.features] for p in programs], dtype=bool)

    def free_matrix(self, programs: tuple[Program, ...]) -> np.ndarray:
        """programs x features, True where the program leaves the feature free."""
        return np.array([[f in p.free for f in self.features] for p in programs], dtype=bool)


def feature_map(markers: MarkerSet, level: str, symbols: pd.Index | np.ndarray) -> FeatureMap:
    """The level's features over a dataset whose genes have these ``symbols``."""
    index = pd.Index(np.asarray(symbols).astype(str))
    first = ~index.duplicated()
    position = pd.Series(np.flatnonzero(first), index=index[first])
    rows: list[int] = []
    cols: list[int] = []
    features: list[str] = []
    genes: dict[str, tuple[str, ...]] = {}
    missing: list[str] = []
    for feature in markers.features(level):
        present = [g for g in markers.genes_of(feature) if g in position.index]
        if not present:
            missing.append(feature)
            continue
        j = len(features)
        features.append(feature)
        genes[feature] = tuple(present)
        rows.extend(int(position[g]) for g in present)
        cols.extend([j] * len(present))
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(index), len(features))
    )
    return FeatureMap(tuple(features), genes, tuple(missing), matrix)

"""Our labels in other vocabularies (``vocabularies.yaml``): Cell Ontology term ids for
the outputs, and which labels of CellTypist's and Azimuth's PBMC annotations correspond
to ours, for comparing a reference's labels with the marker-based ones (no numerics)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd
import yaml

from ..labels import B_SUBSETS, LINEAGES, UNASSIGNED

EXTERNAL = ("celltypist", "azimuth_l2", "azimuth_l3")
VOCABULARY_FILE = "vocabularies.yaml"


@dataclass(frozen=True)
class LabelTerms:
    cl_id: str
    cl_name: str
    cl_match: str
    external: dict[str, tuple[str, ...]]  # vocabulary -> its labels that correspond


@dataclass(frozen=True)
class Vocabularies:
    version: int
    sha256: str
    levels: dict[str, dict[str, LabelTerms]]  # level -> our label -> terms

    def ontology_ids(self, level: str, labels: np.ndarray) -> np.ndarray:
        """Cell Ontology ids of ``labels`` of a level (None stays None)."""
        terms = self.levels[level]
        return np.array(
            [None if lab is None else terms[str(lab)].cl_id for lab in labels], dtype=object
        )

    def ours(self, level: str, external_label: str) -> set[str]:
        """Our labels of a level that correspond to a label of another vocabulary."""
        return {
            label
            for label, terms in self.levels[level].items()
            if any(external_label in names for names in terms.external.values())
        }


@cache
def load_vocabularies() -> Vocabularies:
    """The packaged table (checked: every label of both levels has an entry)."""
    text = resources.files(__package__).joinpath(VOCABULARY_FILE).read_text()
    data = yaml.safe_load(text)
    levels: dict[str, dict[str, LabelTerms]] = {}
    for level, vocabulary in (("lineage", LINEAGES), ("b_subset", B_SUBSETS)):
        entries = data[level]
        missing = {*vocabulary, UNASSIGNED} - set(entries)
        if missing:
            msg = f"{VOCABULARY_FILE}: key '{level}': no entry for labels {sorted(missing)}"
            raise ValueError(msg)
        levels[level] = {
            str(label): LabelTerms(
                cl_id=str(e["cl_id"]),
                cl_name=str(e["cl_name"]),
                cl_match=str(e["cl_match"]),
                external={v: tuple(e.get(v, ())) for v in EXTERNAL},
            )
            for label, e in entries.items()
        }
    return Vocabularies(
        version=int(data["version"]),
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        levels=levels,
    )


def cell_type_columns(lineage: pd.Series, b_subset: pd.Series) -> pd.DataFrame:
    """``cell_type`` (the finest label: the B subset of a B cell that has one, else the
    lineage) and ``cell_type_ontology_term_id`` (its Cell Ontology id), as CELLxGENE
    names them; None where the cell was not annotated (QC failed).

    Worked on the columns' category codes (a label per category, not per cell: at 4M
    cells the per-cell text took 0.24 GiB and 2 s in the driver); the categories are the
    labels present, sorted, as `pd.Categorical` makes them from the text."""
    vocab = load_vocabularies()
    lin = pd.Categorical(lineage)
    sub = pd.Categorical(b_subset)
    lin_names = np.asarray(lin.categories.astype(str), dtype=object)
    sub_names = np.asarray(sub.categories.astype(str), dtype=object)
    sub_codes = np.asarray(sub.codes)
    finer = sub_codes >= 0
    if UNASSIGNED in set(sub_names):
        finer &= sub_codes != list(sub_names).index(UNASSIGNED)
    # one code per cell into the lineages' categories, then the B subsets'; -1: none
    code = np.where(finer, len(lin_names) + sub_codes, np.asarray(lin.codes)).astype(np.int16)
    names = np.concatenate([lin_names, sub_names])
    ids = np.concatenate(
        [vocab.ontology_ids("lineage", lin_names), vocab.ontology_ids("b_subset", sub_names)]
    )
    present = np.flatnonzero(np.bincount(code[code >= 0], minlength=len(names)))
    return pd.DataFrame(
        {
            "cell_type": _by_code(code, names, present),
            "cell_type_ontology_term_id": _by_code(code, ids, present),
        },
        index=lineage.index,
    )


def _by_code(code: np.ndarray, values: np.ndarray, present: np.ndarray) -> pd.Categorical:
    """The categorical of ``values[code]`` (-1 and None: missing) with the values of the
    ``present`` codes as its sorted categories (the other codes do not occur)."""
    categories = sorted({str(v) for v in values[present] if v is not None})
    lookup = np.array(
        [categories.index(str(v)) if str(v) in categories else -1 for v in values],
        dtype=np.int16,
    )
    out = np.where(code >= 0, lookup[np.maximum(code, 0)], -1).astype(np.int16)
    return pd.Categorical.from_codes(out, categories=categories)


def compatible_fraction(
    level: str, ours: np.ndarray, theirs: np.ndarray
) -> tuple[float | None, int]:
    """Among cells both label, whose reference label is known to the vocabulary table:
    the share whose label of ours corresponds to it, and the number of such cells (None
    when no reference label is known: a reference in another vocabulary)."""
    vocab = load_vocabularies()
    matches = {t: vocab.ours(level, str(t)) for t in pd.unique(pd.Series(theirs).dropna())}
    ok, n = 0, 0
    for a, b in zip(ours, theirs, strict=True):
        if a is None or b is None or a == UNASSIGNED or not matches.get(b):
            continue
        n += 1
        ok += a in matches[b]
    return (ok / n if n else None), n

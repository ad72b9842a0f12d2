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
    names them; None where the cell was not annotated (QC failed)."""
    vocab = load_vocabularies()
    lin = lineage.astype(object).where(lineage.notna(), None).to_numpy()
    sub = b_subset.astype(object).where(b_subset.notna(), None).to_numpy()
    finer = np.array([s is not None and s != UNASSIGNED for s in sub])
    cell_type = np.where(finer, sub, lin)
    sub_ids = vocab.ontology_ids(
        "b_subset",
        np.array([s if f else None for s, f in zip(sub, finer, strict=True)], dtype=object),
    )
    ids = np.where(finer, sub_ids, vocab.ontology_ids("lineage", lin))
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical(cell_type),
            "cell_type_ontology_term_id": pd.Categorical(ids),
        },
        index=lineage.index,
    )


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

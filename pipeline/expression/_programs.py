"""Gene programs per sample x cell type: scored with decoupler, tested with the abundance
stage's linear mixed model and contrasts.

The programs come from a versioned YAML file shipped with the package (`programs.yaml`:
genes and citations) or the user's own. Scores: per cell type, the pseudobulk's log2 CPM
(+1) of each gene standardized across the cell type's samples, then decoupler's
univariate linear model (``ulm``): a sample's score is the t-value of its program genes
against the other genes, so it says how high the program is in that sample relative to
the cell type's other samples. Tests: per cell type and program, ``score ~ response *
timepoint + (1 | patient)`` by REML (`pipeline.abundance.fit_lmm`) with the abundance
design and its between-within degrees of freedom; BH q-values within each contrast.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..abundance import bh_qvalues, contrast_table, estimable_design, fit_lmm

DEFAULT_PROGRAMS = "programs.yaml"
MIN_GENES = 5  # a program needs this many of its genes in the data to be scored
PROGRAM_TEST_COLUMNS = ["level", "cell_type", "program", "contrast", "estimate", "ci_low",
                        "ci_high", "pvalue", "qvalue", "method"]  # fmt: skip


class ProgramFileError(ValueError):
    """A program file that is not what `load_programs` expects (the message says why)."""


@dataclass(frozen=True)
class Programs:
    version: int
    genes: dict[str, list[str]]  # program -> gene symbols
    sha256: str
    path: str


def load_programs(path: str | Path | None = None) -> Programs:
    """The program file (the package's own without ``path``), checked: a ``version``, and
    under ``programs`` each name with a non-empty ``genes`` list."""
    if path is None:
        text = resources.files("pipeline.expression").joinpath(DEFAULT_PROGRAMS).read_text()
        where = f"pipeline/expression/{DEFAULT_PROGRAMS}"
    else:
        text, where = Path(path).read_text(), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ProgramFileError(f"{where} is not valid YAML: {err}") from None
    if (
        not isinstance(data, dict)
        or "version" not in data
        or not isinstance(data.get("programs"), dict)
    ):
        msg = f"{where}: expected keys 'version' and 'programs' (a mapping of program names)"
        raise ProgramFileError(msg)
    genes = {}
    for name, spec in data["programs"].items():
        listed = spec.get("genes") if isinstance(spec, dict) else None
        if not isinstance(listed, list) or not listed:
            raise ProgramFileError(f"{where}: program {name!r} has no 'genes' list")
        genes[str(name)] = [str(g) for g in listed]
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Programs(int(data["version"]), genes, digest, where)


def program_scores(
    counts: np.ndarray, symbols: list[str], programs: Programs
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Scores (samples x programs; programs with fewer than `MIN_GENES` genes found are
    left out) of one cell type's pseudobulk ``counts`` (samples x genes, raw), and how
    many of each program's genes the data has."""
    import decoupler as dc

    counts = np.asarray(counts, dtype=float)
    lib = counts.sum(axis=1, keepdims=True)
    logcpm = np.log2(counts / np.where(lib > 0, lib, 1.0) * 1e6 + 1.0)
    sd = logcpm.std(axis=0)
    varies = sd > 0
    z = (logcpm[:, varies] - logcpm[:, varies].mean(axis=0)) / sd[varies]
    names = np.asarray(symbols, dtype=object)[varies]
    keep = ~pd.Index(names).duplicated()
    data = pd.DataFrame(z[:, keep], columns=names[keep])
    present = set(data.columns)
    found = {
        p: sum(g in present for g in dict.fromkeys(genes)) for p, genes in programs.genes.items()
    }
    net = pd.DataFrame(
        [(p, g, 1.0) for p, genes in programs.genes.items() if found[p] >= MIN_GENES
         for g in dict.fromkeys(genes) if g in present],
        columns=["source", "target", "weight"],
    )  # fmt: skip
    if net.empty or len(data) < 2:
        return pd.DataFrame(index=range(len(counts))), found
    scores, _ = dc.mt.ulm(data, net, tmin=MIN_GENES)
    return scores.reset_index(drop=True), found


def fit_program_models(scores: pd.DataFrame, samples: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per program (columns of ``scores``, rows as ``samples``: `sample_id, patient_id,
    timepoint_months, response`): the contrasts of the mixed model, and the contrasts the
    design cannot estimate with the reason."""
    design, missing = estimable_design(samples)
    if design is None or scores.empty:
        return pd.DataFrame(columns=["program", "contrast", "estimate", "ci_low", "ci_high",
                                     "pvalue"]), missing  # fmt: skip
    rows = []
    for program in scores.columns:
        fit = fit_lmm(scores[program].to_numpy(), design.x, design.patient)
        table = contrast_table(fit.beta, fit.vcov, design.contrasts, design.df)
        lost = table["contrast"].isin(list(missing))
        table.loc[lost, ["estimate", "ci_low", "ci_high", "pvalue"]] = np.nan
        rows.append(table.assign(program=program))
    return pd.concat(rows, ignore_index=True), missing


def with_qvalues(tests: pd.DataFrame) -> pd.DataFrame:
    """BH q-values within each contrast, over cell types and programs."""
    tests = tests.copy()
    tests["qvalue"] = np.nan
    for _, idx in tests.groupby("contrast").groups.items():
        tests.loc[idx, "qvalue"] = bh_qvalues(tests.loc[idx, "pvalue"].to_numpy())
    return tests

"""Checks of one sample's counts and of gene sets across samples (pure)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

# Counts are stored as int32 (half the bytes of int64 at a million cells); a larger count
# is not a UMI count and would wrap to a negative number.
MAX_COUNT = int(np.iinfo(np.int32).max)


def _examples(values: Sequence[object], n: int = 3) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:n])
    return shown + (", ..." if len(values) > n else "")


def count_problems(x: sp.csr_matrix) -> list[str]:
    """Counts must be finite, non-negative integers."""
    data = x.data
    problems = []
    if data.dtype.kind == "f":
        nan = int(np.isnan(data).sum())
        inf = int(np.isinf(data).sum())
        finite = data[np.isfinite(data)]
        frac = finite[finite != np.round(finite)]
        if nan:
            problems.append(f"{nan} NaN count(s)")
        if inf:
            problems.append(f"{inf} infinite count(s)")
        if frac.size:
            problems.append(f"{frac.size} non-integer count(s) (e.g. {_examples(frac.tolist())})")
        values = finite
    elif data.dtype.kind in "iu":
        values = data
    else:
        return [f"counts have dtype {data.dtype}, expected integers"]
    negative = int((values < 0).sum())
    if negative:
        problems.append(f"{negative} negative count(s)")
    too_large = values[values.astype(np.float64) > MAX_COUNT]  # float32 rounds 2**31 - 1 up
    if too_large.size:
        problems.append(
            f"{too_large.size} count(s) above {MAX_COUNT:,}, the largest count stored (e.g. "
            f"{_examples(sorted(too_large.tolist(), reverse=True))})"
        )
    return problems


def barcode_problems(barcodes: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    dups: list[str] = []
    for b in barcodes:
        if b in seen:
            dups.append(b)
        seen.add(b)
    if dups:
        return [f"{len(dups)} duplicate barcode(s) (e.g. {_examples(sorted(set(dups)))})"]
    return []


def gene_id_problems(gene_ids: Sequence[str]) -> list[str]:
    ids = np.asarray(gene_ids, dtype=object)
    unique, counts = np.unique(ids, return_counts=True)
    dups = unique[counts > 1]
    if dups.size:
        return [f"{dups.size} duplicate gene ID(s) (e.g. {_examples(dups.tolist())})"]
    return []


def compare_gene_sets(
    genes: dict[str, Sequence[str]], *, policy: str
) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """The cohort's genes (first sample's order), the genes dropped per sample, problems.

    ``policy`` 'error': any difference is a problem naming the samples and genes;
    'intersect': the cohort keeps the genes every sample has.
    """
    names = list(genes)
    reference = list(genes[names[0]])
    ref_set = set(reference)
    problems = []
    common = set(reference)
    for name in names[1:]:
        other = set(genes[name])
        common &= other
        lacks = [g for g in reference if g not in other]
        extra = sorted(other - ref_set)
        if lacks or extra:
            problems.append(
                f"sample '{name}' has a different gene set from '{names[0]}': it lacks "
                f"{len(lacks)} of its genes (e.g. {_examples(lacks) or 'none'}) and has "
                f"{len(extra)} others (e.g. {_examples(extra) or 'none'})"
            )
    cohort = [g for g in reference if g in common]
    if policy == "intersect":
        dropped = {n: [g for g in genes[n] if g not in common] for n in names}
        return cohort, {n: d for n, d in dropped.items() if d}, []
    if problems:
        problems.append(
            f"set ingest.gene_policy: intersect to keep the {len(cohort)} genes all samples share"
        )
    return cohort, {}, problems


def reference_gene_problems(
    genes: Sequence[str], reference: Sequence[str], *, policy: str
) -> list[str]:
    """New samples' (shared) genes against an analysed cohort's (add-batch).

    The cohort's genes cannot change without re-processing it: every one of them must be
    in the new samples. Genes the cohort lacks are a problem under policy 'error' and are
    dropped under 'intersect' (the cohort's genes are read from the new stores).
    """
    have = set(genes)
    lacks = [g for g in reference if g not in have]
    extra = sorted(have - set(reference))
    problems = []
    if lacks:
        problems.append(
            f"they lack {len(lacks)} of the cohort's {len(reference)} genes (e.g. "
            f"{_examples(lacks)}); the cohort's genes cannot change without re-processing "
            "it: add the batch with --refit (and ingest.gene_policy: intersect)"
        )
    if extra and policy != "intersect":
        problems.append(
            f"they have {len(extra)} genes the cohort lacks (e.g. {_examples(extra)}); set "
            "ingest.gene_policy: intersect to keep only the cohort's genes"
        )
    return problems

"""Compare two workdirs array by array and table by table (e.g. before and after a change
that must not alter results).

    python benchmarks/compare_workdirs.py BEFORE_WORKDIR AFTER_WORKDIR [--rtol 0] [--json OUT]

What is compared, and how:
- every zarr store (``cohort.zarr``, ``batches/*/cells.zarr``, ``samples/*.zarr``,
  ``neighbourhoods``/``expression`` stores, ``abundance/counts.zarr``): the same arrays,
  each with the same shape, dtype and values (NaN equal to NaN; exact unless ``--rtol``);
  the group attributes (anndata's encodings, column orders) equal; of the manifest only
  the stage digests (it also holds version strings). Arrays under an ``uns`` key named
  ``seconds`` are durations: listed, not compared.
- CSV tables: the same columns and rows, values equal as above.
- JSON files: equal after dropping ``seconds`` keys; ``manifest.json`` by its digest and
  file list.
- other files (PNG figures, YAML, Markdown): byte for byte. ``report/index.html`` holds the
  time it was written and the stage durations: not compared.

Prints one line per difference and a summary; exits 1 when anything differs. It reads
the workdirs with zarr, pandas and json (nothing of the pipeline's readers), so it
compares workdirs written by any two versions of the pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from pipeline.store import arrays_of

TIMING_KEYS = {"seconds"}
NOT_COMPARED = {"report/index.html", "logs/stages.jsonl"}
MANIFEST_ATTR = "immunoprofile_manifest"


def _stores(root: Path) -> list[Path]:
    """Zarr stores below ``root`` (a folder holding zarr.json or .zgroup), outermost only."""
    found: list[Path] = []
    for marker in ("zarr.json", ".zgroup"):
        for path in root.rglob(marker):
            store = path.parent
            if store.name.endswith(".zarr") and not any(s in store.parents for s in found):
                found.append(store)
    return sorted({s for s in found if not any(p in found for p in s.parents)})


def _groups(group: zarr.Group, prefix: str = "") -> dict[str, dict[str, Any]]:
    out = {prefix or "/": dict(group.attrs)}
    for name, item in group.members():
        if isinstance(item, zarr.Group):
            out.update(_groups(item, f"{prefix}{name}/"))
    return out


def _equal_values(a: np.ndarray, b: np.ndarray, rtol: float) -> tuple[bool, str]:
    if a.shape != b.shape:
        return False, f"shape {a.shape} vs {b.shape}"
    if a.dtype != b.dtype:
        return False, f"dtype {a.dtype} vs {b.dtype}"
    if a.dtype.kind in "fc":
        nan_a, nan_b = np.isnan(a), np.isnan(b)
        if not np.array_equal(nan_a, nan_b):
            return False, f"NaN at {int((nan_a != nan_b).sum())} different positions"
        x, y = a[~nan_a], b[~nan_b]
        same = np.array_equal(x, y) if rtol == 0 else bool(np.allclose(x, y, rtol=rtol, atol=0))
        if not same:
            diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
            return False, f"{int((diff > 0).sum())} values differ, max |diff| {diff.max():.3g}"
        return True, ""
    if not np.array_equal(a, b):
        return False, f"{int((a != b).sum())} values differ"
    return True, ""


def _is_timing(key: str) -> bool:
    return any(part in TIMING_KEYS for part in key.split("/"))


def compare_store(a: Path, b: Path, rtol: float) -> tuple[list[str], int]:
    """Differences between two zarr stores; and the number of arrays compared."""
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    problems = []
    arrays_a, arrays_b = arrays_of(ga), arrays_of(gb)
    for key in sorted(set(arrays_a) ^ set(arrays_b)):
        side = "before" if key in arrays_a else "after"
        problems.append(f"{key}: only {side}")
    compared = 0
    for key in sorted(set(arrays_a) & set(arrays_b)):
        if _is_timing(key):
            continue
        same, why = _equal_values(
            np.asarray(arrays_a[key][...]), np.asarray(arrays_b[key][...]), rtol
        )
        compared += 1
        if not same:
            problems.append(f"{key}: {why}")
    attrs_a, attrs_b = _groups(ga), _groups(gb)
    for key in sorted(set(attrs_a) & set(attrs_b)):
        x = {k: v for k, v in attrs_a[key].items() if k != MANIFEST_ATTR}
        y = {k: v for k, v in attrs_b[key].items() if k != MANIFEST_ATTR}
        if key.endswith("obs/") or key == "obs/":
            x.pop("column-order", None)  # compared as a set below: order of writes
            y.pop("column-order", None)
        if x != y:
            problems.append(f"{key} attributes differ: {x} vs {y}")
    orders = [set(attrs.get("obs/", {}).get("column-order", [])) for attrs in (attrs_a, attrs_b)]
    if orders[0] != orders[1]:
        problems.append(f"obs columns differ: {sorted(orders[0] ^ orders[1])}")
    ma = attrs_a["/"].get(MANIFEST_ATTR, {}) or {}
    mb = attrs_b["/"].get(MANIFEST_ATTR, {}) or {}
    for field in ("stages", "digest", "reference", "samples", "n_obs", "n_vars"):
        if ma.get(field) != mb.get(field):
            problems.append(f"manifest {field}: {ma.get(field)} vs {mb.get(field)}")
    return problems, compared


def compare_table(a: Path, b: Path, rtol: float) -> list[str]:
    x, y = pd.read_csv(a), pd.read_csv(b)
    if list(x.columns) != list(y.columns):
        return [f"columns {list(x.columns)} vs {list(y.columns)}"]
    if len(x) != len(y):
        return [f"{len(x)} rows vs {len(y)}"]
    problems = []
    for col in x.columns:
        u, v = x[col].to_numpy(), y[col].to_numpy()
        if u.dtype.kind in "fiub" and v.dtype.kind in "fiub":
            same, why = _equal_values(u.astype(np.float64), v.astype(np.float64), rtol)
        else:
            same = bool((pd.isna(u) & pd.isna(v) | (u == v)).all())
            why = "values differ"
        if not same:
            problems.append(f"column {col}: {why}")
    return problems


def _drop_timing(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [_drop_timing(v) for v in obj]
    return obj


def compare_json(a: Path, b: Path) -> list[str]:
    x, y = (_drop_timing(json.loads(p.read_text())) for p in (a, b))
    if a.name == "manifest.json":
        keys = ("digest", "files", "n_samples", "n_tests")
        x, y = ({k: d.get(k) for k in keys} for d in (x, y))
    return [] if x == y else ["contents differ"]


def compare_workdirs(before: Path, after: Path, *, rtol: float = 0.0) -> dict[str, Any]:
    stores_a = {s.relative_to(before) for s in _stores(before)}
    stores_b = {s.relative_to(after) for s in _stores(after)}
    result: dict[str, Any] = {"differences": {}, "stores": 0, "arrays": 0, "tables": 0,
                              "files": 0}  # fmt: skip
    diff = result["differences"]
    for rel in sorted(stores_a ^ stores_b):
        diff[str(rel)] = [f"only {'before' if rel in stores_a else 'after'}"]
    for rel in sorted(stores_a & stores_b):
        problems, n = compare_store(before / rel, after / rel, rtol)
        result["stores"] += 1
        result["arrays"] += n
        if problems:
            diff[str(rel)] = problems

    def plain(root: Path, stores: set[Path]) -> set[Path]:
        out = set()
        for p in root.rglob("*"):
            rel = p.relative_to(root)
            inside = any(s == rel or s in rel.parents for s in stores)
            hidden = any(part.startswith(".") for part in rel.parts)
            if p.is_file() and not inside and not hidden:
                out.add(rel)
        return out

    files_a, files_b = plain(before, stores_a), plain(after, stores_b)
    for rel in sorted(files_a ^ files_b):
        if str(rel) not in NOT_COMPARED:
            diff[str(rel)] = [f"only {'before' if rel in files_a else 'after'}"]
    for rel in sorted(files_a & files_b):
        if str(rel) in NOT_COMPARED:
            continue
        a, b = before / rel, after / rel
        if rel.suffix == ".csv":
            problems = compare_table(a, b, rtol)
            result["tables"] += 1
        elif rel.suffix == ".json":
            problems = compare_json(a, b)
            result["files"] += 1
        else:
            problems = [] if a.read_bytes() == b.read_bytes() else ["bytes differ"]
            result["files"] += 1
        if problems:
            diff[str(rel)] = problems
    result["equal"] = not diff
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument(
        "--rtol", type=float, default=0.0, help="relative tolerance (default exact)"
    )
    parser.add_argument("--json", type=Path, help="write the result as JSON")
    args = parser.parse_args(argv)
    result = compare_workdirs(args.before, args.after, rtol=args.rtol)
    for where, problems in result["differences"].items():
        for p in problems:
            print(f"DIFFERS {where}: {p}")
    print(
        f"{'equal' if result['equal'] else 'DIFFERENT'}: {result['stores']} stores "
        f"({result['arrays']} arrays), {result['tables']} tables, {result['files']} other "
        f"files compared; {len(result['differences'])} with differences"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if result["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Atomic writes: build under a temporary sibling name, then rename onto the target."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TMP_MARK = ".tmp-"


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; rename it onto ``target`` on success.

    On error the temporary file or folder is removed and ``target`` is left as it was.
    A folder target that exists is replaced (old one moved aside, then deleted).
    """
    tmp = target.with_name(f".{target.name}{TMP_MARK}{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        if target.is_dir() and tmp.is_dir():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()


@contextmanager
def scratch_folder(parent: Path, name: str) -> Iterator[Path]:
    """A new empty folder ``parent/.NAME.tmp-XXXXXXXX`` for intermediate files, removed
    on leaving (by `remove_staging_leftovers` after a killed run)."""
    folder = parent / f".{name}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_staging_leftovers(folder: Path) -> list[Path]:
    """Delete temporary siblings left by a killed run in ``folder``; return what went."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(".") and (TMP_MARK in p.name or ".old-" in p.name):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p)
    return removed


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)

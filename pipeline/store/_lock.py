"""One writer at a time: a lock file naming its holder (host, pid, command, start).

The lock is taken by linking a complete record onto the lock's path (``os.link`` fails
when the path exists, atomically, on local and NFS file systems), so a reader never sees
a half-written holder. A lock whose holder is gone (a killed process on this host: its
pid is not running, or runs another program started later) is stale and taken over; a
lock held from another host cannot be checked from here and is refused with its path,
to delete by hand when that process is known to be gone.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import psutil

from ..errors import ImmunoprofileError


class LockedError(ImmunoprofileError):
    """Another process holds the lock."""


def _this_process(command: str) -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_started": psutil.Process().create_time(),
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def holder_alive(holder: dict[str, Any]) -> bool | None:
    """True/False for a holder on this host; None when it runs on another host."""
    if holder.get("host") != socket.gethostname():
        return None
    try:
        started = psutil.Process(int(holder["pid"])).create_time()
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False
    except psutil.AccessDenied:
        return True
    # the same pid running a process started later is another program: the holder is gone
    return abs(started - float(holder.get("process_started", started))) < 1.0


def read_holder(path: Path) -> tuple[bytes, dict[str, Any]] | None:
    """The lock file's bytes and record; None if there is no lock."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        record = {}
    return raw, record if isinstance(record, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    return (
        f"`{holder.get('command', '?')}` (pid {holder.get('pid', '?')} on host "
        f"{holder.get('host', '?')}, since {holder.get('started', '?')})"
    )


def _take_over_stale(path: Path, raw: bytes) -> bool:
    """Move the stale lock with bytes ``raw`` aside; False if it changed meanwhile."""
    aside = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # another process cleared it first
    if aside.read_bytes() != raw:  # a new holder took it between our read and rename
        with suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink()
        return False
    aside.unlink()
    return True


def _acquire(path: Path, record: bytes, what: str) -> list[str]:
    """Link ``record`` onto ``path``; the lines said about a stale lock cleared."""
    staged = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    staged.write_bytes(record)
    said: list[str] = []
    try:
        for _ in range(5):
            try:
                os.link(staged, path)
                return said
            except FileExistsError:
                pass
            found = read_holder(path)
            if found is None:
                continue
            raw, holder = found
            alive = holder_alive(holder)
            if alive is False:
                if _take_over_stale(path, raw):
                    said.append(
                        f"{what}: cleared a stale lock left by {_describe(holder)}, which "
                        "is no longer running"
                    )
                continue
            where = "" if alive else (
                f"; it runs on another host, so it cannot be checked from here: if it is "
                f"gone, delete {path}"
            )  # fmt: skip
            msg = (
                f"{what} is in use by {_describe(holder)}: one command writes to it at a "
                f"time; wait for that one to finish or stop it{where}"
            )
            raise LockedError(msg)
        msg = f"{what}: could not take the lock {path} (it changed hands repeatedly)"
        raise LockedError(msg)
    finally:
        staged.unlink()


@contextmanager
def writer_lock(path: Path, *, command: str | None = None, what: str = "") -> Iterator[list[str]]:
    """Hold the lock at ``path`` for the block; yields the lines said about a stale lock
    taken over. ``what`` names the locked thing in messages (default: the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    record = json.dumps(_this_process(command), indent=2).encode()
    said = _acquire(path, record, what or str(path.parent))
    try:
        yield said
    finally:
        found = read_holder(path)
        if found is not None and found[0] == record:
            path.unlink()

"""Writing files so that an interrupted or concurrent writer never leaves a half-written one:
write to a temporary file beside the target (named with the process id), then rename it over
the target, which is atomic on POSIX file systems."""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_save", "atomic_write_json", "file_lock", "try_lock"]


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created, with its folder, if missing)
    for the ``with`` block: processes on one machine that share a folder wait for each other."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def try_lock(path: str | os.PathLike) -> Iterator[bool]:
    """Try to take an exclusive ``flock`` on ``path`` without waiting: yields True, holding it
    for the ``with`` block, or False at once when another process (or another open of the
    file) holds it. Processes sharing a list of jobs use it to claim one job each."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically; creates the parent folder."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_json(obj: Any, path: str | os.PathLike, *, indent: int = 1) -> None:
    """``obj`` as indented JSON (with a final newline) at ``path``, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(json.dumps(obj, indent=indent) + "\n")
    os.replace(tmp, path)

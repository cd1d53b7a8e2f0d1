"""Compute once, reuse while the code is the same: results cached by configuration and by the
library's code revision.

``cached(kind, config, compute)`` returns the stored result for ``config`` if the library's
current code computed it, and otherwise calls ``compute()``, stores what it returns (a
dictionary of tensors, numbers, strings and lists, saved with ``torch.save`` and read back
with ``weights_only=True``) next to the config, the code revision, the library's provenance
and the wall time, and returns it. A file lock makes chapters that execute in parallel wait
for each other instead of computing the same thing twice.

The code revision (:func:`code_revision`) is a hash of the library's own source files, the
contents of every ``recon/**/*.py``, computed once per process. It is not the git commit: a
clone and a pip-installed copy of the same code agree on it, and commits that touch only the
book, the tests or the results keep it; any change to the library's code makes every stored
result stale.

Nothing is reused or recomputed silently. When ``cached`` recomputes because the entry for
this config was computed by other code, or because the stored file cannot be read (the error
is quoted) or holds something else, it warns with a :class:`CacheWarning` that names the file
and the reason (inside a notebook it prints that line in the cell's output instead), then
replaces the file with the new result.

The cache lives in ``RECON_RESULTS_CACHE`` (default ``~/.cache/recon/results``), one file per
kind and config, ``KIND-CONFIGKEY-REVISION.pt``. Delete a file (or the folder) to recompute.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from .files import atomic_save, file_lock
from .provenance import provenance

__all__ = ["CacheWarning", "cache_dir", "cached", "code_revision", "config_key", "source_hash"]

CACHE_FORMAT = "recon-cache/2"
_PACKAGE = Path(__file__).resolve().parent


class CacheWarning(UserWarning):
    """A cached result was not used: computed by other code, unreadable, or not what it
    should hold. The result is recomputed and the file replaced."""


def cache_dir() -> Path:
    """Where cached results are stored (``RECON_RESULTS_CACHE`` or ``~/.cache/recon/results``)."""
    env = os.environ.get("RECON_RESULTS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "recon" / "results"


def config_key(config: dict) -> str:
    """A short stable hash of a JSON-serialisable configuration."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def source_hash(root: str | os.PathLike) -> str:
    """A short hash of the ``*.py`` files under ``root``: their paths relative to ``root`` and
    their contents (line endings normalised), in a fixed order. Compiled files and hidden
    folders do not count."""
    root = Path(root)
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*.py")
                   if not any(part.startswith(".") or part == "__pycache__"
                              for part in p.relative_to(root).parts[:-1]))
    h = hashlib.sha256()
    for rel, path in files:
        data = path.read_bytes().replace(b"\r\n", b"\n")
        h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()[:16]


@functools.cache
def code_revision() -> str:
    """The library's code revision: :func:`source_hash` of the installed ``recon`` package,
    computed once per process."""
    return source_hash(_PACKAGE)


def _warn(message: str) -> None:
    """Say why a result is recomputed: a :class:`CacheWarning` in scripts and tests; inside a
    notebook kernel a printed line instead, which the reader sees in the cell's output (a
    chapter's stderr fails the book build, which treats warnings as errors)."""
    if "ipykernel" in sys.modules:
        print(message, flush=True)
    else:
        warnings.warn(message, CacheWarning, stacklevel=3)


def _stale_entries(folder: Path, kind: str, key: str, current: Path) -> list[Path]:
    """Files that hold ``kind``/``key`` for another code revision (or that an older version of
    this module wrote, without a revision)."""
    stem = f"{kind}-{key}"
    pattern = re.compile(re.escape(stem) + r"(-[0-9a-f]{16})?\.pt")
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p != current and pattern.fullmatch(p.name) and p.is_file())


def _stale_reason(path: Path, stem: str, revision: str) -> str:
    other = path.name[len(stem) + 1:-len(".pt")]
    if not other:
        return "was written by an older recon that did not record the code revision"
    return f"was computed by other code (revision {other}; this code is {revision})"


def _problem(stored, config: dict, revision: str) -> str | None:
    """Why a file read at the right name cannot be used, or None."""
    if not isinstance(stored, dict) or stored.get("format") != CACHE_FORMAT \
            or not isinstance(stored.get("result"), dict) or "meta" not in stored:
        return f"is not a results-cache file of format {CACHE_FORMAT}"
    if stored.get("code_revision") != revision:
        return (f"was computed by other code (revision {stored.get('code_revision')}; "
                f"this code is {revision})")
    if stored.get("config") != config:
        return "holds another configuration (a key collision)"
    return None


def cached(kind: str, config: dict, compute: Callable[[], dict], *,
           refresh: bool = False) -> dict:
    """Return ``compute()``'s result for ``config``, computing it only if the current code's
    result is not stored.

    The returned dictionary carries ``"_meta"``: the config, code revision, provenance, wall
    time and whether it came from the cache. An entry for ``config`` computed by other code,
    or a stored file that cannot be read, is reported with a :class:`CacheWarning` (file and
    reason), recomputed and replaced. ``refresh=True`` recomputes and replaces without asking.
    """
    revision = code_revision()
    key = config_key(config)
    folder = cache_dir()
    stem = f"{kind}-{key}"
    path = folder / f"{stem}-{revision}.pt"
    with file_lock(folder / f"{stem}.lock"):
        stale = _stale_entries(folder, kind, key, path)
        if not refresh and path.is_file():
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # any failure to read is reported, then recomputed
                first = (str(err).strip().splitlines() or [""])[0]
                _warn(f"results cache: cannot read {path} ({type(err).__name__}: {first}); "
                      "recomputing it and replacing the file")
            else:
                problem = _problem(stored, config, revision)
                if problem is None:
                    out = stored["result"]
                    out["_meta"] = {**stored["meta"], "from_cache": True, "path": str(path)}
                    return out
                _warn(f"results cache: {path} {problem}; recomputing it and replacing the "
                      "file")
        for old in [] if refresh else stale:
            _warn(f"results cache: {old} {_stale_reason(old, stem, revision)}; "
                  f"recomputing {kind!r} for this config and replacing it with {path.name}")
        t0 = time.perf_counter()
        result = compute()
        meta = {"config": config, "code_revision": revision,
                "wall_time_s": time.perf_counter() - t0, "provenance": provenance()}
        atomic_save({"format": CACHE_FORMAT, "config": config, "code_revision": revision,
                     "meta": meta, "result": result}, path)
        for old in stale:
            old.unlink(missing_ok=True)
        result["_meta"] = {**meta, "from_cache": False, "path": str(path)}
        return result

"""Compute once, reuse everywhere: results cached by their configuration.

``cached(kind, config, compute)`` returns the stored result for ``config`` if there is one,
and otherwise calls ``compute()``, stores what it returns (a dictionary of tensors, numbers,
strings and lists, saved with ``torch.save`` and read back with ``weights_only=True``) next to
the config, the library's provenance and the wall time, and returns it. A file lock makes
chapters that execute in parallel wait for each other instead of computing the same thing
twice.

The cache lives in ``RECON_RESULTS_CACHE`` (default ``~/.cache/recon/results``). Delete a file
(or the folder) to recompute.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .files import atomic_save, file_lock
from .provenance import provenance

__all__ = ["cache_dir", "config_key", "cached"]

CACHE_FORMAT = "recon-cache/1"


def cache_dir() -> Path:
    """Where cached results are stored (``RECON_RESULTS_CACHE`` or ``~/.cache/recon/results``)."""
    env = os.environ.get("RECON_RESULTS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "recon" / "results"


def config_key(config: dict) -> str:
    """A short stable hash of a JSON-serialisable configuration."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached(kind: str, config: dict, compute: Callable[[], dict], *,
           refresh: bool = False) -> dict:
    """Return ``compute()``'s result for ``config``, computing it only if it is not stored.

    The returned dictionary carries ``"_meta"``: the config, provenance, wall time and whether
    it came from the cache. A stored file that cannot be read is recomputed (and replaced).
    """
    path = cache_dir() / f"{kind}-{config_key(config)}.pt"
    with file_lock(path.with_name(path.name + ".lock")):
        if path.is_file() and not refresh:
            try:
                stored = torch.load(path, map_location="cpu", weights_only=True)
                if stored.get("format") == CACHE_FORMAT and stored.get("config") == config:
                    out = stored["result"]
                    out["_meta"] = {**stored["meta"], "from_cache": True, "path": str(path)}
                    return out
            except Exception:  # corrupt or foreign file: recompute below
                pass
        t0 = time.perf_counter()
        result = compute()
        meta = {"config": config, "wall_time_s": time.perf_counter() - t0,
                "provenance": provenance()}
        atomic_save({"format": CACHE_FORMAT, "config": config, "meta": meta,
                     "result": result}, path)
        result["_meta"] = {**meta, "from_cache": False, "path": str(path)}
        return result

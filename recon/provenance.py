"""Where a result came from: versions, git revision, device, time."""

from __future__ import annotations

import datetime
import platform
import subprocess
from pathlib import Path

import torch

__all__ = ["provenance", "git_revision"]


def git_revision() -> str | None:
    """The current git commit of the recon checkout (with ``-dirty`` if it has changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "recon"],
                               capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device: str | torch.device | None = None) -> dict:
    """A JSON-serialisable record of versions, git revision, device and date."""
    import numpy

    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        dev_name = torch.cuda.get_device_name(dev)
    else:
        dev_name = f"cpu ({platform.processor() or platform.machine()}, "
        dev_name += f"{torch.get_num_threads()} threads)"
    return {
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(numpy.__version__),
        "platform": platform.platform(),
        "device": dev_name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

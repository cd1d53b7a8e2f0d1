"""Where a result came from: the command, versions, git revision, CPU or GPU, time."""

from __future__ import annotations

import datetime
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

__all__ = ["provenance", "git_revision", "command_line"]


def git_revision() -> str | None:
    """The current git commit of the recon checkout, with ``-dirty`` if anything in the
    repository differs from it (tracked changes or untracked files that git does not
    ignore), except under ``results/``: that is where runs write their cards, so a card being
    written does not mark its own run dirty. ``None`` outside a checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", ".",
                                ":(exclude)results"], capture_output=True, text=True, timeout=5)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def command_line(argv: list[str] | None = None) -> str | None:
    """The command that is running, as a user would type it again from the repository's
    top folder: ``python -m recon ...``, or ``python benchmarks/NAME.py ...`` for a script of
    the checkout; ``None`` otherwise (a notebook, a test)."""
    argv = sys.argv if argv is None else argv
    if not argv:
        return None
    prog = Path(argv[0])
    if (prog.name == "__main__.py" and prog.parent.name == "recon") or prog.name == "recon":
        return shlex.join(["python", "-m", "recon", *argv[1:]])
    root = Path(__file__).resolve().parents[1]
    if prog.suffix == ".py" and prog.resolve().parent == root / "benchmarks":
        return shlex.join(["python", f"benchmarks/{prog.name}", *argv[1:]])
    return None


def provenance(device: str | torch.device | None = None) -> dict:
    """A JSON-serialisable record of the command, versions, git revision, device, CPU and
    date."""
    import numpy

    from .hardware import cpu_info

    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda":
        dev_name = torch.cuda.get_device_name(dev)
    else:
        dev_name = f"cpu ({platform.processor() or platform.machine()}, "
        dev_name += f"{torch.get_num_threads()} threads)"
    return {
        "command": command_line(),
        "git_revision": git_revision(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(numpy.__version__),
        "platform": platform.platform(),
        "device": dev_name,
        "cpu": cpu_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

"""recon.provenance: where a result came from."""

import json
import subprocess
from pathlib import Path

import torch

from recon import provenance as prov

ROOT = Path(__file__).resolve().parents[1]


def test_provenance_is_json_and_names_versions_and_device():
    p = prov.provenance()
    assert json.loads(json.dumps(p)) == p
    assert p["torch"] == str(torch.__version__)
    assert f"{torch.get_num_threads()} threads" in p["device"]
    assert p["date"].endswith("+00:00")  # UTC, ISO 8601
    assert set(p) == {"git_revision", "python", "torch", "numpy", "platform", "device", "date"}


def test_git_revision_is_the_checkouts_head():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    rev = prov.git_revision()
    if head.returncode != 0:  # an installed copy outside a checkout
        assert rev is None
        return
    assert rev.removesuffix("-dirty") == head.stdout.strip()
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "recon"],
                             capture_output=True, text=True).stdout.strip()
    assert rev.endswith("-dirty") == bool(changed)


def test_no_git_gives_none(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(prov.subprocess, "run", no_git)
    assert prov.git_revision() is None
    assert prov.provenance()["git_revision"] is None

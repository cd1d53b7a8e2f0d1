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
    assert set(p) == {"command", "git_revision", "python", "torch", "numpy", "platform", "device",
                      "cpu", "date"}
    assert set(p["cpu"]) == {"model", "amx_bf16", "avx512_bf16"}
    assert p["cpu"]["model"]


def test_git_revision_is_the_checkouts_head():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True)
    rev = prov.git_revision()
    if head.returncode != 0:  # an installed copy outside a checkout
        assert rev is None
        return
    assert rev.removesuffix("-dirty") == head.stdout.strip()
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"],
                             capture_output=True, text=True).stdout.splitlines()
    outside_results = [line for line in changed if not line[3:].startswith("results/")]
    assert rev.endswith("-dirty") == bool(outside_results)


def test_any_change_outside_results_marks_the_revision_dirty(tmp_path, monkeypatch):
    """A change anywhere in the repository counts (a chapter, a spec, a new file), not only
    the library; a run writing its own card under results/ does not."""
    repo = tmp_path / "repo"
    (repo / "recon").mkdir(parents=True)
    (repo / "recon" / "provenance.py").write_text("")
    (repo / "studies").mkdir()
    (repo / "studies" / "spec.json").write_text("{}")
    (repo / "results").mkdir()
    (repo / "results" / "card.json").write_text("{}")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    monkeypatch.setattr(prov, "__file__", str(repo / "recon" / "provenance.py"))
    assert not prov.git_revision().endswith("-dirty")
    (repo / "results" / "card.json").write_text('{"new": 1}')
    assert not prov.git_revision().endswith("-dirty")
    (repo / "studies" / "spec.json").write_text('{"changed": 1}')
    assert prov.git_revision().endswith("-dirty")
    subprocess.run([*git, "checkout", "-q", "studies/spec.json"], check=True)
    (repo / "notes.txt").write_text("untracked")
    assert prov.git_revision().endswith("-dirty")


def test_command_line_is_the_one_a_user_would_type_again():
    assert prov.command_line(["/x/recon/__main__.py", "study", "studies/a b.json"]) == (
        "python -m recon study 'studies/a b.json'")
    assert prov.command_line(["/usr/bin/recon", "reproduce", "mnist"]) == (
        "python -m recon reproduce mnist")
    script = str(ROOT / "benchmarks" / "reconstruct_speed.py")
    assert prov.command_line([script, "runs/mnist-n500", "--steps", "10"]) == (
        "python benchmarks/reconstruct_speed.py runs/mnist-n500 --steps 10")
    assert prov.command_line(["/x/ipykernel_launcher.py", "-f", "k.json"]) is None
    assert prov.command_line([]) is None


def test_no_git_gives_none(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(prov.subprocess, "run", no_git)
    assert prov.git_revision() is None
    assert prov.provenance()["git_revision"] is None

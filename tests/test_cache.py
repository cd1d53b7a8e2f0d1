"""recon.cache: results computed once per configuration and read back after."""

import shutil
import warnings
from pathlib import Path

import pytest
import torch

import recon
from recon import cache
from recon.cache import CacheWarning, cache_dir, cached, code_revision, config_key, source_hash


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("RECON_RESULTS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _counter():
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(3.0), "n": len(calls), "name": "run", "list": [1, 2]}

    return compute, calls


def test_cache_dir_follows_the_environment(store, monkeypatch):
    assert cache_dir() == store
    monkeypatch.delenv("RECON_RESULTS_CACHE")
    assert cache_dir().parts[-3:] == (".cache", "recon", "results")


def test_config_key_is_stable_and_order_free():
    a = config_key({"task": "mnist", "n": 25, "train": {"lr": 0.1, "epochs": 10}})
    b = config_key({"train": {"epochs": 10, "lr": 0.1}, "n": 25, "task": "mnist"})
    assert a == b and len(a) == 16
    assert config_key({"task": "mnist", "n": 26}) != config_key({"task": "mnist", "n": 25})


def test_computes_once_then_reads_back(store):
    compute, calls = _counter()
    first = cached("thing", {"a": 1}, compute)
    assert first["_meta"]["from_cache"] is False and first["n"] == 1
    second = cached("thing", {"a": 1}, compute)
    assert len(calls) == 1 and second["_meta"]["from_cache"] is True
    assert torch.equal(second["x"], torch.arange(3.0)) and second["list"] == [1, 2]
    assert second["_meta"]["config"] == {"a": 1} and second["_meta"]["wall_time_s"] >= 0
    assert second["_meta"]["provenance"]["torch"] == str(torch.__version__)
    # another config, or refresh=True, computes again
    assert cached("thing", {"a": 2}, compute)["n"] == 2
    assert cached("thing", {"a": 1}, compute, refresh=True)["n"] == 3
    assert cached("thing", {"a": 1}, compute)["n"] == 3  # the refreshed result is the stored one
    assert len(list(store.glob("thing-*.pt"))) == 2


def test_a_corrupt_file_is_reported_recomputed_and_replaced(store):
    compute, calls = _counter()
    out = cached("thing", {"a": 1}, compute)
    path = out["_meta"]["path"]
    with open(path, "wb") as fh:
        fh.write(b"not a torch file")
    with pytest.warns(CacheWarning, match="cannot read") as record:
        again = cached("thing", {"a": 1}, compute)
    message = str(record[0].message)
    assert path in message and "UnpicklingError" in message  # the file and the error
    assert again["_meta"]["from_cache"] is False and again["n"] == len(calls) == 2
    assert again["_meta"]["path"] == path  # replaced in place
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the replacement reads back without a word
        assert cached("thing", {"a": 1}, compute)["_meta"]["from_cache"] is True


def test_a_foreign_file_at_the_right_name_is_reported_and_replaced(store):
    compute, calls = _counter()
    path = cached("thing", {"a": 1}, compute)["_meta"]["path"]
    # a file at the right name that holds another config (a hash collision) is not trusted
    torch.save({"format": cache.CACHE_FORMAT, "code_revision": code_revision(),
                "config": {"a": 999}, "meta": {}, "result": {"n": -1}}, path)
    with pytest.warns(CacheWarning, match="another configuration"):
        assert cached("thing", {"a": 1}, compute)["n"] == len(calls) == 2
    # nor one in another format
    torch.save({"format": "something/else", "result": {"n": -1}}, path)
    with pytest.warns(CacheWarning, match="not a results-cache file"):
        assert cached("thing", {"a": 1}, compute)["n"] == len(calls) == 3
    assert cached("thing", {"a": 1}, compute)["_meta"]["from_cache"] is True


def test_an_unchanged_code_revision_reuses_the_result_silently(store):
    compute, calls = _counter()
    first = cached("thing", {"a": 1}, compute)
    assert first["_meta"]["code_revision"] == code_revision()
    assert first["_meta"]["path"].endswith(f"-{code_revision()}.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = cached("thing", {"a": 1}, compute)
    assert again["_meta"]["from_cache"] is True and len(calls) == 1
    assert again["_meta"]["code_revision"] == code_revision()


def test_a_result_of_other_code_is_reported_recomputed_and_replaced(store, monkeypatch):
    compute, calls = _counter()
    monkeypatch.setattr(cache, "code_revision", lambda: "0123456789abcdef")
    old = Path(cached("thing", {"a": 1}, compute)["_meta"]["path"])
    cached("thing", {"a": 2}, compute)  # another config: its entry stays as it is
    monkeypatch.setattr(cache, "code_revision", lambda: "fedcba9876543210")
    with pytest.warns(CacheWarning, match="computed by other code") as record:
        new = cached("thing", {"a": 1}, compute)
    assert len(record) == 1
    message = str(record[0].message)
    assert str(old) in message and "0123456789abcdef" in message and "fedcba9876543210" in message
    assert new["_meta"]["from_cache"] is False and new["n"] == len(calls) == 3
    assert new["_meta"]["code_revision"] == "fedcba9876543210"
    assert not old.exists() and Path(new["_meta"]["path"]).is_file()  # replaced
    assert len(list(store.glob("thing-*.pt"))) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cached("thing", {"a": 1}, compute)["_meta"]["from_cache"] is True
    # refresh=True recomputes on request, without a warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cached("thing", {"a": 1}, compute, refresh=True)["n"] == 4


def test_a_file_written_before_revisions_were_recorded_is_reported(store):
    compute, calls = _counter()
    key = config_key({"a": 1})
    store.mkdir()
    old = store / f"thing-{key}.pt"
    torch.save({"format": "recon-cache/1", "config": {"a": 1}, "meta": {},
                "result": {"n": -1}}, old)
    with pytest.warns(CacheWarning, match="did not record the code revision"):
        out = cached("thing", {"a": 1}, compute)
    assert out["n"] == 1 and out["_meta"]["from_cache"] is False and not old.exists()


def test_the_code_revision_hashes_the_library_sources(tmp_path):
    """The contents of recon/**/*.py, not the git commit: a copy of the package agrees with the
    checkout, compiled files and other files do not count, any source edit changes it."""
    package = Path(recon.__file__).parent
    assert len(code_revision()) == 16 and code_revision() is code_revision()  # once a process
    copy = tmp_path / "recon"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    rev = source_hash(copy)
    assert cache.code_revision.__wrapped__() == source_hash(package) == rev
    (copy / "__pycache__").mkdir()
    (copy / "__pycache__" / "cache.cpython-311.pyc").write_bytes(b"compiled")
    (copy / "notes.txt").write_text("not code")
    assert source_hash(copy) == rev
    (copy / "sweep" / "space.py").write_text((copy / "sweep" / "space.py").read_text() + "\n")
    assert source_hash(copy) != rev


def test_configs_need_not_be_plain_json(store):
    """Values JSON cannot hold are keyed by their text, as the chapters' configs are."""
    compute, calls = _counter()
    cfg = {"dtype": torch.float32, "widths": (10, 10)}
    assert cached("odd", cfg, compute)["_meta"]["from_cache"] is False
    assert cached("odd", cfg, compute)["_meta"]["from_cache"] is True and len(calls) == 1


def test_inside_a_notebook_the_reason_is_printed_not_warned(tmp_path, monkeypatch, capsys):
    """A chapter's stderr fails the book build, so in a kernel the reason goes to stdout."""
    import sys
    import types

    monkeypatch.setenv("RECON_RESULTS_CACHE", str(tmp_path))
    cached("kind", {"a": 1}, lambda: {"v": torch.ones(1)})
    path = next(tmp_path.glob("kind-*.pt"))
    path.write_bytes(b"not a torch file")
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cached("kind", {"a": 1}, lambda: {"v": torch.ones(1)})
    assert "cannot read" in capsys.readouterr().out

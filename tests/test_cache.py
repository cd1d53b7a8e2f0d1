"""recon.cache: results computed once per configuration and read back after."""

import pytest
import torch

from recon.cache import cache_dir, cached, config_key


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


def test_a_corrupt_or_foreign_file_is_recomputed_and_replaced(store):
    compute, calls = _counter()
    out = cached("thing", {"a": 1}, compute)
    path = out["_meta"]["path"]
    with open(path, "wb") as fh:
        fh.write(b"not a torch file")
    assert cached("thing", {"a": 1}, compute)["_meta"]["from_cache"] is False
    assert cached("thing", {"a": 1}, compute)["_meta"]["from_cache"] is True
    # a file at the right name that holds another config (a hash collision) is not trusted
    torch.save({"format": "recon-cache/1", "config": {"a": 999}, "meta": {},
                "result": {"n": -1}}, path)
    assert cached("thing", {"a": 1}, compute)["n"] == len(calls) == 3


def test_configs_need_not_be_plain_json(store):
    """Values JSON cannot hold are keyed by their text, as the chapters' configs are."""
    compute, calls = _counter()
    cfg = {"dtype": torch.float32, "widths": (10, 10)}
    assert cached("odd", cfg, compute)["_meta"]["from_cache"] is False
    assert cached("odd", cfg, compute)["_meta"]["from_cache"] is True and len(calls) == 1

"""Shared test setup: the offline copies of MNIST / CIFAR-10 in ../shared/data, and the
benchmark scripts as modules."""

import importlib.util
import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory of mnist.npz / cifar10.npz: RECON_DATA_DIR, else ../shared/data."""
    path = Path(os.environ.get("RECON_DATA_DIR") or SHARED_DATA)
    if not (path / "mnist.npz").is_file():
        pytest.fail(
            f"no mnist.npz in {path}: set RECON_DATA_DIR to a directory holding the offline "
            "data sets (see README, 'Data')"
        )
    return path


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(name)``: ``benchmarks/NAME.py`` imported as a module (the scripts are
    not a package)."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load

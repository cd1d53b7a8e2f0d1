"""The Colab path, as a new reader takes it: the package built as a wheel, installed into a
fresh virtual environment with only its declared dependencies and a notebook kernel, and each
chapter's notebook executed alone in an empty folder (quick profile). Colab downloads the
data; here RECON_DATA_DIR points at the local copy, so the download code path is not run.

Slow (a fresh environment and every chapter from an empty cache: about ten minutes on two
cores); `make test` runs it.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.ipynb"))

RUN_ONE = """
import sys
import nbformat
from nbclient import NotebookClient

nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=1800, kernel_name="python3",
               resources={"metadata": {"path": sys.argv[2]}}).execute()
print("executed", sys.argv[1])
"""


def _run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{p.stdout[-3000:]}\n" \
                              f"{p.stderr[-6000:]}"
    return p


@pytest.fixture(scope="module")
def fresh_env(tmp_path_factory):
    """A wheel of the package, installed into a new venv (no system site-packages)."""
    tmp = tmp_path_factory.mktemp("colab")
    _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
          "-q", "-w", str(tmp / "dist")])
    wheel = next((tmp / "dist").glob("recon_book-*.whl"))  # the distribution recon-book
    env = tmp / "env"
    _run([sys.executable, "-m", "venv", str(env)])
    py = env / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", str(wheel), "nbclient", "nbformat",
          "ipykernel"])
    return {"tmp": tmp, "wheel": wheel, "python": py}


@pytest.mark.slow
def test_wheel_ships_the_run_cards(fresh_env):
    names = zipfile.ZipFile(fresh_env["wheel"]).namelist()
    cards = [n for n in names if n.startswith("recon/results/reproduce/")
             and n.endswith("/card.json")]
    committed = list((ROOT / "results" / "reproduce").glob("*/card.json"))
    assert committed and len(cards) == len(committed)
    assert any(n.endswith("/pairs.png") for n in names)
    assert not any(n.endswith((".pt", ".db")) for n in names)


@pytest.mark.slow
def test_fresh_env_has_no_book_tools(fresh_env):
    """The point of the exercise: the chapters must not need the book build's packages."""
    p = subprocess.run([str(fresh_env["python"]), "-c", "import myst_nb"],
                       capture_output=True, text=True)
    assert p.returncode != 0


def _env(fresh_env, data_dir):
    tmp = fresh_env["tmp"]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RECON_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(RECON_DATA_DIR=str(data_dir), RECON_PROFILE="quick",
               RECON_RESULTS_CACHE=str(tmp / "cache"), RECON_CACHE_DIR=str(tmp / "data-cache"),
               MPLBACKEND="Agg", PATH=f"{fresh_env['python'].parent}:{env.get('PATH', '')}")
    return env


@pytest.mark.slow
def test_the_kernel_runs_the_installed_package(fresh_env, data_dir, tmp_path):
    """The notebooks' kernel is the fresh environment's Python, importing the wheel's recon
    (not the checkout) and finding the shipped cards."""
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys, recon\nfrom recon.reproduce import results_dir\n"
        "print(sys.executable)\nprint(recon.__file__)\nprint(results_dir())")])
    path = tmp_path / "where.ipynb"
    nbformat.write(nb, path)
    script = tmp_path / "run_one.py"
    script.write_text(RUN_ONE.replace("NotebookClient(nb", "client = NotebookClient(nb")
                      + "print(''.join(o.get('text', '') for o in nb.cells[0].outputs))\n")
    p = _run([str(fresh_env["python"]), str(script), str(path), str(tmp_path)], cwd=tmp_path,
             env=_env(fresh_env, data_dir))
    env_dir = str(fresh_env["python"].parent.parent)
    exe, module, results = p.stdout.strip().splitlines()[-3:]
    assert exe.startswith(env_dir) and module.startswith(env_dir), p.stdout
    assert results.startswith(env_dir) and results.endswith("recon/results"), p.stdout


@pytest.mark.slow
@pytest.mark.parametrize("chapter", CHAPTERS, ids=[c.stem for c in CHAPTERS])
def test_chapter_runs_alone_from_the_installed_package(fresh_env, chapter, data_dir):
    tmp = fresh_env["tmp"]
    folder = tmp / chapter.stem
    folder.mkdir()
    shutil.copy(chapter, folder / chapter.name)
    env = _env(fresh_env, data_dir)
    script = tmp / "run_one.py"
    script.write_text(RUN_ONE)
    p = subprocess.run([str(fresh_env["python"]), str(script), str(folder / chapter.name),
                        str(folder)], cwd=folder, env=env, capture_output=True, text=True)
    assert p.returncode == 0, f"{chapter.name} failed in a fresh environment:\n" \
                              f"{p.stdout[-2000:]}\n{p.stderr[-8000:]}"

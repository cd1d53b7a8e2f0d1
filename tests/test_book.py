"""Hygiene of the book: paired sources in sync, no outputs committed, every chapter listed
in the table of contents, and the sections every chapter promises its reader."""

import json
import re
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CHAPTERS = sorted(BOOK.glob("[0-9][0-9]_*.py"))
REQUIRED = {
    "learning goals": r"^#+ .*learning goals",
    "runtime line": r"\*\*runtime\*\*",
    "exercises": r"^#+ .*exercises",
    "folded solutions": r":class: dropdown",
    "summary": r"^#+ .*summary",
    "references": r"^#+ .*references",
    "profile and device printed": r"describe\(\)",
    "link to the notation page": r"\{doc\}`notation`",
}


def _toc_files() -> set[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {toc["root"]}
    stack = list(toc.get("chapters", [])) + list(toc.get("parts", []))
    while stack:
        entry = stack.pop()
        if "file" in entry:
            files.add(entry["file"])
        stack.extend(entry.get("chapters", []) + entry.get("sections", []))
    return {str(Path(f).with_suffix("")) for f in files}


def test_there_are_chapters():
    assert CHAPTERS, "book/ has no NN_slug.py chapters"


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_pair_exists_and_is_in_sync(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{py.name} has no paired notebook; run `jupytext --sync {py}`"
    a = jupytext.read(py)
    b = jupytext.read(ipynb)
    src_a = [(c.cell_type, c.source.strip()) for c in a.cells]
    src_b = [(c.cell_type, c.source.strip()) for c in b.cells]
    assert src_a == src_b, f"{py.name} and {ipynb.name} differ; run `jupytext --sync {py}`"


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_notebook_has_no_outputs(py):
    nb = json.loads(py.with_suffix(".ipynb").read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{py.stem}.ipynb carries outputs; clear them"
            assert cell.get("execution_count") is None


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_chapter_is_in_the_table_of_contents(py):
    assert f"book/{py.stem}" in _toc_files(), f"add book/{py.stem}.ipynb to _toc.yml"


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_the_required_sections(py):
    text = py.read_text()
    missing = [name for name, pat in REQUIRED.items()
               if not re.search(pat, text, flags=re.IGNORECASE | re.MULTILINE)]
    assert not missing, f"{py.name} lacks: {', '.join(missing)}"


def test_toc_lists_only_existing_files():
    for f in _toc_files():
        assert any((ROOT / f).with_suffix(s).is_file() for s in (".md", ".ipynb")), f


def test_install_cells_use_the_configured_repository():
    """One address, in _config.yml: every chapter's install cell (both files of each pair)
    installs from it, as the launch buttons open it."""
    import subprocess
    import sys

    p = subprocess.run([sys.executable, str(ROOT / "_ext" / "repository.py"), "--check"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_no_control_characters(py):
    """A Python escape in a chapter's text (\\t in \\top, \\r in \\rVert, \\f in \\frac) turns
    LaTeX into a TAB, a line break or a form feed; the page then shows broken maths."""
    bad = [(i, repr(line)) for i, line in enumerate(py.read_text().split("\n"), 1)
           if re.search(r"[\x00-\x09\x0b-\x1f]", line)]
    assert not bad, f"{py.name}: control characters on lines {bad[:3]}"


# Sentences the book once taught that are false or describe an earlier recipe. The residual
# at the true training set is an upper bound on the best reconstruction loss, not a floor;
# the full profile is not the paper's recipe; noise outside the row space is weakly
# penalised, not invisible; under weight decay every sample has a positive multiplier.
STALE_OR_FALSE = [
    r"lower bound on what any reconstruction",
    r"floor under\s+(#\s*)?every reconstruction",
    r"no reconstruction can explain more",
    r"full profile (uses|keeps) the paper's recipe",
    r"full profile runs `ReconConfig\.paper\(\)`",
    r"the book shows single runs",
    r"further from its stationary point",
    r"SSIM between 0\.3 and 0\.4",
    r"Only samples on the margin can\s+(#\s*)?have",
    r"cannot\s+(#\s*)?see",
    r"when this was written",
    r"from 21 to 22",
]


def _book_texts():
    files = sorted(BOOK.glob("*.py")) + sorted(BOOK.glob("*.md")) + [ROOT / "recon" / "kkt.py"]
    return {f.relative_to(ROOT).as_posix(): f.read_text() for f in files}


@pytest.mark.parametrize("pattern", STALE_OR_FALSE)
def test_no_false_or_stale_sentence(pattern):
    hits = [name for name, text in _book_texts().items()
            if re.search(pattern, text, flags=re.IGNORECASE)]
    assert not hits, f"{pattern!r} is back in {hits}: it was false or stale (see the comment)"


def test_the_stale_sentence_check_can_fail():
    text = "# The residual is a lower bound on what any reconstruction can reach"
    assert any(re.search(p, text, flags=re.IGNORECASE) for p in STALE_OR_FALSE)


def exercises_and_solutions(notebook) -> tuple[list[int], list[int]]:
    """The numbers of the exercises a chapter states (numbered items of the markdown under
    its Exercises heading, solutions' admonitions left out) and of the solutions that run
    with it (folded code cells that start ``# Solution to exercise N``)."""
    stated, solved, inside = [], [], False
    for cell in notebook.cells:
        src = cell.source
        if cell.cell_type == "markdown":
            if re.search(r"^#+ .*exercises", src, flags=re.IGNORECASE | re.MULTILINE):
                inside = True
            if re.search(r"^#+ .*summary", src, flags=re.IGNORECASE | re.MULTILINE):
                break
            if inside:
                src = re.sub(r":::\{admonition\}.*?\n:::", "", src, flags=re.DOTALL)
                stated += [int(k) for k in re.findall(r"^(?:\*\*)?(\d+)\.\s", src, re.M)]
        elif inside and "hide-cell" in cell.metadata.get("tags", []):
            solved += [int(k) for k in re.findall(r"^# Solution to exercise (\d+)\b", src)]
    return stated, solved


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.name)
def test_every_exercise_has_a_solution_that_runs(py):
    stated, solved = exercises_and_solutions(jupytext.read(py))
    assert stated, f"{py.name}: no numbered exercise found under its Exercises heading"
    assert stated == list(range(1, len(stated) + 1)), f"{py.name}: exercises numbered {stated}"
    assert solved == stated, (f"{py.name}: exercises {stated} but executed solutions {solved}; "
                              "give each a folded code cell (tags=['hide-cell']) that starts "
                              "'# Solution to exercise N'")


def test_the_solution_check_can_fail():
    nb = jupytext.reads("# %% [markdown]\n# ## Exercises\n#\n# 1. One.\n# 2. Two.\n\n"
                        "# %% tags=[\"hide-cell\"]\n# Solution to exercise 1\nx = 1\n\n"
                        "# %% [markdown]\n# ## Summary\n", fmt="py:percent")
    assert exercises_and_solutions(nb) == ([1, 2], [1])

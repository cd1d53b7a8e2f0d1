"""Sphinx extension of the recon book: MathJax served with the book, not from a CDN.

Sphinx's mathjax extension loads MathJax 3 from a CDN by default, so a reader who is offline
or behind a firewall sees every formula as raw LaTeX. This copies MathJax's browser files
from a Python package (``django-static-mathjax``, in requirements.txt: a plain copy of the
MathJax 3 release with no dependencies; its import name is ``mathjax``) into the built HTML's
``_static/mathjax/`` and points ``mathjax_path`` there. The book's ``mathjax3_config``
(``_config.yml``: the ``\\R`` macro) works as before: it is the same MathJax 3.

Copied: the combined component the pages load (``tex-mml-chtml.js``), and every directory
MathJax loads from on demand (TeX extensions that ``autoload`` pulls in, the CHTML fonts,
the menu, the accessibility and speech components, the SVG output the menu can switch to),
plus MathJax's LICENSE. Not copied: the other combined components, the sources.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
from pathlib import Path

from sphinx.ext.mathjax import MATHJAX_URL
from sphinx.util import logging

logger = logging.getLogger(__name__)

DISTRIBUTION = "django-static-mathjax"  # PyPI name; installs the import package `mathjax`
COMPONENT = "tex-mml-chtml.js"  # the combined component Sphinx's default CDN address names
TARGET = "mathjax"  # under the output's _static/


def mathjax_root() -> Path:
    """The installed MathJax release (the folder with ``es5/`` and ``package.json``)."""
    spec = importlib.util.find_spec("mathjax")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"MathJax is not installed: pip install {DISTRIBUTION} "
                           "(requirements.txt lists it)")
    root = Path(next(iter(spec.submodule_search_locations))) / "static" / "mathjax"
    if not (root / "es5" / COMPONENT).is_file():
        raise RuntimeError(f"{root / 'es5' / COMPONENT} is missing: the `mathjax` package "
                           f"is not {DISTRIBUTION} with MathJax 3")
    return root


def mathjax_version(root: Path | None = None) -> str:
    root = root or mathjax_root()
    return json.loads((root / "package.json").read_text(encoding="utf-8"))["version"]


def _wanted(root: Path):
    """(source, relative destination) of every file the book serves."""
    es5 = root / "es5"
    yield es5 / COMPONENT, Path(COMPONENT)
    for sub in sorted(p for p in es5.iterdir() if p.is_dir()):
        for f in sorted(sub.rglob("*")):
            if f.is_file():
                yield f, f.relative_to(es5)
    yield root / "LICENSE", Path("LICENSE")


def copy_mathjax(outdir: Path) -> int:
    """Copy MathJax into ``outdir/_static/mathjax``; files already there (same size and
    modification time) are left alone. Returns how many files were copied."""
    dest = Path(outdir) / "_static" / TARGET
    copied = 0
    for src, rel in _wanted(mathjax_root()):
        out = dest / rel
        st = src.stat()
        if out.is_file() and (o := out.stat()).st_size == st.st_size and \
                int(o.st_mtime) == int(st.st_mtime):
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)
        copied += 1
    return copied


def _configure(app, config):
    local = f"{TARGET}/{COMPONENT}"
    if config.mathjax_path == MATHJAX_URL:  # Sphinx's default: the CDN
        config.mathjax_path = local
    elif config.mathjax_path != local:
        logger.warning(f"mathjax_path is {config.mathjax_path!r}: the book serves MathJax "
                       f"itself ({local!r}, set by _ext/local_mathjax.py); remove the setting")


def _install(app):
    builder = app.builder
    if builder.format != "html" or getattr(builder, "math_renderer_name", None) != "mathjax":
        return
    root = mathjax_root()
    n = copy_mathjax(Path(builder.outdir))
    logger.info(f"MathJax {mathjax_version(root)} ({DISTRIBUTION} "
                f"{importlib.metadata.version(DISTRIBUTION)}): {n} files copied to "
                f"_static/{TARGET}/")


def setup(app):
    app.setup_extension("sphinx.ext.mathjax")
    # after every conf value is read, before pages are written (the pages' links to the
    # script then carry its checksum, as Sphinx gives every local script)
    app.connect("config-inited", _configure)
    app.connect("builder-inited", _install)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

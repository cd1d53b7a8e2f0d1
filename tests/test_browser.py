"""The built book in a real browser (headless Chromium driven by Playwright): the kernel-free
explorer, and the formulas of every chapter.

Tests, all marked ``browser``:

- a standalone page built from small synthetic items: every control, checked against
  :func:`recon.widgets.filter_items` (seconds, no book needed);
- the explorer chapter of the built HTML book (``make book`` first; ``make test`` does that),
  served on localhost as a reader gets it, with every request off localhost blocked: the
  explorer renders, moving the slider and the dropdowns changes the image and numbers, the
  console stays clean, no widget manager is loaded and no blank ipywidget is left on the page.
  Screenshots before and after moving the slider go to ``_build/browser/``;
- the formulas of the built book: every page of ``_toc.yml`` served on localhost with every
  request off localhost blocked, MathJax (served with the book, ``_ext/local_mathjax.py``)
  must finish typesetting with every formula rendered, no TeX error, no undefined macro, no
  raw LaTeX left in the text, and no request off localhost (:func:`_math_problems`). A
  screenshot of a formula with the book's ``\\R`` macro goes to ``_build/browser/``;
- the same check on small pages with a broken formula, an undefined macro, dollar math left
  as text and MathJax from a CDN, each of which it must report (seconds, no book needed).

Skipped only where Chromium (or Playwright) is missing *and* the ``CI`` variable is unset;
in CI a missing browser fails. The browser is Debian's ``chromium`` (``RECON_CHROMIUM``
overrides the path); Playwright's own browser download is not used.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
import torch
import yaml

from recon.evaluate import evaluate
from recon.html_explorer import VERSION, explorer_page
from recon.widgets import filter_items, pair_items

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
HTML_DIR = ROOT / "_build" / "html"
CHAPTER = "book/05_explorer.html"
EXPLORER_ID = "pair-explorer"  # the element id the chapter gives its explorer
ARTEFACTS = ROOT / "_build" / "browser"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]


def _missing(what: str):
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI is set, so the browser test must run; .ci/run installs "
                    "Debian's chromium and requirements.txt installs playwright)")
    pytest.skip(what)


def _chromium() -> str:
    path = os.environ.get("RECON_CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
         if p), None)
    if not path:
        _missing("no chromium on PATH (apt-get install chromium; or set RECON_CHROMIUM)")
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, headless=True, args=FLAGS)
        yield b
        b.close()


class _Page:
    """A fresh page that records console errors, page errors and every request, with all
    requests off localhost aborted (the page must not need the network)."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1280, "height": 1000})
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.blocked: list[str] = []

        def route(r):
            url = r.request.url
            self.requests.append(url)
            if url.startswith(("http://127.0.0.1", "data:", "about:")):
                r.continue_()
            else:
                self.blocked.append(url)
                r.abort()

        self.context.route("**/*", route)
        self.page = self.context.new_page()
        self.seen: list[str] = []  # every request the page made (Playwright's request events)
        self.page.on("request", lambda r: self.seen.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", lambda m: self.errors.append(
            f"console {m.type}: {m.text} @ {m.location.get('url')}")
            if m.type in ("error", "warning") else None)

    def local_errors(self) -> list[str]:
        """Errors not caused by blocking an off-site resource."""
        return [e for e in self.errors
                if not ("ERR_FAILED" in e or "net::" in e) or "127.0.0.1" in e]

    def close(self):
        self.context.close()


@pytest.fixture
def page(browser):
    p = _Page(browser)
    yield p
    p.close()


def _serve(directory: Path):
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _strip_port(text: str) -> str:
    """An error message without the server's address (to compare two pages)."""
    return re.sub(r"http://127\.0\.0\.1:\d+", "", text)


def _state(pg, root: str) -> dict:
    """What the reader sees in the explorer ``root`` (a CSS selector)."""
    return pg.eval_on_selector(root, """r => {
        const t = c => r.querySelector('.' + c).textContent.trim();
        const img = r.querySelector('.rx-image');
        return {ready: r.getAttribute('data-rx-ready'), current: r.getAttribute('data-rx-current'),
                status: t('rx-status'), train: t('rx-train'), cls: t('rx-class-name'),
                ssim: t('rx-ssim'), ncc: t('rx-ncc'), lam: t('rx-lam'), margin: t('rx-margin'),
                src: img.getAttribute('src') || '', natural: img.naturalWidth,
                shown_h: img.getBoundingClientRect().height,
                index: r.querySelector('.rx-index').value,
                index_max: r.querySelector('.rx-index').max};
    }""")


def _data(pg, root: str) -> dict:
    return json.loads(pg.eval_on_selector(
        root, "r => r.querySelector('script.rx-data').textContent"))


def _synthetic_items(channels: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    n = 12
    raw = torch.rand(n, channels, 8, 8, generator=g)
    mean = raw.mean(0, keepdim=True)
    x = raw - mean
    noise = torch.linspace(0.02, 0.6, n).view(-1, 1, 1, 1)
    ev = evaluate(x + noise * torch.randn(x.shape, generator=g), x, mean,
                  matching="one_to_one")
    lam = torch.rand(n, generator=g, dtype=torch.float64)
    margin = 1 + torch.rand(n, generator=g, dtype=torch.float64)
    return pair_items(ev, lam, margin, torch.arange(n) % 3, ("zero", "one", "two"))


def test_standalone_explorer_controls_match_filter_items(page, tmp_path):
    runs = {"grey": _synthetic_items(1, 0), "colour": _synthetic_items(3, 1)}
    (tmp_path / "explorer.html").write_text(
        explorer_page(runs, element_id="ex", max_items=10), encoding="utf-8")
    server = _serve(tmp_path)
    try:
        pg = page.page
        pg.goto(f"http://127.0.0.1:{server.server_port}/explorer.html")
        try:
            pg.wait_for_selector('#ex[data-rx-ready="1"]', timeout=10_000)
        except Exception:
            pytest.fail(f"the explorer's script did not finish; browser errors: {page.errors}")
        root = "#ex"

        def expect(items):
            """The explorer shows ``items`` in this order: step through all of them."""
            s = _state(pg, root)
            assert int(s["index_max"]) == max(len(items) - 1, 0)
            for i, it in enumerate(items):
                if i:
                    pg.click("#ex .rx-next")
                s = _state(pg, root)
                assert s["train"] == f"#{it.train_index}", (i, s)
                assert float(s["ssim"]) == pytest.approx(it.ssim, abs=6e-4)
                assert float(s["lam"]) == pytest.approx(it.lam, rel=6e-3)
                assert s["cls"] == it.class_name
                assert s["natural"] > 0 and s["status"].startswith(f"pair {i + 1} of {len(items)}")

        best10 = filter_items(runs["grey"], sort_by="ssim")[:10]
        expect(best10)
        assert "best 10 of 12 pairs" in _state(pg, root)["status"]
        pg.select_option("#ex .rx-sort", "lam")
        expect(filter_items(best10, sort_by="lam"))
        pg.select_option("#ex .rx-sort", "margin")
        pg.select_option("#ex .rx-class", "one")
        expect(filter_items(best10, class_name="one", sort_by="margin"))
        pg.select_option("#ex .rx-class", "all classes")
        pg.fill("#ex .rx-min-ssim", "0.5")
        expect(filter_items(best10, min_ssim=0.5, sort_by="margin"))
        pg.fill("#ex .rx-min-ssim", "1")
        s = _state(pg, root)
        assert "no pair passes" in s["status"] and s["current"] == ""
        pg.fill("#ex .rx-min-ssim", "-1")
        pg.select_option("#ex .rx-run", "1")  # the colour run: filters are reapplied
        expect(filter_items(filter_items(runs["colour"], sort_by="ssim")[:10],
                            sort_by="margin"))
        assert page.errors == [] and page.blocked == []
    finally:
        server.shutdown()


def test_book_explorer_page_works_without_a_kernel(browser, page):
    html = HTML_DIR / CHAPTER
    if not html.is_file():
        pytest.fail(f"{html} is missing: build the book first (`make book`; `make test` does)")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    server = _serve(HTML_DIR)
    try:
        pg = page.page
        pg.goto(f"http://127.0.0.1:{server.server_port}/{CHAPTER}", wait_until="load")
        root = f"#{EXPLORER_ID}"
        pg.wait_for_selector(root, state="attached", timeout=15_000)
        version = pg.get_attribute(root, "data-rx-version")
        assert version == VERSION, (
            f"the page was built with another explorer ({version}, library {VERSION}): "
            "rebuild the book with a fresh execution cache (rm -rf _build/.jupyter_cache)")
        try:
            pg.wait_for_selector(f'{root}[data-rx-ready="1"]', timeout=15_000)
        except Exception:
            pytest.fail(f"the explorer's script did not finish; browser errors: {page.errors}")
        pg.locator(root).scroll_into_view_if_needed()

        # rendered, not blank: an image with pixels, the numbers of the best pair
        data = _data(pg, root)
        assert [r["name"] for r in data["runs"]][:2] == ["MNIST (odd vs even)",
                                                          "CIFAR-10 (animal vs vehicle)"]
        first = max(data["runs"][0]["items"], key=lambda r: r["ssim"])
        before = _state(pg, root)
        assert pg.locator(root).is_visible()
        assert before["natural"] > 0 and before["shown_h"] >= 100, before
        assert before["train"] == f"#{first['train_index']}"
        assert before["ssim"] == f"{first['ssim']:.3f}" and before["lam"] not in ("", "—")
        assert before["status"].startswith("pair 1 of ")
        pg.locator(root).screenshot(path=str(ARTEFACTS / "before.png"))

        # move the slider as a reader does (keyboard on the focused range input)
        pg.focus(f"{root} .rx-index")
        for _ in range(3):
            pg.keyboard.press("ArrowRight")
        after = _state(pg, root)
        assert after["index"] == "3" and after["status"].startswith("pair 4 of ")
        assert after["src"] != before["src"] and after["natural"] > 0
        assert after["train"] != before["train"] and after["current"] != before["current"]
        assert (after["ssim"], after["lam"], after["margin"]) != (
            before["ssim"], before["lam"], before["margin"])
        ranked = sorted(data["runs"][0]["items"], key=lambda r: (-r["ssim"], r["rank"]))
        assert after["ssim"] == f"{ranked[3]['ssim']:.3f}"
        pg.locator(root).screenshot(path=str(ARTEFACTS / "after.png"))
        assert (ARTEFACTS / "after.png").read_bytes() != (ARTEFACTS / "before.png").read_bytes()

        # a class from the dropdown, the SSIM threshold, the other data set
        cls = data["runs"][0]["classes"][1]
        pg.select_option(f"{root} .rx-class", cls)
        s = _state(pg, root)
        n_cls = sum(r["class_name"] == cls for r in data["runs"][0]["items"])
        assert s["cls"] == cls and s["status"].startswith(f"pair 1 of {n_cls} shown")
        pg.select_option(f"{root} .rx-class", "all classes")
        pg.fill(f"{root} .rx-min-ssim", "0.4")
        n_good = sum(r["ssim"] > 0.4 for r in data["runs"][0]["items"])
        assert _state(pg, root)["status"].startswith(
            f"pair 1 of {n_good} shown" if n_good else "no pair passes")
        pg.fill(f"{root} .rx-min-ssim", "-1")
        pg.select_option(f"{root} .rx-run", "1")
        s = _state(pg, root)
        best_c = max(data["runs"][1]["items"], key=lambda r: r["ssim"])
        assert s["train"] == f"#{best_c['train_index']}" and s["natural"] > 0
        pg.locator(root).screenshot(path=str(ARTEFACTS / "after_cifar10.png"))
        pg.screenshot(path=str(ARTEFACTS / "page.png"), full_page=False)

        # the rest of the page: kernel widgets show their snapshot, none is left blank, and
        # no widget manager was requested
        assert pg.locator(".recon-widget-snapshot img").count() >= 1
        assert pg.locator('script[type="application/vnd.jupyter.widget-view+json"]').count() == 0
        assert not [u for u in page.requests
                    if "jupyter-widgets" in u or "require.js" in u or "embed-amd" in u]
        assert pg.locator(
            'script[type="application/vnd.jupyter.widget-state+json"]').count() == 0

        # the console: nothing beyond what the theme logs on a page without any output
        # (the same setup on the book's first page)
        baseline = _Page(browser)
        try:
            baseline.page.goto(f"http://127.0.0.1:{server.server_port}/book/intro.html",
                               wait_until="load")
            baseline.page.wait_for_timeout(500)
            theme = {_strip_port(e) for e in baseline.local_errors()}
        finally:
            baseline.close()
        ours = [e for e in page.local_errors() if _strip_port(e) not in theme]
        assert ours == [], ours
        (ARTEFACTS / "console.txt").write_text(
            "explorer page:\n" + "\n".join(page.errors) + "\n\nfirst page (baseline):\n"
            + "\n".join(sorted(theme)) + "\n\nblocked requests:\n" + "\n".join(page.blocked)
            + "\n")
    finally:
        server.shutdown()


# ---------------------------------------------------------------------------------------------
# Formulas: MathJax must typeset every one, from the book's own files
# ---------------------------------------------------------------------------------------------
# Pages that must hold formulas (the rest are checked too, if they have any)
MATH_PAGES = ("book/01_implicit_bias.html", "book/02_training.html",
              "book/03_reconstruction.html")
MACRO_PAGE = "book/02_training.html"  # uses the book's macro \R (_config.yml: mathjax3_config)

# MathJax's state and what a reader sees, after typesetting. ``.math``: the elements Sphinx
# writes around each formula (``\(..\)`` / ``\[..\]``); MathJax 3 puts an ``mjx-container`` in
# each it typesets. MathJax's own record of each formula (serialized to MathML) tells TeX
# errors (``merror``) and undefined macros (the ``noundefined`` extension shows them as red
# ``mtext``, not as an error). Raw LaTeX: text outside code and outside typeset math that
# still holds TeX delimiters or dollar math.
_MATH_STATE = r"""() => {
    const mj = window.MathJax;
    const maths = [...document.querySelectorAll('.math')];
    const out = {
        version: (mj && mj.version) || null,
        scripts: [...document.scripts].map(s => s.src).filter(s => /mathjax/i.test(s)),
        formulas: maths.length,
        rendered: document.querySelectorAll('mjx-container').length,
        untypeset: maths.filter(e => !e.querySelector('mjx-container'))
                        .map(e => e.textContent.trim().slice(0, 100)),
        errors: [...document.querySelectorAll('mjx-merror, merror, [data-mjx-error]')]
                    .map(e => 'TeX error: ' + (e.getAttribute('data-mjx-error')
                                               || e.textContent).slice(0, 100)),
        macros: [],
        raw: [],
    };
    if (mj && mj.startup && mj.startup.document && mj.startup.toMML) {
        for (const item of mj.startup.document.math) {
            const mml = mj.startup.toMML(item.root);
            const tex = item.math.trim().slice(0, 100);
            if (/<merror/.test(mml)) out.errors.push('TeX error in ' + tex);
            const bad = mml.match(/<mtext[^>]*mathcolor="red"[^>]*>(\\[^<]*)<\/mtext>/);
            if (bad) out.errors.push('undefined macro ' + bad[1] + ' in ' + tex);
            if (/\\R(?![A-Za-z])/.test(item.math)) out.macros.push({tex, mml});
        }
    }
    const skip = 'script, style, pre, code, textarea, kbd, samp, .highlight, mjx-container';
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT, {
        acceptNode: n => n.parentElement && n.parentElement.closest(skip)
            ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT});
    const latex = /\\\(|\\\)|\\\[|\\\]|\$\$|\\begin\{|\$[^$\n]*[\\^_{}=][^$\n]*\$/;
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
        const text = n.textContent;
        const m = text.match(latex);
        if (m) out.raw.push(text.slice(Math.max(0, m.index - 30), m.index + 60).trim());
    }
    out.errors = [...new Set(out.errors)];
    return out;
}"""


def _local(url: str) -> bool:
    return url.startswith(("http://127.0.0.1", "http://localhost", "data:", "about:", "blob:"))


def _math_problems(page: _Page, timeout_ms: int = 30_000) -> tuple[list[str], dict]:
    """What is wrong with the formulas of the page loaded in ``page`` (an empty list when
    every formula rendered), and the state measured (:data:`_MATH_STATE`).

    Waits until MathJax has typeset the page (``MathJax.startup.promise``) and its fonts have
    loaded. Reported: MathJax missing or not finished within ``timeout_ms``, a formula left
    untypeset, a TeX error, an undefined macro, raw LaTeX in the text, a request off
    localhost."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    pg = page.page
    problems = []
    has_math = pg.evaluate("() => document.querySelectorAll('.math').length > 0")
    if has_math:
        try:
            pg.wait_for_function("() => !!(window.MathJax && window.MathJax.startup && "
                                 "window.MathJax.startup.promise)", timeout=timeout_ms)
            pg.evaluate("() => window.MathJax.startup.promise.then(() => document.fonts.ready)"
                        ".then(() => true)")
        except PlaywrightTimeout:
            problems.append(f"MathJax did not load within {timeout_ms / 1000:g} s "
                            f"(browser errors: {page.errors})")
    state = pg.evaluate(_MATH_STATE)
    if state["untypeset"]:
        problems.append(f"{len(state['untypeset'])} of {state['formulas']} formulas not "
                        f"typeset, e.g. {state['untypeset'][:3]}")
    problems += state["errors"]
    problems += [f"raw LaTeX in the text: {t!r}" for t in state["raw"]]
    off_site = sorted({u for u in page.seen + page.requests if not _local(u)})
    if off_site:
        problems.append(f"requests off localhost: {off_site}")
    return problems, state


def _toc_pages() -> list[str]:
    """Every page of the book, as paths under _build/html (from _toc.yml)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    files = [toc["root"]] + [c["file"] for part in toc.get("parts", [])
                             for c in part.get("chapters", [])]
    return [re.sub(r"\.(ipynb|md)$", "", f) + ".html" for f in files]


def test_book_formulas_render_offline(browser):
    missing = [p for p in _toc_pages() if not (HTML_DIR / p).is_file()]
    if missing:
        pytest.fail(f"{missing} missing: build the book first (`make book`; `make test` does)")
    assert set(MATH_PAGES) <= set(_toc_pages())
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    server = _serve(HTML_DIR)
    found, counts = {}, {}
    try:
        for rel in _toc_pages():
            p = _Page(browser)
            try:
                p.page.goto(f"http://127.0.0.1:{server.server_port}/{rel}", wait_until="load")
                problems, state = _math_problems(p)
                counts[rel] = (state["formulas"], state["rendered"], state["version"])
                if state["formulas"]:  # MathJax from the book's _static, MathJax 3
                    if not all(s.startswith(f"http://127.0.0.1:{server.server_port}/_static/"
                                            "mathjax/") for s in state["scripts"]):
                        problems.append(f"MathJax not from _static/mathjax: {state['scripts']}")
                    if not (state["version"] or "").startswith("3."):
                        problems.append(f"MathJax {state['version']}, expected 3.x")
                if rel in MATH_PAGES and not (state["formulas"] and state["rendered"]):
                    problems.append(f"no formula rendered ({state['formulas']} in the page)")
                if rel == MACRO_PAGE:
                    if not state["macros"]:
                        problems.append("no formula with \\R found")
                    for m in state["macros"]:
                        if 'mathvariant="double-struck"' not in m["mml"]:
                            problems.append(f"\\R is not a double-struck R in {m['tex']!r}")
                    _screenshot_macro(p.page, ARTEFACTS / "math_02_training.png")
                if problems:
                    found[rel] = problems
            finally:
                p.close()
    finally:
        server.shutdown()
    (ARTEFACTS / "math.txt").write_text("page: formulas, typeset, MathJax version\n" + "\n".join(
        f"{rel}: {f} {r} {v}" for rel, (f, r, v) in counts.items()) + "\n")
    assert found == {}, found


def _screenshot_macro(pg, path: Path) -> None:
    """A screenshot of the paragraph around the first formula that uses ``\\R``."""
    ok = pg.evaluate(r"""() => {
        const item = [...MathJax.startup.document.math].find(i => /\\R(?![A-Za-z])/.test(i.math));
        if (!item || !item.typesetRoot) return false;
        const block = item.typesetRoot.closest('p, li, div.math, dd') || item.typesetRoot;
        block.setAttribute('data-recon-shot', '1');
        return true;
    }""")
    if ok:
        target = pg.locator("[data-recon-shot]")
        target.scroll_into_view_if_needed()
        target.screenshot(path=str(path))


# The failure path: the same check on small pages, each with one thing wrong

def _book_mathjax_config() -> dict:
    """The book's MathJax configuration, as the built pages get it (_config.yml, plus the
    classes myst-parser restricts MathJax to)."""
    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    mj = json.loads(json.dumps(config["sphinx"]["config"]["mathjax3_config"]))
    mj.setdefault("options", {})["processHtmlClass"] = (
        "tex2jax_process|mathjax_process|math|output_area")
    return mj


def _math_page(body: str, src: str = "_static/mathjax/tex-mml-chtml.js") -> str:
    """A page laid out as Sphinx and myst-parser write one: MathJax's configuration, MathJax
    deferred, the content in a section MathJax ignores except for ``.math`` elements."""
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>t</title>'
            f"<script>window.MathJax = {json.dumps(_book_mathjax_config())}</script>"
            f'<script defer src="{src}"></script></head><body>'
            f'<section class="tex2jax_ignore mathjax_ignore">{body}</section></body></html>')


def _inline(tex: str) -> str:
    return f'<span class="math notranslate nohighlight">\\({tex}\\)</span>'


GOOD = ("<p>A point " + _inline(r"x_i \in \R^D") + " with margin "
        + _inline(r"y_i \Phi(\theta; x_i) \ge 1") + ".</p>"
        + r'<div class="math notranslate nohighlight">\[\theta = \sum_{i=1}^n \lambda_i y_i '
        + r"\nabla_\theta \Phi(\theta; x_i)\]</div>"
        + "<pre>costs $x^2$ in code: not math</pre>")

# case: (page body, what the check must say)
BROKEN = {
    "a formula with a TeX error": ("<p>" + _inline(r"x^2^3") + "</p>", "TeX error"),
    "a formula with an unclosed brace": ("<p>" + _inline(r"\frac{1}{2") + "</p>",
                                         "not typeset"),
    "an undefined macro": ("<p>" + _inline(r"x \in \Reals^D") + "</p>",
                           r"undefined macro \Reals"),
    "dollar math left as text": (r"<p>the margin $y_i f(x_i) \ge 1$ holds</p>",
                                 "raw LaTeX in the text"),
    "MathJax from a CDN": (GOOD, "MathJax did not load"),
    "no MathJax at all": (GOOD, "not typeset"),
}
SOURCES = {"MathJax from a CDN": "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js",
           "no MathJax at all": "_static/mathjax/missing.js"}


@pytest.fixture(scope="module")
def math_site(tmp_path_factory):
    """A folder served on localhost with MathJax copied in as the book build copies it
    (``_ext/local_mathjax.py``), one page per case."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("local_mathjax",
                                                  ROOT / "_ext" / "local_mathjax.py")
    local_mathjax = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local_mathjax)
    site = tmp_path_factory.mktemp("math")
    try:
        local_mathjax.copy_mathjax(site)
    except RuntimeError as e:
        pytest.fail(str(e))
    (site / "good.html").write_text(_math_page(GOOD), encoding="utf-8")
    for i, (body, _) in enumerate(BROKEN.values()):
        src = SOURCES.get(list(BROKEN)[i], "_static/mathjax/tex-mml-chtml.js")
        (site / f"broken{i}.html").write_text(_math_page(body, src), encoding="utf-8")
    server = _serve(site)
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_math_check_passes_a_page_that_renders(page, math_site):
    page.page.goto(f"{math_site}/good.html", wait_until="load")
    problems, state = _math_problems(page)
    assert problems == [], problems
    assert state["formulas"] == state["rendered"] == 3 and state["version"].startswith("3.")
    assert 'mathvariant="double-struck"' in state["macros"][0]["mml"]  # the book's \R
    assert page.blocked == [] and page.errors == []


@pytest.mark.parametrize("case", list(BROKEN))
def test_math_check_reports_a_formula_that_does_not_render(page, math_site, case):
    i = list(BROKEN).index(case)
    page.page.goto(f"{math_site}/broken{i}.html", wait_until="load")
    problems, _ = _math_problems(page, timeout_ms=3_000)
    expected = BROKEN[case][1]
    assert any(expected in p for p in problems), problems
    if case == "MathJax from a CDN":
        assert any("requests off localhost" in p and "cdn.jsdelivr.net" in p for p in problems)


def test_audit_report_renders_offline(page, tmp_path):
    """The page `recon audit` writes, for a small model trained here with plain PyTorch on
    real digits: it renders, every image loads, and it requests nothing (its images are
    embedded). A screenshot goes to ``_build/browser/audit-report.png``."""
    import numpy as np
    from torch import nn

    from recon.audit import audit
    from recon.data import load_raw

    x_tr, y_tr, x_te, y_te, _ = load_raw("mnist")

    def digits(x, y):
        idx = np.concatenate([np.flatnonzero(y == d)[:2] for d in range(10)])
        return (torch.tensor(x[idx]).float()[:, None] / 255,
                torch.tensor((y[idx] >= 5).astype(np.int64)))

    (xtr, ytr), (xte, yte) = digits(x_tr, y_tr), digits(x_te, y_te)
    mean = xtr.mean(0, keepdim=True)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.ReLU(),
                        nn.Linear(100, 1, bias=False))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=2e-2)
    for _ in range(500):
        opt.zero_grad()
        nn.functional.softplus(-(2 * ytr - 1) * net(xtr - mean).squeeze(1)).mean().backward()
        opt.step()
    report = audit(net, out=tmp_path / "report", train=(xtr - mean, ytr),
                   test=(xte - mean, yte), mean=mean, input_shape=(1, 28, 28), steps=150,
                   candidates=40, max_runs=1, budget="10m", progress=False)
    server = _serve(tmp_path / "report")
    try:
        pg = page.page
        pg.goto(f"http://127.0.0.1:{server.server_port}/index.html")
        pg.wait_for_selector("#verdict", timeout=10_000)
        assert report["verdict"]["headline"] in pg.inner_text("#verdict")
        sizes = pg.eval_on_selector_all(
            "img", "els => els.map(e => [e.complete, e.naturalWidth, e.naturalHeight])")
        assert len(sizes) == 2 * len(report["scored"]["top_pairs"]) > 0
        assert all(done and w > 0 and h > 0 for done, w, h in sizes), sizes
        assert pg.inner_text("body").count("How this was made") == 1
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(ARTEFACTS / "audit-report.png"), full_page=True)
    finally:
        server.shutdown()
    off_site = [u for u in page.seen if not u.startswith(("http://127.0.0.1", "data:"))]
    assert not off_site and not page.blocked, off_site + page.blocked
    assert not page.local_errors(), page.errors
    local = [u for u in page.seen if u.startswith("http://127.0.0.1")]
    assert len(local) == 1, local  # the page itself: nothing else is fetched

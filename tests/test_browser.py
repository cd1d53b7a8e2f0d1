"""The kernel-free explorer in a real browser (headless Chromium driven by Playwright).

Two tests, both marked ``browser``:

- a standalone page built from small synthetic items: every control, checked against
  :func:`recon.widgets.filter_items` (seconds, no book needed);
- the explorer chapter of the built HTML book (``make book`` first; ``make test`` does that),
  served on localhost as a reader gets it, with every request off localhost blocked: the
  explorer renders, moving the slider and the dropdowns changes the image and numbers, the
  console stays clean, no widget manager is loaded and no blank ipywidget is left on the page.
  Screenshots before and after moving the slider go to ``_build/browser/``.

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
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.page.on("console", lambda m: self.errors.append(
            f"console {m.type}: {m.text} @ {m.location.get('url')}")
            if m.type in ("error", "warning") else None)

    def local_errors(self) -> list[str]:
        """Errors not caused by blocking an off-site resource (e.g. MathJax's CDN)."""
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

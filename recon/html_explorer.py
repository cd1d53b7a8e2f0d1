"""A pair explorer that needs no kernel: one self-contained HTML fragment (or page) holding
precomputed items as JSON, PNGs as base64, and a few dozen lines of plain JavaScript.

Why not ipywidgets in the HTML book: a static page has no kernel, so widget callbacks never
run; what can work is the saved widget state plus links between widgets in the browser
(``jslink``), drawn by the ``@jupyter-widgets/html-manager`` bundle, which Jupyter Book loads
from a CDN (plus require.js). That fails offline and behind strict networks and is a second
copy of every item in the notebook metadata. The fragment here depends on nothing: the same
output works in the built HTML book, in Jupyter (trusted notebook) and on Colab, and a browser
test can check it without a network.

Three layers, all pure functions of :class:`recon.widgets.PairItem` lists:

- :func:`explorer_data`: the JSON the page holds (a bounded number of items per run, numbers
  rounded, PNGs at native resolution, enlarged in the browser with ``image-rendering:
  pixelated``);
- :func:`explorer_html`: the fragment (a ``<div class="recon-explorer">``) to show with
  ``IPython.display.HTML``; the best pair is filled in server-side, so it is readable even
  where scripts do not run;
- :func:`explorer_page` / :func:`write_explorer_page`: a standalone ``.html`` document.

The page's elements carry stable classes (``rx-run``, ``rx-class``, ``rx-sort``,
``rx-min-ssim``, ``rx-index``, ``rx-prev``, ``rx-next``, ``rx-image``, ``rx-ssim``, ``rx-ncc``,
``rx-lam``, ``rx-margin``, ``rx-train``, ``rx-candidate``, ``rx-class-name``, ``rx-rank``,
``rx-status``); once the script has run the root has ``data-rx-ready="1"`` and
``data-rx-current="<run index>:<training image>"``.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from .widgets import (
    INFO_ROWS,
    NUMBER_FORMATS,
    SORT_KEYS,
    PairItem,
    classes_of,
    filter_items,
    info_table,
    png_bytes,
)

__all__ = ["MAX_ITEMS", "VERSION", "explorer_data", "explorer_html", "explorer_page",
           "write_explorer_page"]

#: Default bound on the items embedded per run (the best by SSIM).
MAX_ITEMS = 100

_CSS = """
.recon-explorer{font-size:.9rem;line-height:1.35;border:1px solid rgba(128,128,128,.45);
  border-radius:6px;padding:.6em .8em;margin:.5em 0;max-width:46em}
.recon-explorer .rx-controls,.recon-explorer .rx-nav{display:flex;flex-wrap:wrap;
  align-items:center;gap:.35em 1.1em;margin:.25em 0}
.recon-explorer label{display:inline-flex;align-items:center;gap:.4em;margin:0}
.recon-explorer select,.recon-explorer button{font:inherit;padding:.1em .3em}
.recon-explorer input[type=range]{vertical-align:middle}
.recon-explorer .rx-index{width:16em}
.recon-explorer .rx-status{opacity:.85;margin:.2em 0 .4em}
.recon-explorer .rx-body{display:flex;flex-wrap:wrap;gap:1.2em;align-items:flex-start}
.recon-explorer figure{margin:0}
.recon-explorer .rx-image{image-rendering:pixelated;image-rendering:crisp-edges;
  display:block;background:#fff}
.recon-explorer figcaption{font-size:.8em;opacity:.85;max-width:14em}
.recon-explorer table.rx-info{border-collapse:collapse;margin:0}
.recon-explorer table.rx-info td{padding:.1em 1em .1em 0;border:0;text-align:left}
.recon-explorer .rx-good{color:#1a7f37}.recon-explorer .rx-bad{color:#c62828}
"""

# The script finds its root through document.currentScript (Jupyter re-inserts output
# scripts in place), falling back to the element id.
_JS = r"""
(function () {
  var script = document.currentScript;
  var root = (script && script.closest && script.closest('.recon-explorer'))
    || document.getElementById(__RX_ID__);
  if (!root || root.getAttribute('data-rx-ready') === '1') { return; }
  var data = JSON.parse(root.querySelector('script.rx-data').textContent);
  function q(name) { return root.querySelector('.' + name); }
  var runSel = q('rx-run'), clsSel = q('rx-class'), sortSel = q('rx-sort');
  var minSsim = q('rx-min-ssim'), minOut = q('rx-min-ssim-value'), idx = q('rx-index');
  var prev = q('rx-prev'), next = q('rx-next'), status = q('rx-status'), img = q('rx-image');
  var SORTS = __RX_SORTS__, FIELDS = __RX_FIELDS__;
  var ALL = 'all classes';
  var run = null, shown = [];

  function setText(name, text) { q(name).textContent = text; }
  function options(sel, pairs) {
    sel.innerHTML = '';
    pairs.forEach(function (p) {
      var o = document.createElement('option');
      o.value = p[0]; o.textContent = p[1]; sel.appendChild(o);
    });
  }
  function setRun() {
    run = data.runs[Number(runSel.value)];
    options(clsSel, [[ALL, ALL]].concat(run.classes.map(function (c) { return [c, c]; })));
    clsSel.disabled = run.classes.length === 0;
    var keys = Object.keys(SORTS).filter(function (k) {
      return (k !== 'lam' || run.has_lam) && (k !== 'margin' || run.has_margin);
    });
    var old = sortSel.value;
    options(sortSel, keys.map(function (k) { return [k, SORTS[k][0]]; }));
    sortSel.value = keys.indexOf(old) >= 0 ? old : 'ssim';
    img.style.width = (run.width * run.zoom) + 'px';
    img.style.height = (run.height * run.zoom) + 'px';
    refilter();
  }
  function refilter() {
    var cls = clsSel.value, lo = Number(minSsim.value), key = sortSel.value;
    var sign = SORTS[key][1] ? -1 : 1;
    minOut.textContent = lo.toFixed(2);
    shown = run.items.filter(function (it) {
      return (cls === ALL || it.class_name === cls) && it.ssim > lo;
    });
    shown.sort(function (a, b) { return sign * (a[key] - b[key]) || a.rank - b.rank; });
    idx.max = String(Math.max(shown.length - 1, 0));
    idx.value = '0';
    idx.disabled = shown.length <= 1;
    show();
  }
  function show() {
    var n = shown.length, i = Number(idx.value);
    prev.disabled = i <= 0;
    next.disabled = i >= n - 1;
    var more = run.n_total > run.items.length
      ? ' (the best ' + run.items.length + ' of ' + run.n_total + ' pairs by SSIM are embedded)'
      : ' (' + run.n_total + ' in all)';
    if (n === 0) {
      img.removeAttribute('src'); img.style.visibility = 'hidden';
      FIELDS.forEach(function (k) { setText('rx-' + k, k === 'verdict' ? '' : '\u2014'); });
      status.textContent = 'no pair passes the filters' + more;
      root.setAttribute('data-rx-current', '');
      return;
    }
    var it = shown[i];
    var good = it.ssim > run.good_ssim;
    img.style.visibility = 'visible';
    img.src = 'data:image/png;base64,' + it.png_base64;
    img.alt = 'reconstruction above training image #' + it.train_index;
    // the text is written in Python (recon.widgets.PairItem.text), as in every other view
    FIELDS.forEach(function (k) { setText('rx-' + k, it.text[k]); });
    q('rx-verdict').className = 'rx-verdict ' + (good ? 'rx-good' : 'rx-bad');
    var nGood = shown.filter(function (x) { return x.ssim > run.good_ssim; }).length;
    status.textContent = 'pair ' + (i + 1) + ' of ' + n + ' shown; ' + nGood
      + ' of the shown have SSIM > ' + run.good_ssim + more;
    root.setAttribute('data-rx-current', runSel.value + ':' + it.train_index);
  }
  function step(d) {
    idx.value = String(Math.min(Math.max(Number(idx.value) + d, 0), Math.max(shown.length - 1, 0)));
    show();
  }
  runSel.addEventListener('change', setRun);
  clsSel.addEventListener('change', refilter);
  sortSel.addEventListener('change', refilter);
  minSsim.addEventListener('input', refilter);
  idx.addEventListener('input', show);
  prev.addEventListener('click', function () { step(-1); });
  next.addEventListener('click', function () { step(1); });
  setRun();
  q('rx-noscript').hidden = true;
  root.setAttribute('data-rx-ready', '1');
})();
"""

_SORTS_JS = json.dumps({k: [label, desc] for k, (label, desc) in SORT_KEYS.items()})
# the fields of the information table, refilled from each item's text as the reader moves
_FIELDS_JS = json.dumps(re.findall(r"\{([a-z-]+)\}", "".join(cell for _, cell in INFO_ROWS)))

#: Hash of the page's CSS and script; the root element carries it (``data-rx-version``) so a
#: test can tell a page built with an older explorer.
VERSION = hashlib.sha1((_CSS + _JS + _SORTS_JS + _FIELDS_JS).encode()).hexdigest()[:12]


def _round(v: float | None, digits: int = 6) -> float | None:
    if v is None:
        return None
    v = float(v)
    if not math.isfinite(v) or v == 0:
        return v if math.isfinite(v) else None
    return round(v, digits - 1 - int(math.floor(math.log10(abs(v)))))


def _runs(runs) -> list[tuple[str, list[PairItem]]]:
    if isinstance(runs, Mapping):
        out = [(str(name), list(items)) for name, items in runs.items()]
    elif isinstance(runs, Sequence) and not isinstance(runs, str):
        out = [("pairs", list(runs))]
    else:
        raise TypeError("runs must be a list of PairItem or a dict name -> list of PairItem")
    if not out:
        raise ValueError("no runs to show")
    for name, items in out:
        if not items:
            raise ValueError(f"run {name!r} has no items to show")
        bad = [type(it).__name__ for it in items if not isinstance(it, PairItem)]
        if bad:
            raise TypeError(f"run {name!r} holds {bad[0]}, not recon.widgets.PairItem "
                            "(build items with recon.widgets.pair_items)")
    return out


def explorer_data(runs, max_items: int = MAX_ITEMS, good_ssim: float = 0.4,
                  height_px: int = 200) -> dict:
    """The JSON-serialisable data an explorer page holds.

    Args:
        runs: a list of :class:`~recon.widgets.PairItem` (one run) or a dict
            ``name -> list of PairItem`` (a run selector appears).
        max_items: the bound on items per run: the best by SSIM are kept.
        good_ssim: the threshold called good (the paper's 0.4).
        height_px: the displayed height of a pair image; the browser enlarges the native
            PNG by the integer factor nearest to it (pixelated, not blurred).
    Returns:
        ``{"runs": [{"name", "n_total", "good_ssim", "width", "height", "zoom", "has_lam",
        "has_margin", "classes", "items": [numbers + text + png_base64, ...]}]}``; numbers
        rounded to 6 significant digits, ``text`` as every view writes them
        (:meth:`recon.widgets.PairItem.text`), PNGs at native resolution.
    """
    if int(max_items) != max_items or max_items < 1:
        raise ValueError(f"max_items must be a positive integer, got {max_items!r}")
    out = []
    for name, items in _runs(runs):
        best = filter_items(items, sort_by="ssim")[: int(max_items)]
        h, w = best[0].image.shape[:2]
        classes = classes_of(items)
        rows = []
        for it in best:
            row = it.numbers()
            for key in NUMBER_FORMATS:
                row[key] = _round(row[key])
            row["text"] = it.text(good_ssim)
            row["png_base64"] = base64.b64encode(png_bytes(it.image, 1)).decode("ascii")
            rows.append(row)
        out.append({
            "name": name, "n_total": len(items), "good_ssim": float(good_ssim),
            "width": int(w), "height": int(h), "zoom": max(1, round(height_px / h)),
            "has_lam": best[0].lam is not None, "has_margin": best[0].margin is not None,
            "classes": classes, "items": rows,
        })
    return {"runs": out}


def _json_for_script(obj) -> str:
    """JSON safe inside ``<script>``: no ``</`` or ``<!--`` sequences."""
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def explorer_html(runs, *, max_items: int = MAX_ITEMS, good_ssim: float = 0.4,
                  title: str | None = None, element_id: str | None = None,
                  height_px: int = 200) -> str:
    """The kernel-free explorer as an HTML fragment (show it with ``IPython.display.HTML``).

    Arguments as :func:`explorer_data`; ``title`` is shown above the controls, ``element_id``
    is the root element's id (default: derived from the data, so a rebuild gives the same
    page). The fragment holds its data, CSS and script; it loads nothing.
    """
    data = explorer_data(runs, max_items=max_items, good_ssim=good_ssim, height_px=height_px)
    blob = _json_for_script(data)
    if element_id is None:
        element_id = "rx-" + hashlib.sha1(blob.encode()).hexdigest()[:10]
    if not element_id or any(c.isspace() or c in "\"'<>&" for c in element_id):
        raise ValueError(f"element_id must be a non-empty id without spaces or quotes, "
                         f"got {element_id!r}")
    first_run = data["runs"][0]
    it = first_run["items"][0]
    e = html.escape
    run_opts = "".join(f'<option value="{i}">{e(r["name"])}</option>'
                       for i, r in enumerate(data["runs"]))
    hide_run = "" if len(data["runs"]) > 1 else " hidden"
    table = info_table(it["text"], it["ssim"] > good_ssim, "rx-info")
    zoom = first_run["zoom"]
    head = f'<div class="rx-title"><b>{e(title)}</b></div>' if title else ""
    script = (_JS.replace("__RX_ID__", json.dumps(element_id)).replace("__RX_SORTS__", _SORTS_JS)
              .replace("__RX_FIELDS__", _FIELDS_JS))
    return f"""<div class="recon-explorer" id="{element_id}" data-rx-version="{VERSION}">
<style>{_CSS}</style>
{head}<div class="rx-controls">
<label{hide_run}>data set <select class="rx-run">{run_opts}</select></label>
<label>class <select class="rx-class"><option>all classes</option></select></label>
<label>sort by <select class="rx-sort"><option value="ssim">SSIM, highest first</option>
</select></label>
<label>SSIM above <input type="range" class="rx-min-ssim" min="-1" max="1" step="0.05" value="-1">
<output class="rx-min-ssim-value">-1.00</output></label>
</div>
<div class="rx-nav"><button type="button" class="rx-prev">&#9664; previous</button>
<label>pair <input type="range" class="rx-index" min="0" max="0" value="0" step="1"></label>
<button type="button" class="rx-next">next &#9654;</button></div>
<div class="rx-status">best pair by SSIM of {e(first_run["name"])}</div>
<div class="rx-body">
<figure><img class="rx-image" alt="reconstruction above training image #{it["train_index"]}"
 src="data:image/png;base64,{it["png_base64"]}"
 style="width:{first_run["width"] * zoom}px;height:{first_run["height"] * zoom}px">
<figcaption>top: reconstruction (min-max scaled); bottom: training image</figcaption></figure>
{table}
</div>
<p class="rx-noscript"><small>The controls need JavaScript. In Jupyter, run the cell (a
notebook opened from disk is untrusted and runs no output scripts).</small></p>
<script type="application/json" class="rx-data">{blob}</script>
<script>{script}</script>
</div>"""


def explorer_page(runs, *, title: str = "Reconstruction explorer", **kwargs) -> str:
    """A standalone HTML document around :func:`explorer_html` (same keyword arguments)."""
    body = explorer_html(runs, title=title, **kwargs)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title></head>\n"
            f'<body style="font-family:system-ui,sans-serif">\n{body}\n</body></html>\n')


def write_explorer_page(path, runs, **kwargs) -> Path:
    """Write :func:`explorer_page` to ``path`` (UTF-8); returns the path. Opens in any browser,
    offline."""
    path = Path(path)
    path.write_text(explorer_page(runs, **kwargs), encoding="utf-8")
    return path

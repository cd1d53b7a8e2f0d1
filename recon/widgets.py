"""Browse reconstructions next to their training images: precomputed items, a static figure,
and an ipywidgets explorer.

Three layers, so that a kernel-free (static HTML) version needs only the first:

1. :func:`pair_items` turns an :class:`~recon.evaluate.Evaluation` (plus optional per-training-
   image multipliers, margins and class labels) into a list of :class:`PairItem`: the pair
   image (reconstruction above training image) as an array and as PNG bytes, and the numbers
   (SSIM, NCC, lambda, margin, class). :func:`filter_items` filters and sorts them. Both are
   pure functions without widgets; ``PairItem.to_dict`` is JSON-serialisable (PNG as base64).
2. :func:`plot_pair_cards` draws items as a static matplotlib figure, each pair captioned with
   :meth:`PairItem.caption`.
3. :func:`explore_pairs` wraps the same items and captions in ipywidgets (class filter, SSIM
   threshold, sort order, a slider over the pairs that pass). Callbacks run in the kernel
   (Jupyter, Colab); a renderer without a widget manager (the HTML book) shows
   :meth:`PairExplorer.snapshot_html` instead, a static, labelled snapshot.

The explorer that works without a kernel, in the built HTML book, is
:mod:`recon.html_explorer`: the same items as JSON inside one self-contained HTML fragment.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .evaluate import Evaluation

__all__ = [
    "SORT_KEYS",
    "NUMBER_FORMATS",
    "INFO_ROWS",
    "format_number",
    "verdict",
    "classes_of",
    "info_table",
    "PairItem",
    "pair_image",
    "png_bytes",
    "pair_items",
    "filter_items",
    "plot_pair_cards",
    "PairExplorer",
    "explore_pairs",
]

#: Sort orders of :func:`filter_items`: key -> (label, descending).
SORT_KEYS: dict[str, tuple[str, bool]] = {
    "ssim": ("SSIM, highest first", True),
    "ncc": ("NCC, highest first", True),
    "lam": ("lambda, largest first", True),
    "margin": ("margin, smallest first", False),
}

ALL_CLASSES = "all classes"

#: How a pair's numbers are written, in every view: the static figure, the widget and the
#: kernel-free explorer page (which receives the written text, not a formatter of its own).
NUMBER_FORMATS: dict[str, str] = {"ssim": ".3f", "ncc": ".3f", "lam": ".3g", "margin": ".3g"}
MISSING = "—"

#: The rows of a pair's information table: (label, HTML with ``{key}`` fields of
#: :meth:`PairItem.text`). Each field is wrapped in ``<span class="rx-KEY">`` so that the
#: explorer page can refill it as the reader moves through the pairs.
INFO_ROWS: tuple[tuple[str, str], ...] = (
    ("training image", "{train} (class {class-name})"),
    ("candidate", "{candidate}"),
    ("SSIM", "{ssim} {verdict}"),
    ("NCC", "{ncc}"),
    ("λ (multiplier)", "{lam}"),
    ("margin", "{margin}"),
    ("rank by SSIM", "{rank}"),
)


def format_number(key: str, value: float | None) -> str:
    """One of a pair's numbers (``ssim``, ``ncc``, ``lam``, ``margin``) as every view shows it;
    ``—`` when unknown."""
    return MISSING if value is None else format(value, NUMBER_FORMATS[key])


def verdict(ssim: float, good_ssim: float) -> str:
    """``"good (SSIM > 0.4)"`` or ``"not good"``: the follow-up work's threshold, applied."""
    return f"good (SSIM > {good_ssim:g})" if ssim > good_ssim else "not good"


def classes_of(items) -> list[str]:
    """The class names the items carry, in label order, each once."""
    names: list[str] = []
    for _label, name in sorted({(it.label, it.class_name) for it in items
                               if it.class_name is not None}):
        if name not in names:
            names.append(name)
    return names


# ---------------------------------------------------------------------------------------------
# Items: images and numbers, no widgets
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PairItem:
    """One matched pair, ready to show.

    rank: position in the evaluation (0 = highest SSIM). train_index / candidate_index: the
    training image and the candidate. lam / margin: the training image's multiplier and
    margin (None when not given). label / class_name: its original class (None when not
    given). image: ``(2H + gap, W, C)`` float array in [0, 1], reconstruction above training
    image. png: the same image enlarged ``scale`` times (nearest neighbour), as PNG bytes.
    """

    rank: int
    train_index: int
    candidate_index: int
    ssim: float
    ncc: float
    lam: float | None
    margin: float | None
    label: int | None
    class_name: str | None
    image: np.ndarray
    png: bytes

    def numbers(self) -> dict[str, float | int | str | None]:
        """The item's numbers (no images)."""
        return {"rank": self.rank, "train_index": self.train_index,
                "candidate_index": self.candidate_index, "ssim": self.ssim, "ncc": self.ncc,
                "lam": self.lam, "margin": self.margin, "label": self.label,
                "class_name": self.class_name}

    def text(self, good_ssim: float | None = None) -> dict[str, str]:
        """The item's numbers as every view writes them (:data:`NUMBER_FORMATS`), keyed as
        the fields of :data:`INFO_ROWS`; ``verdict`` is empty without ``good_ssim``."""
        return {
            "train": f"#{self.train_index}",
            "class-name": MISSING if self.class_name is None else self.class_name,
            "candidate": f"#{self.candidate_index}",
            **{k: format_number(k, getattr(self, k)) for k in NUMBER_FORMATS},
            "verdict": "" if good_ssim is None else verdict(self.ssim, good_ssim),
            "rank": str(self.rank),
        }

    def caption(self, lines: int = 2) -> str:
        """Short text for a figure panel, e.g. ``"SSIM 0.623  NCC 0.951\nλ 0.21  m 1.03"``."""
        t = self.text()
        first = f"SSIM {t['ssim']}  NCC {t['ncc']}"
        rest = [f"{sym} {t[k]}" for sym, k in (("λ", "lam"), ("m", "margin"))
                if getattr(self, k) is not None]
        if lines < 2 or not rest:
            return first
        return first + "\n" + "  ".join(rest)

    def to_dict(self) -> dict:
        """JSON-serialisable: the numbers plus ``png_base64`` (for a kernel-free page)."""
        return {**self.numbers(), "png_base64": base64.b64encode(self.png).decode("ascii")}


def pair_image(recon: torch.Tensor, original: torch.Tensor, gap: int = 1) -> np.ndarray:
    """Reconstruction above training image: ``(C, H, W)`` twice -> ``(2H + gap, W, C)``.

    Values are clipped to [0, 1]; the gap is white.
    """
    if recon.shape != original.shape or recon.dim() != 3:
        raise ValueError(
            f"recon and original must both be (C, H, W), got {tuple(recon.shape)} and "
            f"{tuple(original.shape)}"
        )
    a = recon.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy()
    b = original.detach().cpu().float().clamp(0, 1).permute(1, 2, 0).numpy()
    white = np.ones((gap, a.shape[1], a.shape[2]), dtype=np.float32)
    return np.concatenate([a, white, b], axis=0)


def png_bytes(image: np.ndarray, scale: int = 4) -> bytes:
    """``(H, W, C)`` (C = 1 or 3) or ``(H, W)`` in [0, 1] -> PNG bytes, enlarged ``scale``
    times with nearest-neighbour pixels (small images stay sharp in a browser)."""
    from PIL import Image  # a dependency of matplotlib

    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"image must be (H, W), (H, W, 1) or (H, W, 3), got {arr.shape}")
    arr = np.repeat(np.repeat(arr, int(scale), axis=0), int(scale), axis=1)
    u8 = (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="PNG")  # 2-D -> "L", (H, W, 3) -> "RGB"
    return buf.getvalue()


def _n_train(evaluation: Evaluation) -> int:
    top = int(evaluation.train_index.max()) + 1 if len(evaluation) else 0
    return max(int(evaluation.n_train), top)


def _per_train(values, name: str, n_train: int, dtype) -> np.ndarray | None:
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be a sequence of numbers, one per training image") from err
    if arr.ndim != 1 or arr.shape[0] != n_train:
        raise ValueError(
            f"{name} must hold one value per training image (n_train = {n_train}), "
            f"got shape {arr.shape}"
        )
    return arr


def _class_name_map(labels: np.ndarray | None, class_names) -> dict[int, str] | None:
    if labels is None:
        if class_names is not None:
            raise ValueError("class_names needs labels (one class label per training image)")
        return None
    present = sorted({int(v) for v in labels})
    if class_names is None:
        return {k: str(k) for k in present}
    if isinstance(class_names, Mapping):
        names = {int(k): str(v) for k, v in class_names.items()}
    elif isinstance(class_names, Sequence) and not isinstance(class_names, str):
        names = {i: str(v) for i, v in enumerate(class_names)}
    else:
        raise TypeError("class_names must be a sequence indexed by label or a dict label -> name")
    missing = [k for k in present if k not in names]
    if missing:
        raise ValueError(f"labels {missing} have no entry in class_names ({len(names)} names)")
    return names


def pair_items(
    evaluation: Evaluation,
    lam=None,
    margin=None,
    labels=None,
    class_names=None,
    *,
    scale: int = 4,
) -> list[PairItem]:
    """Precompute what the explorer shows: one :class:`PairItem` per matched pair, in the
    evaluation's order (SSIM descending).

    Args:
        evaluation: from :func:`recon.evaluate.evaluate` (either matching).
        lam, margin: ``(n_train,)`` per training image (e.g. ``kkt["lam"]``, ``kkt["margin"]``
            of :func:`recon.pipeline.trained`), indexed by training image, or None.
        labels: ``(n_train,)`` int original class of each training image (e.g.
            ``task.labels_train``), or None.
        class_names: names indexed by label (sequence or dict); None uses the label itself.
        scale: enlargement of the PNGs.
    Raises:
        TypeError: ``evaluation`` is not an :class:`Evaluation`.
        ValueError: no pairs, or a per-image array of the wrong length, or a label without a
            name.
    """
    if not isinstance(evaluation, Evaluation):
        raise TypeError(
            f"evaluation must be a recon.evaluate.Evaluation, got {type(evaluation).__name__}"
        )
    if len(evaluation) == 0:
        raise ValueError("the evaluation has no pairs to show")
    n_train = _n_train(evaluation)
    lam_a = _per_train(lam, "lam", n_train, np.float64)
    margin_a = _per_train(margin, "margin", n_train, np.float64)
    labels_a = _per_train(labels, "labels", n_train, np.int64)
    names = _class_name_map(labels_a, class_names)

    items = []
    for rank in range(len(evaluation)):
        t = int(evaluation.train_index[rank])
        img = pair_image(evaluation.recon[rank], evaluation.original[rank])
        label = None if labels_a is None else int(labels_a[t])
        items.append(PairItem(
            rank=rank,
            train_index=t,
            candidate_index=int(evaluation.candidate_index[rank]),
            ssim=float(evaluation.ssim[rank]),
            ncc=float(evaluation.ncc[rank]),
            lam=None if lam_a is None else float(lam_a[t]),
            margin=None if margin_a is None else float(margin_a[t]),
            label=label,
            class_name=None if label is None else names[label],
            image=img,
            png=png_bytes(img, scale),
        ))
    return items


def filter_items(
    items: Sequence[PairItem],
    class_name: str | None = None,
    min_ssim: float | None = None,
    sort_by: str = "ssim",
) -> list[PairItem]:
    """Items of class ``class_name`` (None or ``"all classes"``: all) with SSIM strictly above
    ``min_ssim`` (None: no threshold), sorted by ``sort_by`` (a key of :data:`SORT_KEYS`;
    ties keep the evaluation's order)."""
    if sort_by not in SORT_KEYS:
        raise ValueError(f"sort_by must be one of {sorted(SORT_KEYS)}, got {sort_by!r}")
    out = list(items)
    if out and sort_by in ("lam", "margin") and getattr(out[0], sort_by) is None:
        raise ValueError(f"cannot sort by {sort_by!r}: the items carry no {sort_by} values")
    if class_name is not None and class_name != ALL_CLASSES:
        known = {it.class_name for it in out}
        if class_name not in known:
            raise ValueError(f"unknown class {class_name!r}; the items have {sorted(known)}")
        out = [it for it in out if it.class_name == class_name]
    if min_ssim is not None:
        out = [it for it in out if it.ssim > min_ssim]
    descending = SORT_KEYS[sort_by][1]
    sign = -1.0 if descending else 1.0
    return sorted(out, key=lambda it: (sign * getattr(it, sort_by), it.rank))


# ---------------------------------------------------------------------------------------------
# Static figure
# ---------------------------------------------------------------------------------------------
def plot_pair_cards(
    items: Sequence[PairItem],
    ncols: int = 8,
    max_items: int = 16,
    title: str | None = None,
    good_ssim: float | None = 0.4,
):
    """Pairs as captioned cards: reconstruction above training image, SSIM / NCC / lambda /
    margin below (:meth:`PairItem.caption`), the class as the panel title. With ``good_ssim``
    the caption is green for SSIM above it and red otherwise. Returns the figure."""
    import matplotlib.pyplot as plt

    items = list(items)[:max_items]
    if not items:
        raise ValueError("no items to plot")
    ncols = min(ncols, len(items))
    nrows = math.ceil(len(items) / ncols)
    lines = 2 if any(it.lam is not None or it.margin is not None for it in items) else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.35 * ncols, (2.5 + 0.25 * lines) * nrows),
                             squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, it in zip(axes.flat, items):
        img = it.image[..., 0] if it.image.shape[2] == 1 else it.image
        ax.set_axis_on()
        ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        head = f"#{it.train_index}" + (f" {it.class_name}" if it.class_name is not None else "")
        ax.set_title(head, fontsize=8, pad=2)
        color = "black"
        if good_ssim is not None:
            color = "tab:green" if it.ssim > good_ssim else "tab:red"
        # the caption as x label, so that tight_layout makes room for it
        ax.set_xlabel(it.caption(lines), fontsize=6.5, color=color, labelpad=2)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Widget
# ---------------------------------------------------------------------------------------------
def info_table(text: dict[str, str], good: bool | None = None, table_class: str = "") -> str:
    """A pair's information table (:data:`INFO_ROWS`) as HTML, filled with ``text``
    (:meth:`PairItem.text`); ``good`` colours the verdict. The widget and the explorer page
    both show this table."""
    e = html.escape

    def field(key: str) -> str:
        cls = f"rx-{key}"
        if key == "verdict" and good is not None:
            cls += " rx-good" if good else " rx-bad"
        return f'<span class="{cls}">{e(text[key])}</span>'

    rows = "".join(
        f"<tr><td style='padding-right:1em'><b>{label}</b></td><td>"
        + re.sub(r"\{([a-z-]+)\}", lambda m: field(m.group(1)), cell) + "</td></tr>"
        for label, cell in INFO_ROWS)
    attr = f' class="{table_class}"' if table_class else ""
    return f"<table{attr}>{rows}</table>"


def _info_html(it: PairItem, good_ssim: float) -> str:
    return info_table(it.text(good_ssim), it.ssim > good_ssim)


class PairExplorer:
    """The explorer built by :func:`explore_pairs`.

    ``widget`` is the ipywidgets box to display (the object itself displays as it in
    Jupyter). Controls: ``class_filter``, ``min_ssim``, ``sort_by``, ``index`` (slider over the
    pairs that pass), ``prev_button`` / ``next_button``; outputs: ``image`` (PNG of the current
    pair), ``info`` (its numbers), ``status``. ``items`` holds every pair, ``shown`` those that
    pass the filters in display order, ``current`` the pair on screen (None if none passes).
    """

    def __init__(self, items: Sequence[PairItem], good_ssim: float = 0.4,
                 title: str | None = None):
        import ipywidgets as w

        self.items = list(items)
        if not self.items:
            raise ValueError("no items to explore")
        self.good_ssim = float(good_ssim)
        first = self.items[0]
        classes = classes_of(self.items)
        sort_options = [(label, key) for key, (label, _) in SORT_KEYS.items()
                        if key not in ("lam", "margin") or getattr(first, key) is not None]
        style = {"description_width": "initial"}
        self.class_filter = w.Dropdown(options=[ALL_CLASSES, *classes], value=ALL_CLASSES,
                                       description="class", disabled=not classes, style=style)
        self.min_ssim = w.FloatSlider(value=-1.0, min=-1.0, max=1.0, step=0.05,
                                      description="SSIM above", continuous_update=False,
                                      readout_format=".2f", style=style)
        self.sort_by = w.Dropdown(options=sort_options, value="ssim", description="sort by",
                                  style=style)
        self.index = w.IntSlider(value=0, min=0, max=0, description="pair",
                                 continuous_update=True, style=style)
        self.prev_button = w.Button(description="◀ previous", layout=w.Layout(width="7.5em"))
        self.next_button = w.Button(description="next ▶", layout=w.Layout(width="7.5em"))
        h, wd = first.image.shape[:2]
        scale = max(1, round(200 / h))
        self.image = w.Image(format="png", value=first.png,
                             layout=w.Layout(width=f"{wd * scale}px", height=f"{h * scale}px"))
        self.info = w.HTML()
        self.status = w.HTML()
        self.shown: list[PairItem] = []
        self.current: PairItem | None = None
        self._busy = False

        for control in (self.class_filter, self.min_ssim, self.sort_by):
            control.observe(self._on_filter, names="value")
        self.index.observe(self._on_index, names="value")
        self.prev_button.on_click(lambda _: self.step(-1))
        self.next_button.on_click(lambda _: self.step(+1))

        head = [w.HTML(f"<b>{title}</b>")] if title else []
        self._head = head
        caption = w.HTML("<small>top: reconstruction (min-max scaled); bottom: training "
                         "image</small>")
        self.widget = w.VBox([
            *head,
            w.HBox([self.class_filter, self.sort_by]),
            self.min_ssim,
            w.HBox([self.prev_button, self.index, self.next_button]),
            self.status,
            w.HBox([w.VBox([self.image, caption]), self.info]),
        ])
        self._refilter()

    # -- state updates ------------------------------------------------------------------------
    def _refilter(self) -> None:
        self.shown = filter_items(self.items, self.class_filter.value, self.min_ssim.value,
                                  self.sort_by.value)
        self._busy = True
        try:
            self.index.value = 0
            self.index.max = max(len(self.shown) - 1, 0)
            self.index.disabled = len(self.shown) <= 1
        finally:
            self._busy = False
        self._show()

    def _show(self) -> None:
        n, total = len(self.shown), len(self.items)
        good = sum(it.ssim > self.good_ssim for it in self.shown)
        self.prev_button.disabled = self.index.value <= 0
        self.next_button.disabled = self.index.value >= n - 1
        if n == 0:
            self.current = None
            self.image.value = b""
            self.info.value = "<i>no pair passes the filters</i>"
            self.status.value = f"0 of {total} pairs pass the filters"
            return
        self.current = self.shown[self.index.value]
        self.image.value = self.current.png
        self.info.value = _info_html(self.current, self.good_ssim)
        self.status.value = (f"pair {self.index.value + 1} of {n} shown ({total} in all; "
                             f"{good} of the shown have SSIM &gt; {self.good_ssim:g})")

    def _on_filter(self, _change) -> None:
        self._refilter()

    def _on_index(self, _change) -> None:
        if not self._busy:
            self._show()

    def step(self, delta: int) -> None:
        """Move the index by ``delta`` within the shown pairs (clamped)."""
        if self.shown:
            self.index.value = min(max(self.index.value + delta, 0), len(self.shown) - 1)

    def snapshot_html(self) -> str:
        """The explorer's current state as static HTML (status, pair image, numbers), marked
        as a snapshot: what a page without a kernel shows in place of the widget."""
        note = ("<small><i>Snapshot of a kernel widget: its controls need a running Python "
                "kernel (Jupyter, Colab).</i></small>")
        if self.current is None:
            body = self.info.value
        else:
            h, wd = self.current.image.shape[:2]
            scale = max(1, round(200 / h))
            b64 = base64.b64encode(png_bytes(self.current.image, 1)).decode("ascii")
            img = (f'<img src="data:image/png;base64,{b64}" alt="reconstruction above '
                   f'training image #{self.current.train_index}" style="width:{wd * scale}px;'
                   f'height:{h * scale}px;image-rendering:pixelated;background:#fff">')
            body = (f'<div style="display:flex;gap:1.2em;align-items:flex-start">{img}'
                    f"{self.info.value}</div>")
        head = "".join(f"<div>{c.value}</div>" for c in self._head)
        return (f'<div class="recon-widget-snapshot">{head}<div>{self.status.value}</div>'
                f"{body}{note}</div>")

    def _repr_mimebundle_(self, **kwargs):
        """The widget for Jupyter and Colab, plus :meth:`snapshot_html` as ``text/html`` for
        renderers without a widget manager (the HTML book shows that)."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/html"] = self.snapshot_html()
        return bundle


def explore_pairs(
    evaluation: Evaluation,
    lam=None,
    margin=None,
    labels=None,
    class_names=None,
    *,
    good_ssim: float = 0.4,
    scale: int = 4,
    title: str | None = None,
) -> PairExplorer:
    """An ipywidgets browser of an evaluation's pairs: each reconstruction above its matched
    training image with SSIM, NCC, lambda and margin; filter by class and SSIM threshold, sort
    by SSIM, NCC, lambda or margin. Arguments as :func:`pair_items`; ``good_ssim`` is the
    threshold called good (the paper's 0.4). Display the returned object (or its ``.widget``).
    """
    items = pair_items(evaluation, lam, margin, labels, class_names, scale=scale)
    return PairExplorer(items, good_ssim=good_ssim, title=title)

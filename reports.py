"""Figures written beside a run's logs: learning curves and a confusion matrix readable at 101 classes.

Class names may be in any script (CJK, emoji, accents); matplotlib's default font draws boxes for glyphs it
lacks. `label_font` finds an installed font that has every character; when none does, figures show class indices
and a legend that spells the names with escapes for the missing characters (the CSV reports hold the real names).
"""

from __future__ import annotations

import functools
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from utils import atomic_write_bytes

# Fonts that claim every code point but draw placeholder boxes, so they never count as covering a text.
_PLACEHOLDER_FONTS = ("Last Resort",)


@functools.cache
def _charmap(path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    try:
        return frozenset(FT2Font(path).get_charmap())
    except Exception:  # an unreadable font file is a font without glyphs
        return frozenset()


def label_font(texts: Sequence[str]) -> str | None:
    """The family of an installed font with a glyph for every character of `texts`: matplotlib's default
    (sans-serif) first, then any other (e.g. Noto Sans CJK for Chinese or Japanese class names); None if none."""
    from matplotlib import font_manager, rcParams

    needed = {ord(c) for t in texts for c in str(t) if not c.isspace()}
    default = font_manager.findfont(font_manager.FontProperties(family=rcParams["font.family"]))
    if needed <= _charmap(default):
        return font_manager.FontProperties(fname=default).get_name()
    for entry in sorted(font_manager.fontManager.ttflist, key=lambda f: (f.name, f.fname)):
        if entry.name.startswith(_PLACEHOLDER_FONTS) or entry.style != "normal":
            continue
        if needed <= _charmap(entry.fname):
            return entry.name
    return None


def escape_missing(text: str, family: str | None = None) -> str:
    """`text` with the characters `family` (default: matplotlib's default font) cannot draw as \\uXXXX escapes."""
    from matplotlib import font_manager, rcParams

    props = font_manager.FontProperties(family=family or rcParams["font.family"])
    have = _charmap(font_manager.findfont(props))
    return "".join(c if c.isspace() or ord(c) in have else c.encode("unicode_escape").decode("ascii") for c in text)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int, tight: bool = True) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Train and val loss and top-1 per epoch, from the per-epoch records of metrics.jsonl."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for split, style in (("train", "-o"), ("val", "-s")):
        ax_loss.plot(epochs, [h.get(f"{split}_loss", np.nan) for h in history], style, ms=3, label=split)
        ax_acc.plot(epochs, [h.get(f"{split}_top1", np.nan) for h in history], style, ms=3, label=f"{split} top-1")
    if history and "val_mean_class_acc" in history[0]:
        ax_acc.plot(epochs, [h.get("val_mean_class_acc", np.nan) for h in history], ":", label="val mean class acc")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path, dpi=80, tight=False)  # rewritten every epoch: keep it cheap
    plt.close(fig)


def confusion_layout(num_classes: int) -> tuple[float, float]:
    """(figure side in inches, tick font size): every class labelled, ~0.2 inch per class past a dozen."""
    side = max(6.0, 2.5 + 0.2 * num_classes)
    font = float(np.clip(600.0 / max(num_classes, 1), 5.0, 10.0))
    return side, font


def plot_confusion(
    confusion: np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str = "",
    dpi: int | None = None,
) -> None:
    """Row-normalised confusion matrix (recall per true class), every class labelled on both axes.

    With 101 classes the figure grows to ~23 inches at a small font, so each label stays legible
    when zoomed instead of being thinned out by matplotlib.
    """
    plt = _pyplot()
    cm = np.asarray(confusion, dtype=np.float64)
    support = cm.sum(1, keepdims=True)
    norm = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
    n = len(class_names)
    side, font = confusion_layout(n)
    family = label_font([*map(str, class_names), title])
    labels = [str(c) for c in class_names] if family else [str(i) for i in range(n)]
    legend = [] if family else ["no installed font draws these", "class names; they are spelled", "with escapes:",
                                *(f"{i}: {escape_missing(str(c))}" for i, c in enumerate(class_names))]
    # margins sized from the longest label, set by hand: tight layout would draw the 2n tick labels twice more
    label_in = max((len(c) for c in labels), default=1) * font * 0.6 / 72 + 0.5
    legend_in = max((len(t) for t in legend), default=0) * font * 0.6 / 72 + (0.5 if legend else 0.0)
    width, height = side + label_in + 1.2 + legend_in, side + label_in + 0.6
    fig = plt.figure(figsize=(width, height))
    ax = fig.add_axes((label_in / width, label_in / height, side / width, side / height))
    cax = fig.add_axes(((label_in + side + 0.2) / width, label_in / height, 0.25 / width, side / height))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="auto")
    ticks = np.arange(n)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(labels, rotation=90, fontsize=font, family=family)
    ax.set_yticklabels(labels, fontsize=font, family=family)
    if legend:  # no installed font draws these names: indices on the axes, the names spelled out here
        fig.text((label_in + side + 1.2) / width, (label_in + side) / height, "\n".join(legend),
                 va="top", ha="left", fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 30:  # numbers in the cells only while they fit
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    colour = "white" if norm[i, j] > 0.5 else "black"
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=font * 0.8, color=colour)
    title = title or "confusion matrix (rows normalised)"
    ax.set_title(title if family else escape_missing(title), family=family)
    fig.colorbar(im, cax=cax)
    dpi = dpi or (150 if n > 50 else 120)  # 150: ~30 px per class row at 101 classes
    _save(fig, path, dpi=dpi, tight=False)
    plt.close(fig)

"""What a run writes for people to read: train_log.txt, metrics.jsonl, TensorBoard scalars and learning curves
(training); results, per-class, predictions, probe tables and a confusion matrix readable at 101 classes (test mode);
predict.py's attention and occlusion figures over a strip of the sampled frames.

Class names may be in any script (CJK, emoji, accents); matplotlib's default font draws boxes for glyphs it
lacks. `label_font` finds an installed font that has every character; when none does, figures show class indices
and a legend that spells the names with escapes for the missing characters (the CSV reports hold the real names).
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import logging
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from metrics import MetricAccumulator
from probes import NONE, summarise_probes
from utils import (
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    log_failure_summary,
    write_failure_report,
)

log = logging.getLogger("actionbert")

CURVES_EVERY_S = 30.0  # curves.png is redrawn at most this often (a redraw costs ~0.5 s) and at the end
MAX_THUMBS = 16  # thumbnails drawn in the strip; more frames are shown by every k-th one

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


# ----------------------------------------------------------------------------------------------- training


def add_file_log(path: Path, args: argparse.Namespace) -> logging.Handler:
    """train_log.txt: the full command and every argument, then all log lines of the run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger().addHandler(handler)
    log.info("command: %s", shlex.join([sys.executable, *sys.argv]))
    log.info("args: %s", json.dumps(vars(args), sort_keys=True))
    return handler


def write_metrics_jsonl(path: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in history))


class CurvePlotter:
    """curves.png, redrawn at most every CURVES_EVERY_S (a redraw dominates short epochs) and once at the end."""

    def __init__(self, path: Path) -> None:
        self.path, self.drawn_at, self.epochs = path, -math.inf, 0

    def update(self, history: list[dict[str, Any]], final: bool = False) -> None:
        due = self.epochs != len(history) if final else time.monotonic() - self.drawn_at >= CURVES_EVERY_S
        if history and due:
            plot_curves(history, self.path)
            self.drawn_at, self.epochs = time.monotonic(), len(history)


def write_epoch_outputs(run_dir: Path, state: Any, train_metrics: dict[str, float],
                        val_metrics: dict[str, float], writer: Any, curves: CurvePlotter) -> None:
    """Rank 0's files after an epoch: metrics.jsonl, curves.png (when due) and the TensorBoard scalars."""
    write_metrics_jsonl(run_dir / "metrics.jsonl", state.history)
    curves.update(state.history)
    for key in ("loss", "top1", "top5", "mean_class_acc"):
        writer.add_scalar(f"val/{key}", val_metrics[key], state.epoch)
    for key in ("loss", "top1"):
        writer.add_scalar(f"train/{key}", train_metrics[key], state.epoch)
    writer.flush()


def report_skipped(data: Any, run_dir: Path) -> None:
    """Videos a split had to leave out: failed_videos_<split>.json in the run folder and the log."""
    if data.skipped:
        report = run_dir / f"failed_videos_{data.split}.json"
        write_failure_report(report, data.skipped)
        log_failure_summary(data.skipped, report)


# ----------------------------------------------------------------------------------------------- test mode


def write_test_outputs(
    run_dir: Path,
    split: str,
    info: Any,
    acc: MetricAccumulator,
    outputs: list[tuple[int, list[int], list[float]]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """results_<split>.json, per_class_<split>.csv, predictions_<split>.csv and confusion_<split>.png.

    `info` gives the class names and each evaluated index's video name and label (any route's SplitData)."""
    names = info.class_names
    results = {"split": split, "labelled": True, **acc.compute(), "num_classes": len(names), **extra}
    atomic_write_json(run_dir / f"results_{split}.json", results)

    atomic_write_csv(run_dir / f"per_class_{split}.csv", acc.per_class(names))

    write_predictions(run_dir, split, info, outputs)
    plot_confusion(acc.confusion.numpy(), names, run_dir / f"confusion_{split}.png",
                   title=f"{split}: top-1 {results['top1']:.3f}, mean class acc {results['mean_class_acc']:.3f}")
    return results


def write_predictions(run_dir: Path, split: str, info: Any, outputs: list[tuple[int, list[int], list[float]]]) -> Path:
    """predictions_<split>.csv: per video its true label, the top-1 and whether it is right, then the top-k with
    probabilities. An unlabelled video (label -1) has true_label and correct empty: there is nothing to score."""
    names = info.class_names
    buf = io.StringIO()
    k = min(5, len(names))
    writer = csv.writer(buf)
    writer.writerow(["video", "true_label", "predicted", "correct"]
                    + [c for r in range(1, k + 1) for c in (f"top{r}", f"prob{r}")])
    for idx, classes, probs in sorted(outputs):
        true = int(info.labels[idx])
        tops = [v for c, pr in zip(classes, probs, strict=True) for v in (names[c], f"{pr:.6f}")]
        truth = (names[true], int(classes[0] == true)) if true >= 0 else ("", "")
        writer.writerow([info.names[idx], truth[0], names[classes[0]], truth[1], *tops])
    path = run_dir / f"predictions_{split}.csv"
    atomic_write_text(path, buf.getvalue())
    return path


def write_unlabelled_outputs(run_dir: Path, split: str, info: Any, outputs: list[tuple[int, list[int], list[float]]],
                             extra: dict[str, Any]) -> dict[str, Any]:
    """An unlabelled split (an official test split without labels): predictions_<split>.csv as for a labelled one
    (true_label and correct empty) and results_<split>.json saying `labelled: false`, without any accuracy (no
    per-class table, no confusion matrix)."""
    results = {"split": split, "labelled": False, "count": len(outputs), "num_classes": len(info.class_names),
               **extra}
    atomic_write_json(run_dir / f"results_{split}.json", results)
    write_predictions(run_dir, split, info, outputs)
    return results


def write_probe_outputs(run_dir: Path, split: str, class_names: list[str], accs: dict[str, MetricAccumulator],
                        extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """probes_<split>.json (each probe's and the unchanged run's metrics, with the probes' drops) and
    probes_per_class_<split>.csv (each class's accuracy under every probe, and its drop)."""
    summary, rows = summarise_probes({p: a.compute() for p, a in accs.items()},
                                     {p: a.per_class(class_names) for p, a in accs.items()})
    atomic_write_json(run_dir / f"probes_{split}.json", {"split": split, **extra, "probes": summary})
    atomic_write_csv(run_dir / f"probes_per_class_{split}.csv", rows)
    log.info("%s, order probes: top1 %.4f unchanged; %s", split, summary[NONE]["top1"],
             "; ".join(f"{p} {r['top1']:.4f} (drop {r['top1_drop']:+.4f})" for p, r in summary.items() if p != NONE))
    return summary


# ----------------------------------------------------------------------------------------------- predict.py


def _frame_strip_figure(n: int, thumbs: Sequence[np.ndarray], times: Sequence[float], panel_h: float, title: str):
    """A figure with the sampled frames in a strip over a panel with one column per frame, laid out in inches so
    thumbnails keep their aspect ratio and sit exactly over their column. Returns (fig, panel axes, colour-bar
    axes); the panel's x axis is the frame number, labelled with its time."""
    plt = _pyplot()
    cell = min(1.2, 16.0 / n)  # width of one frame's column: at most 16 inches of frames in all
    step = max(1, math.ceil(n / MAX_THUMBS))
    h, w = thumbs[0].shape[:2]
    thumb_h = min(2.5, step * cell * h / w)
    left, right, top, gap, bottom = 0.9, 1.2, 0.5, 0.1, 0.6
    fig_w, fig_h = left + n * cell + right, top + thumb_h + gap + panel_h + bottom
    fig = plt.figure(figsize=(fig_w, fig_h))
    ax_img = fig.add_axes((left / fig_w, (bottom + panel_h + gap) / fig_h, n * cell / fig_w, thumb_h / fig_h))
    ax_panel = fig.add_axes((left / fig_w, bottom / fig_h, n * cell / fig_w, panel_h / fig_h), sharex=ax_img)
    ax_bar = fig.add_axes(((left + n * cell + 0.15) / fig_w, bottom / fig_h, 0.15 / fig_w, panel_h / fig_h))
    for i in range(0, n, step):
        span = min(step, n - i)
        ax_img.imshow(thumbs[i], extent=(i - 0.5 + 0.03, i - 0.5 + span - 0.03, 0, 1), aspect="auto")
    ax_img.set_xlim(-0.5, n - 0.5)
    ax_img.set_ylim(0, 1)
    ax_img.set_yticks([])
    ax_img.tick_params(labelbottom=False)
    family = label_font([title])  # a class or file name in CJK or emoji: a font that has it, else escapes
    fig.suptitle(title if family else escape_missing(title), fontsize=10, y=1 - 0.15 / fig_h, va="top",
                 family=family)
    ticks = list(range(0, n, max(1, math.ceil(n / 20))))
    ax_panel.set_xticks(ticks, [f"{times[i]:.1f}" for i in ticks], fontsize=8)
    ax_panel.set_xlabel("time in the video (s)")
    return fig, ax_panel, ax_bar


def _save_figure(fig: Any, out_path: str | os.PathLike) -> None:
    _save(fig, out_path, dpi=100, tight=False)  # a short temporary name, whatever the video's name
    _pyplot().close(fig)


def plot_attention(
    out_path: str | os.PathLike,
    maps: np.ndarray,
    times: Sequence[float],
    thumbs: Sequence[np.ndarray],
    title: str,
) -> None:
    """A strip of the sampled frames above the [CLS] attention over time (one row per layer, then rollout)."""
    n = maps.shape[1]
    rows = [f"layer {i + 1}" for i in range(maps.shape[0] - 1)] + ["rollout"]
    fig, ax_att, ax_bar = _frame_strip_figure(n, thumbs, times, 0.3 * len(rows) + 0.1, title)
    im = ax_att.imshow(maps, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0,
                       extent=(-0.5, n - 0.5, len(rows) - 0.5, -0.5))
    ax_att.set_yticks(range(len(rows)), rows, fontsize=8)
    fig.colorbar(im, cax=ax_bar)
    ax_bar.set_ylabel("[CLS] attn.", fontsize=8)
    ax_bar.tick_params(labelsize=7)
    _save_figure(fig, out_path)


def plot_occlusion(
    out_path: str | os.PathLike,
    drops: np.ndarray,
    times: Sequence[float],
    thumbs: Sequence[np.ndarray],
    title: str,
) -> None:
    """A strip of the sampled frames above, per frame, the drop in the predicted class's probability when that
    frame is removed (up: the frame supported the prediction; down: the prediction is surer without it)."""
    n = len(drops)
    fig, ax, ax_side = _frame_strip_figure(n, thumbs, times, 1.6, title)
    values = np.nan_to_num(np.asarray(drops, dtype=np.float64))
    ax.bar(range(n), values, width=0.8, color=["tab:red" if v > 0 else "tab:blue" for v in values])
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_ylabel("prob. drop", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax_side.axis("off")
    _save_figure(fig, out_path)

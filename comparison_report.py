"""The figures and the HTML page of compare_runs.py: what a comparison of heads looks like, not only what it says.

Four figures, written beside comparison.md and linked from it, and one self-contained page that holds them inline:

- `comparison_top1.png`: each group's test top-1, its mean as a bar with the sample std over seeds/splits as an
  error bar, and every run as a dot (so n = 1 and n = 3 do not look alike);
- `comparison_probes.png`: each order probe's top-1 drop per group (mean ± std); order-blind heads sit at 0;
- `comparison_per_class.png`: the per-class top-1 difference between two groups (the pair given with
  `--figure_pair`, else the head that gains most over meanpool against meanpool), each class coloured by how much
  order matters to it: the first head's shuffle drop on it (from probes_per_class), or membership of the
  `order_pairs` class group when no probe was run; the caption names the classes where it matters most;
- `comparison_curves.png`: the validation top-1 of every run per epoch on one plot, one colour per group;
- `comparison.html`: the Markdown report as HTML with the figures inline as data URIs (opens offline, mails
  as one file).

Only compare_runs.py calls this module; matplotlib loads when the first figure is drawn.
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reports import _pyplot, _save

ORDER_CLASSES_SHOWN = 0.25  # the share of classes (at least 1) marked as those where order matters most
MAX_LEGEND_RUNS = 24  # curves: past this many runs the legend names groups, not runs


@dataclass
class RunCurves:
    """What the figures need of one run: its group, its validation curve and its per-class results."""

    name: str
    group: str
    epochs: list[int]
    val_top1: list[float]
    class_acc: dict[str, float] = field(default_factory=dict)  # class -> test top-1, from predictions_<split>.csv
    class_shuffle_drop: dict[str, float] = field(default_factory=dict)  # class -> drop, from probes_per_class


@dataclass
class Figure:
    path: Path
    title: str
    caption: str


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _colours(n: int) -> list[Any]:
    plt = _pyplot()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def plot_group_top1(group_rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]], path: Path) -> Figure:
    """Bars of each group's mean test top-1 with its std, and a dot per run."""
    plt = _pyplot()
    labels = [str(r["group"]) for r in group_rows]
    means = [r.get("test_top1") if _finite(r.get("test_top1")) else np.nan for r in group_rows]
    stds = [r.get("test_top1_std") if _finite(r.get("test_top1_std")) else 0.0 for r in group_rows]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(labels) + 2), 4))
    x = np.arange(len(labels))
    colours = _colours(len(labels))
    ax.bar(x, means, yerr=stds, capsize=4, color=colours, alpha=0.55, edgecolor="black", linewidth=0.6)
    rng = np.random.default_rng(0)  # jitter only: the same figure on every run
    for i, label in enumerate(labels):
        values = [float(r["test_top1"]) for r in runs if r.get("group") == label and _finite(r.get("test_top1"))]
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=18, color="black", zorder=3)
        if _finite(means[i]):
            ax.text(i, min(means[i] + stds[i] + 0.02, 1.06), f"{means[i]:.3f}\nn={len(values)}", ha="center",
                    va="bottom", fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 5 else 0, ha="right" if len(labels) > 5 else "center")
    ax.set(ylabel="test top-1", ylim=(0, 1.15), title="test top-1 per head (bar: mean ± std over seeds/splits; "
           "dots: runs)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    plt.close(fig)
    return Figure(path, "Test top-1 per head", "Mean over the group's seeds and official splits, the sample std as "
                  "the error bar, each run as a dot.")


def plot_probe_drops(group_rows: Sequence[dict[str, Any]], probes: Sequence[str], path: Path) -> Figure | None:
    """Grouped bars: per group, each probe's top-1 drop (mean ± std). None when no run was probed."""
    probes = [p for p in probes if any(_finite(r.get(f"{p}_drop")) for r in group_rows)]
    if not probes:
        return None
    plt = _pyplot()
    labels = [str(r["group"]) for r in group_rows]
    width = 0.8 / len(probes)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.35 * len(labels) * len(probes) + 2.5), 4))
    x = np.arange(len(labels))
    for k, (probe, colour) in enumerate(zip(probes, _colours(len(probes)), strict=True)):
        means = [r.get(f"{probe}_drop") if _finite(r.get(f"{probe}_drop")) else np.nan for r in group_rows]
        stds = [r.get(f"{probe}_drop_std") if _finite(r.get(f"{probe}_drop_std")) else 0.0 for r in group_rows]
        ax.bar(x - 0.4 + (k + 0.5) * width, means, width, yerr=stds, capsize=2, color=colour, label=probe)
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 5 else 0, ha="right" if len(labels) > 5 else "center")
    ax.set(ylabel="top-1 drop (unchanged frames − probe)",
           title="what each head loses when the frame order is changed (0: order-blind)")
    ax.legend(title="probe", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path, dpi=110)
    plt.close(fig)
    return Figure(path, "Order probes", "Top-1 drop under each probe (shuffle, reverse, static, half), mean ± std "
                  "over the group. An order-blind head (meanpool, attnpool without --positions, --positions none) "
                  "has no drop under shuffle and reverse; a head that uses order loses accuracy.")


def _mean_per_class(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
    classes = sorted({c for d in dicts for c in d})
    return {c: float(np.mean([d[c] for d in dicts if c in d])) for c in classes}


def order_signal(a_runs: Sequence[RunCurves], class_groups: dict[str, list[str]]) -> tuple[dict[str, float], str]:
    """Per class, how much order matters to it, and what that is: the first head's shuffle drop on the class
    (from probes_per_class, averaged over its runs), else membership of the `order_pairs` class group (1 or 0)."""
    drops = _mean_per_class([r.class_shuffle_drop for r in a_runs if r.class_shuffle_drop])
    if drops:
        return drops, "shuffle drop of the first head"
    if "order_pairs" in class_groups:
        return {c: 1.0 for c in class_groups["order_pairs"]}, "in the order_pairs class group"
    return {}, ""


def plot_per_class_difference(a: str, a_runs: Sequence[RunCurves], b: str, b_runs: Sequence[RunCurves],
                              class_groups: dict[str, list[str]], path: Path) -> Figure | None:
    """Horizontal bars: per class, top-1 of A minus top-1 of B (means over each side's runs), sorted, coloured by
    how much order matters to the class (`order_signal`); the classes it ranks highest are named in the caption."""
    acc_a = _mean_per_class([r.class_acc for r in a_runs])
    acc_b = _mean_per_class([r.class_acc for r in b_runs])
    classes = sorted(acc_a.keys() & acc_b.keys())
    if not classes:
        return None
    diff = {c: acc_a[c] - acc_b[c] for c in classes}
    classes.sort(key=lambda c: (diff[c], c))
    signal, how = order_signal(a_runs, class_groups)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, max(3.0, 0.22 * len(classes) + 1.5)))
    cmap = plt.get_cmap("Reds")
    colours = [cmap(0.25 + 0.75 * float(np.clip(signal.get(c, 0.0), 0.0, 1.0))) if signal else "tab:gray"
               for c in classes]
    ax.barh(np.arange(len(classes)), [diff[c] for c in classes], color=colours, edgecolor="black", linewidth=0.4)
    ax.set_yticks(np.arange(len(classes)))
    ax.set_yticklabels(classes, fontsize=float(np.clip(500.0 / len(classes), 5.0, 9.0)))
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set(xlabel=f"top-1 of {a} − top-1 of {b}", xlim=(-1.05, 1.05), title=f"per class: {a} vs {b}")
    ax.grid(axis="x", alpha=0.3)
    if signal:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        bar = fig.colorbar(ScalarMappable(Normalize(-1 / 3, 1.0), cmap), ax=ax, fraction=0.04, pad=0.02)
        bar.set_ticks([0.0, 0.5, 1.0])
        bar.set_label(f"{a}'s shuffle drop" if how.startswith("shuffle") else "order pair (1) or not (0)")
    fig.tight_layout()
    _save(fig, path, dpi=110)
    plt.close(fig)
    caption = f"Per-class test top-1 of {a} minus {b} (each side averaged over its runs), sorted."
    if signal:
        k = max(1, round(ORDER_CLASSES_SHOWN * len(classes)))
        top = [c for c in sorted(signal, key=lambda c: (-signal[c], c)) if c in diff and signal[c] > 0][:k]
        caption += (f" Colour: {how.replace('the first head', a)} (darker: order matters more)."
                    + (f" Where order matters most: {', '.join(f'{c} ({diff[c]:+.2f})' for c in top)}." if top
                       else ""))
    return Figure(path, f"Per class: {a} vs {b}", caption)


def plot_learning_curves(runs: Sequence[RunCurves], path: Path) -> Figure | None:
    """Validation top-1 per epoch of every run, one colour per group."""
    runs = [r for r in runs if r.epochs]
    if not runs:
        return None
    plt = _pyplot()
    groups = list(dict.fromkeys(r.group for r in runs))
    colour = dict(zip(groups, _colours(len(groups)), strict=True))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    named: set[str] = set()
    for run in runs:
        per_run = len(runs) <= MAX_LEGEND_RUNS
        label = run.name if per_run else (run.group if run.group not in named else None)
        named.add(run.group)
        ax.plot(run.epochs, run.val_top1, "-", marker="o", ms=2.5, lw=1.2, color=colour[run.group], label=label,
                alpha=0.85)
    ax.set(xlabel="epoch", ylabel="val top-1", ylim=(0, 1.02), title="validation top-1 of every run")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(runs) > 12 else 1, loc="lower right")
    fig.tight_layout()
    _save(fig, path, dpi=110)
    plt.close(fig)
    return Figure(path, "Learning curves", "Validation top-1 per epoch, from each run's metrics.jsonl; one colour "
                  "per group.")


def figures_markdown(figures: Sequence[Figure]) -> str:
    """The Figures section of comparison.md: each figure linked by its file name (they sit beside it)."""
    if not figures:
        return ""
    parts = [f"### {f.title}\n\n![{f.title}]({f.path.name})\n\n{f.caption}\n" for f in figures]
    return "\n## Figures\n\n" + "\n".join(parts)


# ----------------------------------------------------------------------------------------------- HTML

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #ddd; } figure { margin: 1.5em 0; } figcaption { color: #555; }
"""
# Set on <body> once every figure has decoded (a headless browser's --dump-dom shows it; the test reads it).
_LOADED_SCRIPT = """
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll("img.figure"));
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute("data-figures", imgs.length);
  document.body.setAttribute("data-figures-loaded", ok);
});
"""


def _inline(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _table(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split(" | ")]

    head, body = cells(lines[0]), [cells(line) for line in lines[2:]]
    out = ["<table>", "<tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join([*out, "</table>"])


def markdown_to_html(md: str, image: Callable[[str], str]) -> str:
    """The HTML of the Markdown compare_runs writes: headings, paragraphs, pipe tables and `![alt](file)` images
    (`image(file)` gives the src; captions follow their image). Not a general Markdown renderer."""
    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if m := re.match(r"^(#{1,6}) (.*)$", line):
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
        elif m := re.match(r"^!\[(.*)\]\((.*)\)$", line):
            i += 1
            caption = ""
            while i < len(lines) and not lines[i].strip():
                i += 1
            if i < len(lines) and not lines[i].startswith(("#", "|", "![")):
                caption, i = lines[i], i + 1
            out.append(f'<figure><img class="figure" alt="{html.escape(m.group(1))}" src="{image(m.group(2))}">'
                       f"<figcaption>{_inline(caption)}</figcaption></figure>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|", "![")):
                para.append(lines[i])
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


def html_page(title: str, md: str, folder: Path) -> str:
    """A self-contained page: `md` rendered, each linked PNG of `folder` inlined as a data URI."""
    def image(name: str) -> str:
        data = (folder / name).read_bytes()
        return "data:image/png;base64," + base64.b64encode(data).decode("ascii")

    body = markdown_to_html(md, image)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style><script>{_LOADED_SCRIPT}</script></head>\n<body>\n{body}\n</body></html>\n")

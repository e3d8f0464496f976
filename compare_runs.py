"""Compare every run of an experiment in one table: which head models time best on the same embeddings.

    python compare_runs.py EXPT_DIR/EXPT_NAME [--split test] [--class_groups demo/data/demo_classes.json]

Reads each run folder written by main.py (checkpoints/last.pth or best.pth, metrics.jsonl, results_<split>.json,
predictions_<split>.csv), prints a table and writes comparison.md and comparison.csv into the experiment folder.
`--class_groups` adds top-1 and mean class accuracy on named subsets of classes, computed from the predictions:
a JSON object {group: [class, ...]}, or make_demo_data.py's demo_classes.json, whose "order_pairs" (classes that
differ only in temporal order) and "appearance" lists become two groups.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from checkpoint import load_checkpoint
from utils import BadInputError, atomic_write_text, read_json, run_cli, setup_logging

log = logging.getLogger("actionbert")

COLUMNS = ("run", "head", "layers", "fps", "backbone", "best_val_top1", "test_top1", "test_top5",
           "test_mean_class_acc", "params", "s_per_epoch")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("expt_dir", help="an experiment folder (<expt_dir>/<expt_name>) holding run folders")
    p.add_argument("--split", default="test", help="which test-mode results to report (val or test)")
    p.add_argument("--class_groups", default=None,
                   help="JSON {group: [class names]} or demo_classes.json: adds per-group accuracy columns")
    p.add_argument("--out", default=None, help="where to write comparison.md/.csv (default: the experiment folder)")
    p.add_argument("--verbose", action="store_true")
    return p


def load_class_groups(path: str | Path) -> dict[str, list[str]]:
    """{group: [class names]} from a plain mapping or from demo_classes.json."""
    raw = read_json(path, "class groups file")
    if isinstance(raw, dict) and "order_pairs" in raw:
        groups = {"order_pairs": [c for pair in raw["order_pairs"] for c in pair]}
        if raw.get("appearance"):
            groups["appearance"] = list(raw["appearance"])
        return groups
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise BadInputError(f"{path}: expected a JSON object mapping a group name to a list of class names")
    return {str(k): [str(c) for c in v] for k, v in raw.items()}


def group_accuracy(predictions: list[dict[str, str]], classes: list[str]) -> dict[str, float | int]:
    """Top-1 and mean class accuracy over the videos whose true class is in `classes`."""
    wanted = set(classes)
    per_class: dict[str, list[int]] = {}
    for row in predictions:
        if row["true_label"] in wanted:
            per_class.setdefault(row["true_label"], []).append(int(row["true_label"] == row["predicted"]))
    hits = [h for v in per_class.values() for h in v]
    if not hits:
        return {"top1": float("nan"), "mean_class_acc": float("nan"), "count": 0}
    return {
        "top1": sum(hits) / len(hits),
        "mean_class_acc": sum(sum(v) / len(v) for v in per_class.values()) / len(per_class),
        "count": len(hits),
    }


def read_predictions(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _layers(config: dict[str, Any]) -> Any:
    enc = config.get("encoder_config") or {}
    return enc.get("num_hidden_layers", config.get("num_layers", "-"))


def summarise_run(run_dir: Path, split: str, groups: dict[str, list[str]]) -> dict[str, Any] | None:
    """One table row for a run folder, or None when it holds no checkpoint."""
    ckpt_path = next((p for p in (run_dir / "checkpoints" / "last.pth", run_dir / "checkpoints" / "best.pth")
                      if p.is_file()), None)
    if ckpt_path is None:
        return None
    ckpt = load_checkpoint(ckpt_path)
    info = ckpt.get("data_info", {})
    history = []
    if (run_dir / "metrics.jsonl").is_file():
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val_top1 = [h["val_top1"] for h in history if "val_top1" in h]
    times = [h["epoch_time_s"] for h in history if "epoch_time_s" in h]
    row: dict[str, Any] = {
        "run": run_dir.name,
        "head": ckpt["model_name"],
        "layers": _layers(ckpt["model_config"]),
        "fps": info.get("fps"),
        "backbone": f"{info.get('backbone')}/{info.get('weights')}",
        "best_val_top1": max(val_top1) if val_top1 else ckpt.get("best_metric"),
        "params": ckpt.get("num_params"),
        "s_per_epoch": sum(times) / len(times) if times else None,
    }
    results_path = run_dir / f"results_{split}.json"
    if results_path.is_file():
        results = read_json(results_path, "results file")
        row.update(test_top1=results.get("top1"), test_top5=results.get("top5"),
                   test_mean_class_acc=results.get("mean_class_acc"))
    pred_path = run_dir / f"predictions_{split}.csv"
    if groups and pred_path.is_file():
        predictions = read_predictions(pred_path)
        for name, classes in groups.items():
            acc = group_accuracy(predictions, classes)
            row[f"{name}_top1"] = acc["top1"]
            row[f"{name}_mean_class_acc"] = acc["mean_class_acc"]
    return row


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if value != value else f"{value:.3f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value / 1e6:.2f}M"
    return str(value)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def compare(expt_dir: Path, split: str, groups: dict[str, list[str]]) -> tuple[list[dict[str, Any]], list[str]]:
    if not expt_dir.is_dir():
        raise BadInputError(f"experiment folder not found: {expt_dir}")
    rows = [r for d in sorted(p for p in expt_dir.iterdir() if p.is_dir())
            if (r := summarise_run(d, split, groups)) is not None]
    if not rows:
        raise BadInputError(f"no runs with checkpoints under {expt_dir} (expected <run>/checkpoints/last.pth)")
    columns = list(COLUMNS)
    for name in groups:
        columns += [f"{name}_top1", f"{name}_mean_class_acc"]
    return rows, columns


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    expt_dir = Path(args.expt_dir)
    groups = load_class_groups(args.class_groups) if args.class_groups else {}
    rows, columns = compare(expt_dir, args.split, groups)
    table = format_table(rows, columns)
    print(table, end="")
    out = Path(args.out) if args.out else expt_dir
    atomic_write_text(out / "comparison.md", f"# {expt_dir.name}: {args.split} split\n\n" + table)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "comparison.csv", buf.getvalue())
    log.info("wrote %s and %s", out / "comparison.md", out / "comparison.csv")
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())

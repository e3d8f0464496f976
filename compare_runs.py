"""Compare the runs of an experiment: which head models time best, by how much, and whether the gap is real.

    python compare_runs.py EXPT_DIR/EXPT_NAME [--split test] [--class_groups demo/data/demo_classes.json]
    python compare_runs.py EXPT_DIR/EXPT_NAME --pair bert meanpool      # two runs or groups of the experiment
    python compare_runs.py --pair RUN_DIR_A RUN_DIR_B                     # two run folders anywhere

Reads each run folder written by main.py (checkpoints/last.pth or best.pth, metrics.jsonl, results_<split>.json,
predictions_<split>.csv and, after `main.py --mode test --probes ...`, probes_<split>.json and
probes_per_class_<split>.csv). Writes into the experiment folder:

- comparison.md: the tables below and the figures; comparison.csv: one row per run; comparison_groups.csv: one row
  per group; comparison_pairs.csv: one row per paired test; comparison_*.png: the figures (test top-1 per head with
  its spread, each probe's drop per head, the per-class difference of a pair of heads, every run's learning curve;
  see comparison_report.py); comparison.html: all of it as one self-contained page (`--no_figures`: tables only).
- Runs: top-1 with each order probe's top-1 drop beside it (`shuffle_drop`: how much accuracy the head loses when
  the frames are shuffled), top-5, mean class accuracy. `--class_groups` adds top-1 and mean class accuracy on
  named subsets of classes (from the predictions) and, for the probes in `--group_probes`, their drop on the
  subset (from the per-class probe results): a JSON object {group: [class, ...]}, or make_demo_data.py's
  demo_classes.json, whose "order_pairs" and "appearance" lists become two groups.
- Groups: runs whose settings differ only in --seed and/or in the official split id (recorded by stage 1 and
  carried into the checkpoint's data_info) form a group; every metric and probe column is reported as
  mean ± std (sample std) with n. Printed instead of the run table when a group has more than one run.
- Paired tests (stats.py): each group against the `meanpool` group (`e2e_meanpool` for e2e heads) of the same
  data, or the two runs/groups of `--pair`: on the same test videos, joined by video name, the top-1 difference
  with a seeded bootstrap 95% CI and the exact McNemar p-value. Runs of two groups are matched by official split
  and seed (in seed order where the seeds differ); for several matched run pairs p is the intersection-union p
  (the largest per-pair McNemar p when every pair's difference has the same sign, else 1), and `p_mean` a t-test of
  the mean per-pair difference; see stats.grouped_paired_difference.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

import comparison_report
from checkpoint import Checkpoint, read_checkpoint
from probes import PROBE_NAMES
from routes import route_for
from stats import BOOTSTRAP_SAMPLES, PairedResult, format_p, grouped_paired_difference, mean_std
from utils import (
    BadInputError,
    atomic_write_csv,
    atomic_write_text,
    check_writable_dir,
    nonnegative_int,
    positive_int,
    read_json,
    run_cli,
    setup_logging,
)

log = logging.getLogger("actionbert")

RUN_COLUMNS = ("run", "head", "layers", "fps", "backbone", "seed", "split_id", "best_val_top1", "test_top1")
AFTER_PROBES = ("test_top5", "test_mean_class_acc")
TAIL_COLUMNS = ("params", "s_per_epoch", "infer_fps")
GROUP_COLUMNS = ("group", "head", "n", "seeds", "splits")
PAIR_COLUMNS = ("a", "b", "split", "units", "videos", "a_top1", "b_top1", "diff", "ci_low", "ci_high", "a_only",
                "b_only", "p", "p_test", "p_mean")
REFERENCE_HEAD = "meanpool"
# data_info keys that differ between the official splits of one dataset, not between settings: whatever says which
# videos a split holds (its id, the hash of its names and labels, of its frame plan) or follows from them (the
# longest video, how many were subsampled or lost frames).
SPLIT_SPECIFIC = frozenset({"split_id", "videos_sha256", "plan_sha256", "max_len", "subsampled_videos",
                            "skipped_frames"})


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("expt_dir", nargs="?", default=None,
                   help="an experiment folder (<expt_dir>/<expt_name>) holding run folders")
    p.add_argument("--split", default="test", help="which test-mode results to report (val or test)")
    p.add_argument("--class_groups", default=None,
                   help="JSON {group: [class names]} or demo_classes.json: adds per-group accuracy columns")
    p.add_argument("--group_probes", nargs="*", default=["shuffle"], choices=PROBE_NAMES, metavar="PROBE",
                   help="probes whose drop is shown per class group (needs --class_groups)")
    p.add_argument("--pair", nargs=2, metavar=("A", "B"), default=None,
                   help="compare A with B on the same videos: run folders, or run or group names of EXPT_DIR")
    p.add_argument("--bootstrap_samples", type=positive_int, default=BOOTSTRAP_SAMPLES)
    p.add_argument("--bootstrap_seed", type=nonnegative_int, default=0, help="seed of the bootstrap (reruns agree)")
    p.add_argument("--out", default=None, help="where to write the comparison files (default: the experiment folder)")
    p.add_argument("--figure_pair", nargs=2, metavar=("A", "B"), default=None,
                   help="the two groups or runs of the per-class figure (default: the head that gains most over "
                        "meanpool, against meanpool)")
    p.add_argument("--no_figures", action="store_true", help="write the tables only (no PNG figures, no HTML page)")
    p.add_argument("--verbose", action="store_true")
    return p


# ----------------------------------------------------------------------------------------------- reading runs


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


def class_hits(predictions: list[dict[str, str]], classes: set[str] | None = None) -> dict[str, list[int]]:
    """true class -> 1/0 per video (top-1 right or not), over the classes in `classes` (all when None)."""
    per_class: dict[str, list[int]] = {}
    for row in predictions:
        if classes is None or row["true_label"] in classes:
            per_class.setdefault(row["true_label"], []).append(int(row["true_label"] == row["predicted"]))
    return per_class


def group_accuracy(predictions: list[dict[str, str]], classes: list[str]) -> dict[str, float | int]:
    """Top-1 and mean class accuracy over the videos whose true class is in `classes`."""
    per_class = class_hits(predictions, set(classes))
    hits = [h for v in per_class.values() for h in v]
    if not hits:
        return {"top1": float("nan"), "mean_class_acc": float("nan"), "count": 0}
    return {
        "top1": sum(hits) / len(hits),
        "mean_class_acc": sum(sum(v) / len(v) for v in per_class.values()) / len(per_class),
        "count": len(hits),
    }


def group_probe_drop(per_class: list[dict[str, str]], classes: list[str], probe: str) -> float:
    """Top-1 drop under `probe` over the videos of `classes`, from probes_per_class_<split>.csv's rows."""
    wanted = set(classes)
    rows = [r for r in per_class if r["class_name"] in wanted and int(r["count"]) > 0]
    if not rows or probe not in rows[0]:
        return float("nan")
    count = sum(int(r["count"]) for r in rows)
    none = sum(float(r["none"]) * int(r["count"]) for r in rows) / count
    return none - sum(float(r[probe]) * int(r["count"]) for r in rows) / count


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))



def _layers(config: dict[str, Any]) -> Any:
    enc = config.get("encoder_config") or {}
    return enc.get("num_hidden_layers", config.get("num_layers", "-"))


def settings_key(ckpt: Checkpoint) -> str:
    """What a run learned from, except its seed and its official split: model, its config, the training arguments
    that change results (`RunSettings.learned_from`), and how the data was made. Runs with equal keys are repeats of
    one experiment."""
    data = {k: v for k, v in ckpt.data.info.items() if k not in SPLIT_SPECIFIC}
    return json.dumps({"model": ckpt.model_name, "config": ckpt.model.config, "args": ckpt.settings.learned_from(),
                       "data": data}, sort_keys=True, default=str)


def data_key(ckpt: Checkpoint) -> str:
    data = {k: v for k, v in ckpt.data.info.items() if k not in SPLIT_SPECIFIC}
    return json.dumps(data, sort_keys=True, default=str)


@dataclass
class Run:
    """One run folder: its table row and what grouping and pairing need."""

    path: Path
    row: dict[str, Any]
    head: str
    seed: int | None
    split_id: int | None
    key: str
    data: str
    predictions: Path | None = None
    group: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl's per-epoch records
    per_class_probes: Path | None = None  # probes_per_class_<split>.csv

    @property
    def name(self) -> str:
        return self.path.name


def summarise_run(run_dir: Path, split: str, groups: dict[str, list[str]],
                  group_probes: list[str] | tuple[str, ...] = ("shuffle",)) -> Run | None:
    """One run folder's row and identity, or None when it holds no checkpoint."""
    ckpt_path = next((p for p in (run_dir / "checkpoints" / "last.pth", run_dir / "checkpoints" / "best.pth")
                      if p.is_file()), None)
    if ckpt_path is None:
        return None
    ckpt = read_checkpoint(ckpt_path)
    info, args = ckpt.data, ckpt.settings
    history = []
    if (run_dir / "metrics.jsonl").is_file():
        history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val_top1 = [h["val_top1"] for h in history if "val_top1" in h]
    times = [h["epoch_time_s"] for h in history if "epoch_time_s" in h]
    seed, split_id = args.get("seed"), info.get("split_id")
    row: dict[str, Any] = {
        "run": run_dir.name,
        "head": ckpt.model_name,
        "layers": _layers(ckpt.model.config),
        "fps": info.get("fps"),
        "backbone": f"{info.get('backbone')}/{info.get('weights')}",
        "seed": seed,
        "split_id": split_id,
        "best_val_top1": max(val_top1) if val_top1 else (ckpt.training.best_metric if ckpt.training else None),
        "params": ckpt.num_params,
        "s_per_epoch": sum(times) / len(times) if times else None,
    }
    results_path = run_dir / f"results_{split}.json"
    labelled = True
    if results_path.is_file():
        results = read_json(results_path, "results file")
        # an unlabelled split (an official test split without labels) has predictions but nothing to score or pair
        labelled = results.get("labelled", True) is not False
        row.update(test_top1=results.get("top1"), test_top5=results.get("top5"),
                   test_mean_class_acc=results.get("mean_class_acc"), infer_fps=results.get("infer_frames_per_s"))
    probes_path = run_dir / f"probes_{split}.json"
    if probes_path.is_file():
        probes = read_json(probes_path, "probe results").get("probes", {})
        for probe, result in probes.items():
            if probe != "none" and isinstance(result, dict) and "top1_drop" in result:
                row[f"{probe}_drop"] = result["top1_drop"]
    pred_path: Path | None = run_dir / f"predictions_{split}.csv"
    if not labelled or not pred_path.is_file():
        if not labelled:
            log.info("%s: split %s is unlabelled; its predictions are left out of the comparison", run_dir, split)
        pred_path = None  # neither grouped nor paired
    per_class_path = run_dir / f"probes_per_class_{split}.csv"
    per_class = read_csv_rows(per_class_path) if groups and per_class_path.is_file() else []
    if groups and pred_path is not None:
        predictions = read_csv_rows(pred_path)
        for name, classes in groups.items():
            acc = group_accuracy(predictions, classes)
            row[f"{name}_top1"] = acc["top1"]
            row[f"{name}_mean_class_acc"] = acc["mean_class_acc"]
            for probe in group_probes if per_class else ():
                row[f"{name}_{probe}_drop"] = group_probe_drop(per_class, classes, probe)
    return Run(run_dir, row, ckpt.model_name, None if seed is None else int(seed),
               None if split_id is None else int(split_id), settings_key(ckpt), data_key(ckpt),
               pred_path, history=history,
               per_class_probes=per_class_path if per_class_path.is_file() else None)


def find_runs(expt_dir: Path, split: str, groups: dict[str, list[str]], group_probes: list[str]) -> list[Run]:
    if not expt_dir.is_dir():
        raise BadInputError(f"experiment folder not found: {expt_dir}")
    folders = sorted(p for p in expt_dir.iterdir() if p.is_dir())
    runs = [r for d in tqdm(folders, desc="reading runs", unit="run", leave=False, disable=len(folders) < 10)
            if (r := summarise_run(d, split, groups, group_probes)) is not None]
    if not runs:
        raise BadInputError(f"no runs with checkpoints under {expt_dir} (expected <run>/checkpoints/last.pth)")
    return runs


# ----------------------------------------------------------------------------------------------- groups


def group_label(names: list[str]) -> str:
    """A group's name: its run name, or the common start of its runs' names without a trailing seed/split part
    (bert_s0, bert_s1 -> bert; bert4_split1, bert4_split2 -> bert4)."""
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(names)
    return re.sub(r"(?:[_\-.]+(?:seed|split|s))?[_\-.]*$", "", prefix)


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """{label: runs} for runs whose settings differ only in seed and official split, in first-seen order; sets
    each run's `.group`."""
    by_key: dict[str, list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.key, []).append(run)
    out: dict[str, list[Run]] = {}
    for members in by_key.values():
        label = group_label([m.name for m in members]) or members[0].head
        base, k = label, 2
        while label in out:
            label, k = f"{base}#{k}", k + 1
        out[label] = members
        for m in members:
            m.group = label
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_columns(columns: list[str]) -> list[str]:
    """The columns of the run table averaged over a group."""
    skip = {"run", "head", "layers", "fps", "backbone", "seed", "split_id"}
    return [c for c in columns if c not in skip]


def summarise_group(label: str, members: list[Run], metrics: list[str]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "group": label,
        "head": members[0].head,
        "n": len(members),
        "seeds": " ".join(map(str, sorted({m.seed for m in members if m.seed is not None}))) or "-",
        "splits": " ".join(map(str, sorted({m.split_id for m in members if m.split_id is not None}))) or "-",
    }
    for col in metrics:
        values = [m.row.get(col) for m in members]
        values = [float(v) for v in values if _is_number(v)]
        mean, std, n = mean_std(values)
        row[col], row[f"{col}_std"], row[f"{col}_n"] = (mean if n else None), std, n
    return row


# ----------------------------------------------------------------------------------------------- pairing


def prediction_rows(path: Path) -> list[dict[str, str]]:
    """The rows of predictions_<split>.csv, checked: its columns, and one row per video. A video named twice is
    refused: which row would count is a guess, and the paired test would silently lose the other."""
    rows = read_csv_rows(path)
    if rows and not {"video", "correct"} <= set(rows[0]):
        raise BadInputError(f"{path}: expected columns video and correct (main.py --mode test's predictions file)")
    unscored = sum(1 for r in rows if not (r["correct"] or "").strip())
    if unscored:
        raise BadInputError(f"{path}: {unscored} of {len(rows)} videos have no label (an unlabelled split's "
                            "predictions): there is no accuracy to compare; compare runs on a labelled split")
    seen: set[str] = set()
    repeated: dict[str, int] = {}
    for r in rows:
        if r["video"] in seen:
            repeated[r["video"]] = repeated.get(r["video"], 1) + 1
        seen.add(r["video"])
    if repeated:
        first = ", ".join(f"{v} ({n} rows)" for v, n in list(repeated.items())[:5])
        raise BadInputError(f"{path}: {len(repeated)} video name(s) appear more than once ({first}"
                            + (", ..." if len(repeated) > 5 else "") + f"); {len(rows)} rows for {len(seen)} videos. "
                            "Each video must have one row: rerun main.py --mode test for this run")
    return rows


def correctness(path: Path) -> dict[str, bool]:
    """video -> whether the run's top-1 prediction is right (prediction_rows' checks)."""
    return {r["video"]: r["correct"].strip() == "1" for r in prediction_rows(path)}


def match_units(a: list[Run], b: list[Run]) -> list[tuple[Run, Run]]:
    """Runs of A and B tested on the same videos: the same official split, the same seed where both have it,
    the remaining runs of a split in seed order."""
    pairs = []
    splits = sorted({r.split_id for r in a} & {r.split_id for r in b}, key=lambda s: (s is None, s))
    for split_id in splits:
        ra = sorted((r for r in a if r.split_id == split_id), key=lambda r: (r.seed is None, r.seed, r.name))
        rb = sorted((r for r in b if r.split_id == split_id), key=lambda r: (r.seed is None, r.seed, r.name))
        common = [s for s in dict.fromkeys(r.seed for r in ra) if s in {r.seed for r in rb}]
        for seed in common:
            x = next(r for r in ra if r.seed == seed)
            y = next(r for r in rb if r.seed == seed)
            pairs.append((x, y))
            ra.remove(x)
            rb.remove(y)
        pairs += list(zip(ra, rb, strict=False))
    return pairs


@dataclass
class Pairing:
    a: str
    b: str
    result: PairedResult
    a_top1: float
    b_top1: float
    splits: list[int | None] = field(default_factory=list)
    units: list[tuple[str, str]] = field(default_factory=list)


def paired_test(a_label: str, a: list[Run], b_label: str, b: list[Run], seed: int = 0,
                samples: int = BOOTSTRAP_SAMPLES) -> Pairing | None:
    """A vs B on the videos both were tested on; None (with a warning) when no run pair shares test videos."""
    units, names, top_a, top_b, splits = [], [], [], [], []
    for x, y in match_units(a, b):
        if x.predictions is None or y.predictions is None:
            log.warning("%s vs %s: no predictions file in %s; run main.py --mode test first", x.name, y.name,
                        x.path if x.predictions is None else y.path)
            continue
        cx, cy = correctness(x.predictions), correctness(y.predictions)
        videos = sorted(cx.keys() & cy.keys())
        if not videos:
            log.warning("%s and %s share no test video; not paired", x.path, y.path)
            continue
        if len(videos) < max(len(cx), len(cy)):
            log.warning("%s vs %s: paired on the %d videos both were tested on (%d and %d tested)", x.name, y.name,
                        len(videos), len(cx), len(cy))
        ca, cb = np.array([cx[v] for v in videos]), np.array([cy[v] for v in videos])
        units.append((ca, cb))
        names.append((x.name, y.name))
        top_a.append(float(ca.mean()))
        top_b.append(float(cb.mean()))
        splits.append(x.split_id)
    if not units:
        return None
    result = grouped_paired_difference(units, seed=seed, samples=samples)
    return Pairing(a_label, b_label, result, float(np.mean(top_a)), float(np.mean(top_b)), splits, names)


def reference_pairings(groups: dict[str, list[Run]], seed: int, samples: int) -> list[Pairing]:
    """Every group against the meanpool group of the same data (the one with the most matched runs)."""
    out = []
    for label, members in groups.items():
        head = members[0].head
        ref_head = route_for(head).model_name(REFERENCE_HEAD)  # of the same route (e2e_meanpool for e2e heads)
        if head == ref_head:
            continue
        candidates = [(lab, m) for lab, m in groups.items() if m[0].head == ref_head and m[0].data == members[0].data]
        candidates.sort(key=lambda c: -len(match_units(members, c[1])))
        for ref_label, ref in candidates[:1]:
            pairing = paired_test(label, members, ref_label, ref, seed, samples)
            if pairing is not None:
                out.append(pairing)
    return out


def pairing_row(p: Pairing) -> dict[str, Any]:
    r = p.result
    split_ids = sorted({s for s in p.splits if s is not None})
    return {"a": p.a, "b": p.b, "split": " ".join(map(str, split_ids)) or "-", "units": r.num_units,
            "videos": r.num_videos, "a_top1": p.a_top1, "b_top1": p.b_top1, "diff": r.diff, "ci_low": r.ci_low,
            "ci_high": r.ci_high, "a_only": r.a_only, "b_only": r.b_only, "p": r.p, "p_test": r.p_test,
            "p_mean": r.p_mean}


def describe_pairing(p: Pairing, split: str) -> str:
    """The lines `--pair` prints."""
    r = p.result
    runs = "1 matched run pair" if r.num_units == 1 else f"{r.num_units} matched run pairs (seeds/splits)"
    lines = [
        f"{p.a} vs {p.b} on the {split} split: {r.num_videos} videos, {runs}",
        f"  top-1 {p.a_top1:.4f} vs {p.b_top1:.4f}: difference {r.diff:+.4f} "
        f"(95% CI {r.ci_low:+.4f} to {r.ci_high:+.4f}, bootstrap over videos"
        + (" and run pairs" if r.num_units > 1 else "") + ")",
    ]
    if r.num_units == 1:
        lines.append(f"  videos only {p.a} gets right: {r.a_only}, only {p.b}: {r.b_only}; "
                     f"exact McNemar p = {format_p(r.p)}")
        return "\n".join(lines)
    per = ", ".join(f"{a} vs {b}: {d:+.4f} (McNemar p = {format_p(q)})"
                    for (a, b), d, q in zip(p.units, r.unit_diff, r.unit_p, strict=True))
    lines += [
        f"  per run pair: {per}",
        f"  videos only {p.a} gets right, summed over the run pairs: {r.a_only}, only {p.b}: {r.b_only}",
        f"  intersection-union p = {format_p(r.p)}: the largest per-pair McNemar p when every pair's difference has "
        "the same sign, else 1 (is the gap there in every seed and split?)",
        f"  t-test of the mean difference over the {r.num_units} run pairs: p = {format_p(r.p_mean)}"
        + (" (every pair's difference is the same: no spread to test against)" if r.p_mean != r.p_mean else ""),
    ]
    return "\n".join(lines)


def resolve_side(spec: str, runs: list[Run], groups: dict[str, list[Run]], split: str) -> tuple[str, list[Run]]:
    """A --pair argument: a run folder, or a run or group name of the experiment."""
    path = Path(spec)
    if (path / "checkpoints").is_dir():
        run = summarise_run(path, split, {})
        if run is None:
            raise BadInputError(f"--pair {spec}: no checkpoints/last.pth or best.pth in that run folder")
        return path.name, [run]
    for run in runs:
        if run.name == spec:
            return spec, [run]
    if spec in groups:
        return spec, groups[spec]
    known = sorted({r.name for r in runs} | set(groups))
    raise BadInputError(f"--pair {spec}: not a run folder, nor a run or group of the experiment"
                        + (f" ({', '.join(known)})" if known else " (give EXPT_DIR to name runs)"))


# ----------------------------------------------------------------------------------------------- tables


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


def format_group_table(rows: list[dict[str, Any]], metrics: list[str]) -> str:
    """mean ± std cells (std left out for n = 1)."""
    def cell(row: dict[str, Any], col: str) -> str:
        mean, std = row.get(col), row.get(f"{col}_std")
        if mean is None:
            return "-"
        if col in TAIL_COLUMNS:
            return _fmt(int(mean) if col == "params" else mean)
        return _fmt(mean) if std is None or std != std else f"{mean:.3f} ± {std:.3f}"

    columns = [*GROUP_COLUMNS, *metrics]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) if c in GROUP_COLUMNS else cell(r, c) for c in columns) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def format_pair_table(pairings: list[Pairing]) -> str:
    """One row per pairing. `p` is the exact McNemar p for a single run pair and the intersection-union p (IU)
    over several; `p mean` the t-test of the mean per-pair difference (groups only)."""
    grouped = any(p.result.num_units > 1 for p in pairings)
    columns = ["a", "b", "split", "runs", "videos", "top-1 a", "top-1 b", "difference (95% CI)", "only a", "only b",
               "p (McNemar; IU over runs)" if grouped else "p (exact McNemar)"]
    if grouped:
        columns.append("p mean (t over runs)")
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for p in pairings:
        r, row = p.result, pairing_row(p)
        p_cell = format_p(r.p) + (f" (IU, {r.num_units})" if r.num_units > 1 else "")
        lines.append(f"| {p.a} | {p.b} | {row['split']} | {r.num_units} | {r.num_videos} | {p.a_top1:.3f} | "
                     f"{p.b_top1:.3f} | {r.diff:+.3f} ({r.ci_low:+.3f} to {r.ci_high:+.3f}) | {r.a_only} | "
                     f"{r.b_only} | {p_cell} |" + (f" {format_p(r.p_mean)} |" if grouped else ""))
    return "\n".join(lines) + "\n"


def run_columns(runs: list[Run], groups: dict[str, list[str]], group_probes: list[str]) -> list[str]:
    """The run table's columns: probe drops beside top-1, then the class-group columns present in any run."""
    present = {k for r in runs for k in r.row}
    probes = [k for k in dict.fromkeys(k for r in runs for k in r.row) if k.endswith("_drop")
              and not any(k.startswith(f"{g}_") for g in groups)]
    columns = [*RUN_COLUMNS, *probes, *AFTER_PROBES]
    for name in groups:
        columns += [f"{name}_top1", f"{name}_mean_class_acc"]
        columns += [f"{name}_{p}_drop" for p in group_probes if f"{name}_{p}_drop" in present]
    return [*columns, *TAIL_COLUMNS]


def print_pair(args: argparse.Namespace, runs: list[Run], groups: dict[str, list[Run]]) -> int:
    """`--pair A B`: the difference, its interval and `p = <value>` on stdout."""
    sides = [resolve_side(spec, runs, groups, args.split) for spec in args.pair]
    pairing = paired_test(*sides[0], *sides[1], seed=args.bootstrap_seed, samples=args.bootstrap_samples)
    if pairing is None:
        raise BadInputError(f"{args.pair[0]} and {args.pair[1]} share no tested video (predictions_{args.split}.csv)")
    print(describe_pairing(pairing, args.split))
    return 0


def run_curves(run: Run) -> comparison_report.RunCurves:
    """What the figures read of a run: its validation curve, its per-class test top-1 and shuffle drop."""
    epochs = [h for h in run.history if "val_top1" in h and "epoch" in h]
    curves = comparison_report.RunCurves(run.name, run.group, [int(h["epoch"]) for h in epochs],
                                         [float(h["val_top1"]) for h in epochs])
    if run.predictions is not None:
        hits = class_hits(prediction_rows(run.predictions))  # refuses a file that names a video twice
        curves.class_acc = {c: sum(v) / len(v) for c, v in hits.items()}
    if run.per_class_probes is not None:
        rows = read_csv_rows(run.per_class_probes)
        if rows and "shuffle_drop" in rows[0]:
            curves.class_shuffle_drop = {r["class_name"]: float(r["shuffle_drop"]) for r in rows
                                         if int(r["count"]) > 0}
    return curves


def write_figures(args: argparse.Namespace, out: Path, runs: list[Run], run_groups: dict[str, list[Run]],
                  group_rows: list[dict[str, Any]], pairings: list[Pairing],
                  class_groups: dict[str, list[str]]) -> list[comparison_report.Figure]:
    """The four figures of comparison_report.py, those the runs have data for."""
    curves = {r.name: run_curves(r) for r in runs}
    figures = [comparison_report.plot_group_top1(group_rows, [r.row for r in runs], out / "comparison_top1.png"),
               comparison_report.plot_probe_drops(group_rows, PROBE_NAMES, out / "comparison_probes.png")]
    if args.figure_pair:
        (a, a_runs), (b, b_runs) = (resolve_side(spec, runs, run_groups, args.split) for spec in args.figure_pair)
    elif pairings:
        best = max(pairings, key=lambda p: p.result.diff)
        (a, a_runs), (b, b_runs) = (best.a, run_groups[best.a]), (best.b, run_groups[best.b])
    else:
        a = b = ""
    if a:
        side = [[curves[r.name] if r.name in curves else run_curves(r) for r in members]
                for members in (a_runs, b_runs)]
        figures.append(comparison_report.plot_per_class_difference(a, side[0], b, side[1], class_groups,
                                                                   out / "comparison_per_class.png"))
    figures.append(comparison_report.plot_learning_curves(list(curves.values()), out / "comparison_curves.png"))
    return [f for f in figures if f is not None]


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    if args.expt_dir is None:
        if not args.pair:
            raise BadInputError("give an experiment folder (EXPT_DIR/EXPT_NAME), or two run folders with --pair A B")
        return print_pair(args, [], {})

    expt_dir = Path(args.expt_dir)
    check_writable_dir(args.out or expt_dir, "--out" if args.out else "the experiment folder")  # before any work
    groups = load_class_groups(args.class_groups) if args.class_groups else {}
    runs = find_runs(expt_dir, args.split, groups, args.group_probes)
    columns = run_columns(runs, groups, args.group_probes)
    run_groups = group_runs(runs)
    for run in runs:
        run.row["group"] = run.group
    metrics = metric_columns(columns)
    group_rows = [summarise_group(label, members, metrics) for label, members in run_groups.items()]

    if args.pair:
        return print_pair(args, runs, run_groups)

    pairings = reference_pairings(run_groups, args.bootstrap_seed, args.bootstrap_samples)
    run_table = format_table([r.row for r in runs], columns)
    repeated = any(len(m) > 1 for m in run_groups.values())
    group_table = format_group_table(group_rows, metrics) if repeated else ""
    pair_table = format_pair_table(pairings) if pairings else ""
    print(group_table or run_table, end="")
    if pair_table:
        print(f"\nPaired against {REFERENCE_HEAD} on the same {args.split} videos:\n{pair_table}", end="")

    out = Path(args.out) if args.out else expt_dir
    figures = [] if args.no_figures else write_figures(args, out, runs, run_groups, group_rows, pairings, groups)
    md = f"# {expt_dir.name}: {args.split} split\n\n## Runs\n\n{run_table}"
    if group_table:
        md += f"\n## Groups (mean ± std over seeds and official splits)\n\n{group_table}"
    if pair_table:
        grouped = any(p.result.num_units > 1 for p in pairings)
        md += (f"\n## Paired tests against {REFERENCE_HEAD}\n\nOn the same {args.split} videos: the top-1 difference "
               f"with a bootstrap 95% CI ({args.bootstrap_samples} resamples, seed {args.bootstrap_seed}); p is the "
               "exact McNemar test of one run pair"
               + ("; over several matched run pairs (seeds, splits), IU is the intersection-union p (the largest "
                  "per-pair McNemar p when every pair's difference has the same sign, else 1), p mean the t-test of "
                  "the mean per-pair difference, and only a / only b are summed over the pairs" if grouped else "")
               + f".\n\n{pair_table}")
    md += comparison_report.figures_markdown(figures)
    atomic_write_text(out / "comparison.md", md)
    if figures:
        atomic_write_text(out / "comparison.html",
                          comparison_report.html_page(f"{expt_dir.name}: {args.split} split", md, out))
    atomic_write_csv(out / "comparison.csv", [r.row for r in runs], [*columns, "group"])
    group_csv_columns = [*GROUP_COLUMNS] + [f"{m}{s}" for m in metrics for s in ("", "_std", "_n")]
    atomic_write_csv(out / "comparison_groups.csv", group_rows, group_csv_columns)
    atomic_write_csv(out / "comparison_pairs.csv", [pairing_row(p) for p in pairings], PAIR_COLUMNS)
    written = ["comparison.md", "comparison.csv", "comparison_groups.csv", "comparison_pairs.csv",
               *([f.path.name for f in figures] + ["comparison.html"] if figures else [])]
    log.info("wrote into %s: %s", out, ", ".join(written))
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())

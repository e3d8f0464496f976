"""predict.py --window/--stride on a long video whose action changes half-way: a 60-second video made by joining a
30-second clip of one demo class to one of another, classified by a head trained on the demo's appearance classes.
The timeline's top-1 label changes where the video's action changes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import pytest

from tests.test_demo import _check, _cli

pytestmark = pytest.mark.slow  # every stage as a command

CLASSES = ["PlainSquare", "Ring", "StripedSquare", "Triangle"]
FIRST, SECOND = "Triangle", "Ring"


def join_videos(parts: list[Path], out: Path) -> list[float]:
    """`parts` one after the other in one MJPEG AVI at the first part's frame rate; returns each part's duration."""
    cap = cv2.VideoCapture(str(parts[0]))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    writer, durations = None, []
    for part in parts:
        frames = 0
        cap = cv2.VideoCapture(str(part))
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            if writer is None:
                h, w = bgr.shape[:2]
                writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
            writer.write(bgr)
            frames += 1
        cap.release()
        durations.append(frames / fps)
    writer.release()
    return durations


def test_sliding_windows_find_where_the_action_changes(tmp_path: Path) -> None:
    data, prepared, emb, expts = tmp_path / "data", tmp_path / "prep", tmp_path / "emb", tmp_path / "expts"
    _check(_cli("make_demo_data.py", "-o", data, "--classes", *CLASSES, "--groups", 6, "--clips", 2, "--size", 48,
                "--fps", 2, "--seed", 0))
    _check(_cli("prepare_ucf101.py", "-v", data / "videos", "-o", prepared, "--split_dir", data / "splits",
                "--split_id", 1, "-fps", 1, "--workers", 2))
    for s in ("train", "val", "test"):
        _check(_cli("prepare_data.py", "-s", s, "-f", prepared / "frames", "-j", prepared / f"{s}_ucf101.json",
                    "-o", emb, "-m", "resnet18", "--weights", "none", "--image_size", 48, "-g", 0, "-nw", 0))
    _check(_cli("main.py", "--mode", "train", "--model", "meanpool", "--data_dir", emb, "--expt_dir", expts,
                "--expt_name", "w", "--run_name", "meanpool", "--epochs", 15, "--batch_size", 16, "--lr", 1e-3,
                "--gpu_id", 0, "--num_workers", 0))
    # two unseen 30-second clips (another seed: new looks), one of each class, joined into one 60-second video
    _check(_cli("make_demo_data.py", "-o", tmp_path / "long", "--classes", FIRST, SECOND, "--groups", 2, "--clips", 1,
                "--test_groups", 1, "--min_seconds", 30, "--max_seconds", 30, "--size", 48, "--fps", 2, "--seed", 5))
    parts = [sorted((tmp_path / "long" / "videos" / c).glob("*.avi"))[-1] for c in (FIRST, SECOND)]
    video = tmp_path / "two_actions.avi"
    durations = join_videos(parts, video)
    boundary, total = durations[0], sum(durations)  # where the action changes, and the video's length
    assert 60.0 <= total <= 62.0, durations

    out = tmp_path / "out"
    out.mkdir()
    _check(_cli("predict.py", "--model_ckpt", expts / "w" / "meanpool" / "checkpoints" / "best.pth", video,
                "--window", 2, "--stride", 1, "--timeline", out / "timeline.png", "--json", out / "pred.json",
                "--topk", 2))
    with open(out / "timeline.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == int(total) and rows[-1]["partial"] == "1" and rows[0]["start"] == "0.0"
    first = [r["top1"] for r in rows if float(r["end"]) <= boundary]
    second = [r["top1"] for r in rows if float(r["start"]) >= boundary]
    assert first.count(FIRST) >= 0.8 * len(first), first
    assert second.count(SECOND) >= 0.8 * len(second), second
    # the change point: the first window after which the label stays the second action, near 30 s
    change = next(float(r["start"]) for i, r in enumerate(rows)
                  if all(x["top1"] == SECOND for x in rows[i:i + 5]))
    assert boundary - 4 <= change <= boundary + 1, [r["top1"] for r in rows]
    record = json.loads((out / "pred.json").read_text())
    (video_record,) = record["videos"] if "videos" in record else record
    windows = video_record["timeline"]["windows"]
    assert len(windows) == len(rows) and windows[-1]["partial"] and len(windows[0]["topk"]) == 2
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"

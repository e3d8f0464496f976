"""The README's three-split recipe, end to end through the real command lines, on two official splits made by hand
from the demo's groups: stage 1 once per split into one folder (frames extracted once), stage 2 per split, two heads
trained and tested on each split, then compare_runs averages each head over the splits (one group of n = 2 per
head) and pairs the heads split by split."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from tests.test_demo import _check, _cli

pytestmark = pytest.mark.slow  # runs every stage as a command

HEADS = {"meanpool": 10, "bilstm": 6}
TEST_GROUPS = {1: ("g01", "g02"), 2: ("g05", "g06")}  # split 1 trains on g03-g06, split 2 on g01-g04


def write_official_splits(demo_splits: Path, out: Path) -> None:
    """trainlist0k.txt / testlist0k.txt in UCF-101's format, from the demo's own lists (which hold every video)."""
    out.mkdir()
    shutil.copy(demo_splits / "classInd.txt", out / "classInd.txt")
    videos = [line.split()[0] for name in ("trainlist01.txt", "testlist01.txt")
              for line in (demo_splits / name).read_text().splitlines() if line.strip()]
    label = {c: i for i, c in (line.split() for line in (demo_splits / "classInd.txt").read_text().splitlines())}
    for k, test_groups in TEST_GROUPS.items():
        test = [v for v in videos if re.search(r"_(g\d\d)_", v).group(1) in test_groups]
        train = [v for v in videos if v not in test]
        (out / f"testlist0{k}.txt").write_text("".join(f"{v}\n" for v in test))
        (out / f"trainlist0{k}.txt").write_text("".join(f"{v} {label[v.split('/')[0]]}\n" for v in train))


def test_three_split_recipe_on_two_hand_made_splits_gives_one_group_per_head(tmp_path: Path) -> None:
    data, prepared, expts = tmp_path / "data", tmp_path / "ucf", tmp_path / "expts"
    _check(_cli("make_demo_data.py", "-o", data, "--groups", 6, "--clips", 2, "--size", 48, "--fps", 2, "--seed", 0))
    write_official_splits(data / "splits", tmp_path / "lists")
    for k in TEST_GROUPS:
        _check(_cli("prepare_ucf101.py", "-v", data / "videos", "-o", prepared, "--split_dir", tmp_path / "lists",
                    "--split_id", k, "-fps", 1, "--workers", 2))
        (prepared / f"split{k}").mkdir()
        for name in ("train_ucf101.json", "val_ucf101.json", "test_ucf101.json", "classInd.txt"):
            shutil.copy(prepared / name, prepared / f"split{k}" / name)
        for s in ("train", "val", "test"):
            _check(_cli("prepare_data.py", "-s", s, "-f", prepared / "frames", "-j",
                        prepared / f"split{k}" / f"{s}_ucf101.json", "-o", prepared / f"emb_s{k}", "-m", "resnet18",
                        "--weights", "none", "--image_size", 48, "-g", 0, "-nw", 0))
        for head, epochs in HEADS.items():
            run = f"{head}_split{k}"
            common = ["--expt_dir", expts, "--expt_name", "ucf", "--run_name", run, "--data_dir", prepared / f"emb_s{k}",
                      "--gpu_id", 0, "--num_workers", 0]
            _check(_cli("main.py", "--mode", "train", "--model", head, *common, "--epochs", epochs, "--batch_size", 16,
                        "--lr", 1e-3, "--hidden_size", 32, "--num_layers", 1))
            _check(_cli("main.py", "--mode", "test", "--split", "test", *common, "--probes", "shuffle",
                        "--model_ckpt", expts / "ucf" / run / "checkpoints" / "best.pth"))
    out = _check(_cli("compare_runs.py", expts / "ucf"))
    with open(expts / "ucf" / "comparison_groups.csv", newline="") as fh:
        groups = {r["group"]: r for r in csv.DictReader(fh)}
    assert {g: (r["n"], r["splits"]) for g, r in groups.items()} == {h: ("2", "1 2") for h in HEADS}, out
    assert all(r["test_top1_n"] == "2" and r["shuffle_drop_n"] == "2" for r in groups.values())
    with open(expts / "ucf" / "comparison_pairs.csv", newline="") as fh:
        (pair,) = list(csv.DictReader(fh))
    assert (pair["a"], pair["b"], pair["units"], pair["split"]) == ("bilstm", "meanpool", "2", "1 2")
    assert pair["p_test"] == "intersection-union of 2 exact McNemar"
    assert "± " in out and "(IU, 2)" in out  # the group table (mean ± std) is what is printed

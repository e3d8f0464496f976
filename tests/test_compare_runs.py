"""compare_runs.py on hand-made run folders: groups by seed and by official split, paired tests, probe columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from scipy.stats import ttest_1samp

import compare_runs
from stats import format_p, mcnemar_exact_p
from utils import BadInputError

CLASSES = ["Growing", "Shrinking", "Square"]


def make_run(expt: Path, name: str, head: str, correct: dict[str, bool], seed: int = 0, split_id: int | None = 1,
             probes: dict[str, dict[str, float]] | None = None, **args) -> Path:
    """A run folder as main.py leaves it after training and `--mode test --split test` (`correct`: video -> hit)."""
    run = expt / name
    (run / "checkpoints").mkdir(parents=True)
    ckpt = {
        "format_version": 1, "model_name": head, "model_config": {"name": head, "input_dim": 8, "num_classes": 3},
        "model_state": {}, "class_names": CLASSES, "num_classes": 3, "feature_dim": 8, "num_params": 1000,
        "data_info": {"backbone": "resnet18", "weights": "none", "fps": 1.0, "split_id": split_id,
                      "max_len": 10 + (split_id or 0)},
        "args": {"seed": seed, "lr": 1e-3, "epochs": 10, "run_name": name, "data_dir": f"emb_split{split_id}",
                 "num_workers": 0, **args},
    }
    torch.save(ckpt, run / "checkpoints" / "last.pth")
    rows = []
    for k, (video, hit) in enumerate(sorted(correct.items())):
        true = CLASSES[k % 3]
        rows.append({"video": video, "true_label": true, "predicted": true if hit else CLASSES[(k + 1) % 3],
                     "correct": int(hit)})
    with open(run / "predictions_test.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    top1 = sum(correct.values()) / len(correct)
    (run / "results_test.json").write_text(json.dumps({"top1": top1, "top5": 1.0, "mean_class_acc": top1}))
    if probes is not None:
        none = {"top1": top1}
        (run / "probes_test.json").write_text(json.dumps({"probes": {
            "none": none, **{p: {**r, "top1_drop": top1 - r["top1"]} for p, r in probes.items()}}}))
        with open(run / "probes_per_class_test.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["class_idx", "class_name", "count", "none", *probes])
            for c, name_ in enumerate(CLASSES):
                writer.writerow([c, name_, 10, 1.0, *[0.5 if name_ != "Square" else 1.0 for _ in probes]])
    return run


def hits(n_right: int, total: int = 10, prefix: str = "v") -> dict[str, bool]:
    return {f"{prefix}{i:02d}": i < n_right for i in range(total)}


def run_compare(capsys: pytest.CaptureFixture, *argv: object) -> str:
    args = compare_runs.get_args_parser().parse_args([str(a) for a in argv])
    assert compare_runs.main(args) == 0
    return capsys.readouterr().out


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_runs_that_differ_only_in_seed_form_a_group_with_mean_std_and_n(tmp_path: Path, capsys) -> None:
    for seed, right in enumerate((8, 9, 7)):
        make_run(tmp_path, f"bert_s{seed}", "bert", hits(right), seed=seed)
        make_run(tmp_path, f"meanpool_s{seed}", "meanpool", hits(5), seed=seed)
    make_run(tmp_path, "bert_lr", "bert", hits(6), seed=0, lr=1e-2)  # another setting: its own group
    out = run_compare(capsys, tmp_path)
    groups = {r["group"]: r for r in read_rows(tmp_path / "comparison_groups.csv")}
    assert set(groups) == {"bert", "meanpool", "bert_lr"}
    bert = groups["bert"]
    assert (bert["n"], bert["seeds"], bert["splits"]) == ("3", "0 1 2", "1")
    assert float(bert["test_top1"]) == pytest.approx(0.8) and float(bert["test_top1_std"]) == pytest.approx(0.1)
    assert groups["bert_lr"]["n"] == "1"
    assert "0.800 ± 0.100" in out and "0.500 ± 0.000" in out  # the group table is what is printed
    runs = {r["run"]: r for r in read_rows(tmp_path / "comparison.csv")}
    assert runs["bert_s2"]["group"] == "bert" and runs["bert_s2"]["seed"] == "2"


def test_runs_that_differ_only_in_the_official_split_form_a_group(tmp_path: Path, capsys) -> None:
    for split_id, right in ((1, 6), (2, 8), (3, 7)):
        # another data_dir and another max_len per split: the videos differ, the settings do not
        make_run(tmp_path, f"bert_split{split_id}", "bert", hits(right, prefix=f"s{split_id}_"), split_id=split_id)
    make_run(tmp_path, "bert_other_backbone", "bert", hits(9), split_id=1, epochs=20)
    run_compare(capsys, tmp_path)
    groups = {r["group"]: r for r in read_rows(tmp_path / "comparison_groups.csv")}
    assert set(groups) == {"bert", "bert_other_backbone"}
    assert (groups["bert"]["n"], groups["bert"]["splits"]) == ("3", "1 2 3")
    assert float(groups["bert"]["test_top1"]) == pytest.approx(0.7)


def test_every_head_is_paired_against_meanpool_on_the_same_videos(tmp_path: Path, capsys) -> None:
    # bert right on 10 of 12 videos where meanpool is right on 4; each meanpool hit is also a bert hit
    make_run(tmp_path, "bert", "bert", hits(10, 12))
    make_run(tmp_path, "meanpool", "meanpool", hits(4, 12))
    make_run(tmp_path, "same", "bilstm", hits(4, 12))
    out = run_compare(capsys, tmp_path)
    pairs = {r["a"]: r for r in read_rows(tmp_path / "comparison_pairs.csv")}
    assert set(pairs) == {"bert", "same"} and pairs["bert"]["b"] == "meanpool"
    assert (pairs["bert"]["a_only"], pairs["bert"]["b_only"]) == ("6", "0")
    assert float(pairs["bert"]["diff"]) == pytest.approx(0.5)
    assert float(pairs["bert"]["p"]) == pytest.approx(mcnemar_exact_p(6, 0))
    assert float(pairs["same"]["p"]) == 1.0 and float(pairs["same"]["ci_low"]) == 0.0 == float(pairs["same"]["ci_high"])
    assert "Paired against meanpool" in out and "+0.500" in out
    assert "## Paired tests against meanpool" in (tmp_path / "comparison.md").read_text()


def test_groups_are_paired_seed_by_seed_and_split_by_split(tmp_path: Path, capsys) -> None:
    for split_id in (1, 2):
        for seed in (0, 1):
            make_run(tmp_path, f"bert_s{split_id}{seed}", "bert", hits(9, prefix=f"s{split_id}_"), seed=seed,
                     split_id=split_id)
            make_run(tmp_path, f"meanpool_s{split_id}{seed}", "meanpool", hits(3 + seed, prefix=f"s{split_id}_"),
                     seed=seed, split_id=split_id)
    run_compare(capsys, tmp_path)
    (pair,) = read_rows(tmp_path / "comparison_pairs.csv")
    assert (pair["a"], pair["b"], pair["units"], pair["split"]) == ("bert", "meanpool", "4", "1 2")
    assert int(pair["a_only"]) == 2 * (6 + 5) and int(pair["b_only"]) == 0
    assert float(pair["p"]) == pytest.approx(mcnemar_exact_p(5, 0))  # the weakest matched pair decides
    assert pair["p_test"] == "intersection-union of 4 exact McNemar"  # labelled for what it is, not as McNemar's
    assert float(pair["p_mean"]) == pytest.approx(ttest_1samp([0.6, 0.5, 0.6, 0.5], 0.0).pvalue)
    assert float(pair["diff"]) == pytest.approx(0.55)
    md = (tmp_path / "comparison.md").read_text()
    assert "p (McNemar; IU over runs)" in md and "(IU, 4)" in md and "p mean (t over runs)" in md
    units = compare_runs.match_units(*[[r for r in compare_runs.find_runs(tmp_path, "test", {}, [])
                                        if r.head == h] for h in ("bert", "meanpool")])
    assert sorted((a.split_id, a.seed, b.split_id, b.seed) for a, b in units) == [
        (1, 0, 1, 0), (1, 1, 1, 1), (2, 0, 2, 0), (2, 1, 2, 1)]


def test_pair_prints_difference_interval_and_p(tmp_path: Path, capsys) -> None:
    a = {f"v{i}": i < 8 or i >= 10 for i in range(20)}  # right on v0-v7 and v10-v19
    b = {f"v{i}": i >= 8 for i in range(20)}  # right on v8-v19: 8 videos only A, 2 only B
    run_a, run_b = make_run(tmp_path, "a", "bert", a), make_run(tmp_path, "b", "meanpool", b)
    out = run_compare(capsys, "--pair", run_a, run_b)
    assert "difference +0.3000" in out and "95% CI" in out
    assert "p = 0.11" in out and "only a gets right: 8, only b: 2" in out
    # the same by name inside the experiment, and identical runs give p = 1
    assert "p = 0.11" in run_compare(capsys, tmp_path, "--pair", "a", "b")
    assert "p = 1" in run_compare(capsys, "--pair", run_a, run_a)
    with pytest.raises(BadInputError, match="not a run folder"):
        run_compare(capsys, tmp_path, "--pair", "a", "nope")


def test_probe_drops_beside_top1_and_per_class_group(tmp_path: Path, capsys) -> None:
    make_run(tmp_path, "bert", "bert", hits(9), probes={"shuffle": {"top1": 0.6}, "static": {"top1": 0.5}})
    make_run(tmp_path, "meanpool", "meanpool", hits(6), probes={"shuffle": {"top1": 0.6}})
    groups = tmp_path.parent / f"{tmp_path.name}_groups.json"
    groups.write_text(json.dumps({"order_pairs": [["Growing", "Shrinking"]], "appearance": ["Square"]}))
    out = run_compare(capsys, tmp_path, "--class_groups", groups)
    header = out.splitlines()[0]
    assert header.index("test_top1") < header.index("shuffle_drop") < header.index("test_top5")
    runs = {r["run"]: r for r in read_rows(tmp_path / "comparison.csv")}
    assert float(runs["bert"]["shuffle_drop"]) == pytest.approx(0.3)
    assert float(runs["bert"]["static_drop"]) == pytest.approx(0.4) and runs["meanpool"]["static_drop"] == ""
    # per class group, from probes_per_class: 1.0 -> 0.5 on the order pairs, no change on the appearance class
    assert float(runs["bert"]["order_pairs_shuffle_drop"]) == pytest.approx(0.5)
    assert float(runs["bert"]["appearance_shuffle_drop"]) == pytest.approx(0.0)


def test_group_labels() -> None:
    assert compare_runs.group_label(["bert_s0", "bert_s1"]) == "bert"
    assert compare_runs.group_label(["bert4_split1", "bert4_split2"]) == "bert4"
    assert compare_runs.group_label(["heads0", "heads1"]) == "heads"
    assert compare_runs.group_label(["roberta"]) == "roberta"


def test_flags_are_checked_before_any_work(tmp_path: Path, capsys) -> None:
    """Issue 11's rule for the new flags: a bad value is argparse's one line, a bad --out is refused up front."""
    parser = compare_runs.get_args_parser()
    for argv in (["--bootstrap_samples", "0"], ["--bootstrap_seed", "-1"], ["--group_probes", "sideways"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([str(tmp_path), *argv])
        assert exc.value.code == 2 and "error: argument" in capsys.readouterr().err
    make_run(tmp_path, "meanpool", "meanpool", hits(6))
    (tmp_path.parent / "file").write_text("x")
    with pytest.raises(BadInputError, match="--out .* is a file"):
        compare_runs.main(parser.parse_args([str(tmp_path), "--out", str(tmp_path.parent / "file")]))
    assert not (tmp_path / "comparison.md").exists()


def test_seeds_and_splits_sort_as_numbers(tmp_path: Path, capsys) -> None:
    for seed in (10, 2, 0, 1):
        make_run(tmp_path, f"bert_s{seed}", "bert", hits(7), seed=seed)
    run_compare(capsys, tmp_path)
    (group,) = read_rows(tmp_path / "comparison_groups.csv")
    assert group["seeds"] == "0 1 2 10"


def test_a_predictions_file_that_names_a_video_twice_is_refused(tmp_path: Path, capsys) -> None:
    """210 rows of which 10 repeat a name with the opposite outcome: refused, not read as 200 videos."""
    make_run(tmp_path, "meanpool", "meanpool", hits(100, 200))
    run = make_run(tmp_path, "bert", "bert", hits(150, 200))
    pred = run / "predictions_test.csv"
    rows = read_rows(pred)
    repeats = [{**r, "correct": str(1 - int(r["correct"]))} for r in rows[:10]]
    with open(pred, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + repeats)
    with pytest.raises(BadInputError, match=r"predictions_test\.csv: 10 video name\(s\) appear more than once "
                                            r"\(v00 \(2 rows\), v01 \(2 rows\).*210 rows for 200 videos"):
        run_compare(capsys, tmp_path)
    with pytest.raises(BadInputError, match="more than once"):
        run_compare(capsys, tmp_path, "--pair", "bert", "meanpool")


def test_group_pair_prints_what_each_p_tests(tmp_path: Path, capsys) -> None:
    for split_id, (a_right, b_right) in ((1, (9, 3)), (2, (8, 4))):
        make_run(tmp_path, f"bert_split{split_id}", "bert", hits(a_right, prefix=f"s{split_id}_"), split_id=split_id)
        make_run(tmp_path, f"meanpool_split{split_id}", "meanpool", hits(b_right, prefix=f"s{split_id}_"),
                 split_id=split_id)
    out = run_compare(capsys, tmp_path, "--pair", "bert", "meanpool")
    assert "2 matched run pairs" in out and "exact McNemar p =" not in out
    assert f"intersection-union p = {format_p(max(mcnemar_exact_p(6, 0), mcnemar_exact_p(4, 0)))}" in out
    assert "summed over the run pairs: 10, only meanpool: 0" in out
    assert f"run pairs: p = {format_p(ttest_1samp([0.6, 0.4], 0.0).pvalue)}" in out


@pytest.mark.needs_shared_data
def test_runs_on_two_official_splits_made_by_stage_2_and_main_form_one_group(tmp_path: Path, capsys,
                                                                             one_thread) -> None:
    """The data_info that stage 2 and main.py really write (hashes of each split's videos included), not a
    hand-made one: two official splits of the same frames, meanpool and attnpool on each, one group per head
    with n = 2 and one paired test over both splits."""
    import main
    from tests.test_prepare_data import run_main as run_stage_2
    from tests.test_prepare_data import stage_args, write_frames_fixture

    frames, all_json = write_frames_fixture(tmp_path / "stage1", copies=2)
    records = json.loads(all_json.read_text())
    for split_id in (1, 2):  # split 1 trains on the first copy of each clip and tests on the second; split 2 swaps
        train_copy = f"_c{split_id - 1:03d}"
        for split in ("train", "val", "test"):
            chosen = [{**r, "split_id": split_id} for r in records
                      if r["video_name"].endswith(train_copy) == (split == "train")]
            (all_json.parent / f"{split}_split{split_id}.json").write_text(json.dumps(chosen))
            assert run_stage_2(*stage_args(frames, all_json.parent / f"{split}_split{split_id}.json",
                                           tmp_path / f"emb_s{split_id}", "-s", split)) == 0
        for head in ("meanpool", "attnpool"):
            common = ["--expt_dir", tmp_path / "expts", "--expt_name", "x", "--run_name", f"{head}_split{split_id}",
                      "--data_dir", tmp_path / f"emb_s{split_id}", "--num_workers", 0, "--batch_size", 4]
            for argv in (["--mode", "train", "--model", head, "--epochs", 1, "--lr", 1e-3, *common],
                         ["--mode", "test", "--split", "test", *common, "--model_ckpt",
                          tmp_path / "expts" / "x" / f"{head}_split{split_id}" / "checkpoints" / "best.pth"]):
                assert main.main(main.get_args_parser().parse_args([str(a) for a in argv])) == 0
    infos = [torch.load(tmp_path / "expts" / "x" / f"meanpool_split{k}" / "checkpoints" / "best.pth",
                        weights_only=False)["data_info"] for k in (1, 2)]
    assert infos[0]["videos_sha256"] != infos[1]["videos_sha256"]  # what kept the splits apart
    run_compare(capsys, tmp_path / "expts" / "x")
    groups = {r["group"]: r for r in read_rows(tmp_path / "expts" / "x" / "comparison_groups.csv")}
    assert {g: (r["n"], r["splits"]) for g, r in groups.items()} == {"meanpool": ("2", "1 2"),
                                                                     "attnpool": ("2", "1 2")}
    (pair,) = read_rows(tmp_path / "expts" / "x" / "comparison_pairs.csv")
    assert (pair["a"], pair["b"], pair["units"], pair["split"], pair["videos"]) == ("attnpool", "meanpool", "2",
                                                                                     "1 2", "4")
    # the budget beside the accuracy: parameters, training seconds per epoch, inference frames per second
    assert all(float(r["params"]) > 0 and float(r["s_per_epoch"]) > 0 and float(r["infer_fps"]) > 0
               for r in read_rows(tmp_path / "expts" / "x" / "comparison.csv"))


def _with_curves(run: Path, val_top1: list[float]) -> None:
    (run / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e + 1, "val_top1": v, "epoch_time_s": 0.5}) + "\n"
                                               for e, v in enumerate(val_top1)))


def figure_expt(root: Path) -> Path:
    for seed in (0, 1):
        _with_curves(make_run(root, f"bert_s{seed}", "bert", hits(9 - seed), seed=seed,
                              probes={"shuffle": {"top1": 0.5}, "reverse": {"top1": 0.4}}), [0.4, 0.7, 0.9])
        _with_curves(make_run(root, f"meanpool_s{seed}", "meanpool", hits(5), seed=seed,
                              probes={"shuffle": {"top1": 0.5}}), [0.3, 0.5])
    return root


FIGURES = ("comparison_top1.png", "comparison_probes.png", "comparison_per_class.png", "comparison_curves.png")


def test_figures_and_a_self_contained_html_page_beside_the_tables(tmp_path: Path, capsys) -> None:
    import base64

    expt = figure_expt(tmp_path / "expt")
    run_compare(capsys, expt)
    for name in FIGURES:
        assert (expt / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    md = (expt / "comparison.md").read_text()
    assert all(f"]({name})" in md for name in FIGURES)
    assert "### Per class: bert vs meanpool" in md  # the head that gains most, against meanpool
    page = (expt / "comparison.html").read_text()
    for name in FIGURES:  # every figure inline, byte for byte: the page needs no other file
        assert base64.b64encode((expt / name).read_bytes()).decode() in page, name
    assert page.count("<table>") == 3 and "<th>test_top1</th>" in page and "src=\"comparison" not in page
    # another pair on request; --no_figures writes the tables alone
    run_compare(capsys, expt, "--figure_pair", "meanpool_s0", "bert_s1", "--out", tmp_path / "other")
    assert "### Per class: meanpool_s0 vs bert_s1" in (tmp_path / "other" / "comparison.md").read_text()
    run_compare(capsys, expt, "--no_figures", "--out", tmp_path / "plain")
    assert not list((tmp_path / "plain").glob("*.png")) and not (tmp_path / "plain" / "comparison.html").exists()
    assert "## Figures" not in (tmp_path / "plain" / "comparison.md").read_text()


def test_html_tables_escape_what_they_show() -> None:
    from comparison_report import markdown_to_html

    out = markdown_to_html("# a <b>\n\n| run | x |\n|---|---|\n| <i>r</i> | 1 |\n", lambda name: name)
    assert "<h1>a &lt;b&gt;</h1>" in out and "<td>&lt;i&gt;r&lt;/i&gt;</td>" in out


def _chromium() -> str | None:
    import shutil

    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="needs Chromium (apt-get install chromium; .ci/run installs it) to "
                                                "render comparison.html: not found on PATH")
def test_the_html_page_renders_in_headless_chromium_with_every_figure(tmp_path: Path, capsys) -> None:
    import re
    import subprocess

    expt = figure_expt(tmp_path / "expt")
    run_compare(capsys, expt)
    page = expt / "comparison.html"
    # render from another folder: the page must not need the PNG files beside it
    alone = tmp_path / "alone" / "comparison.html"
    alone.parent.mkdir()
    alone.write_bytes(page.read_bytes())
    browser = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run([*browser, "--dump-dom", alone.as_uri()], capture_output=True, text=True, timeout=120,
                         check=True).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-figures="4"' in body and 'data-figures-loaded="4"' in body, body  # all four decoded
    shot = tmp_path / "page.png"
    subprocess.run([*browser, "--window-size=1280,2000", f"--screenshot={shot}", alone.as_uri()], capture_output=True,
                   timeout=120, check=True)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000

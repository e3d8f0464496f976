"""main.py end to end on synthetic embeddings: train, test outputs, exact resume, refusals, DDP on gloo."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import main
from checkpoint import load_checkpoint, save_checkpoint
from reports import confusion_layout, plot_confusion
from tests.conftest import ROOT
from tests.synthetic import make_order_task, write_embedding_split
from utils import BadInputError, run_cli

DIM = 8


def write_data(path, n_train=64, n_val=31, n_test=23, num_pairs=2, **kw):
    """Train 64 (4 steps of 16), val 31 and test 23: neither a multiple of any batch size used below."""
    for split, n, seed in (("train", n_train, 0), ("val", n_val, 1), ("test", n_test, 2)):
        videos, labels = make_order_task(n, num_pairs=num_pairs, dim=DIM, seed=seed, **kw)
        write_embedding_split(path, split, videos, labels)
    return path


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data"))


def run_main(*argv) -> None:
    args = main.get_args_parser().parse_args([str(a) for a in argv])
    assert main.main(args) == 0


def train_args(data_dir, expt_dir, run_name, *extra):
    return ["--mode", "train", "--data_dir", data_dir, "--expt_dir", expt_dir, "--expt_name", "t",
            "--run_name", run_name, "--model", "meanpool", "--batch_size", 16, "--num_workers", 0,
            "--lr", 1e-2, "--warmup_epochs", 0.5, "--save_interval", 0, *extra]


def epoch_records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"} for line in lines]


def test_train_then_test_writes_every_output_and_evaluates_every_sample(data_dir, tmp_path):
    run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 3))
    run = tmp_path / "t" / "r"
    assert (run / "checkpoints" / "best.pth").is_file() and (run / "checkpoints" / "last.pth").is_file()
    log_text = (run / "train_log.txt").read_text()
    assert "command:" in log_text and '"batch_size": 16' in log_text and '"label_smoothing": 0.0' in log_text
    records = epoch_records(run)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all(r["val_count"] == 31 for r in records)  # 31 with batches of 16: no drop_last
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"

    best = load_checkpoint(run / "checkpoints" / "best.pth")
    # how the embeddings were made travels with the weights, for predict.py; the per-video records do not
    assert best["data_info"]["backbone"] == "synthetic" and best["data_info"]["fps"] == 1.0
    assert "data" not in best["data_info"]
    for split, count in (("test", 23), ("val", 31)):
        run_main("--mode", "test", "--model_ckpt", run / "checkpoints" / "best.pth", "--data_dir", data_dir,
                 "--split", split, "--batch_size", 5, "--num_workers", 0)
        results = json.loads((run / f"results_{split}.json").read_text())
        assert results["count"] == count
        assert results["infer_frames_per_s"] > results["infer_videos_per_s"] > 0  # the budget: videos of >1 frame
        with open(run / f"predictions_{split}.csv") as fh:
            preds = list(csv.DictReader(fh))
        assert len(preds) == count and len({p["video"] for p in preds}) == count
        assert results["top1"] == pytest.approx(np.mean([p["true_label"] == p["top1"] for p in preds]))
        assert all(float(p["prob1"]) >= float(p["prob2"]) for p in preds)
        with open(run / f"per_class_{split}.csv") as fh:
            per_class = list(csv.DictReader(fh))
        assert [int(r["support"]) for r in per_class] and sum(int(r["support"]) for r in per_class) == count
        assert (run / f"confusion_{split}.png").stat().st_size > 1000
    # the test mode reproduces the validation accuracy recorded for the best epoch
    assert json.loads((run / "results_val.json").read_text())["top1"] == pytest.approx(best["best_metric"])
    assert best["epoch"] == best["best_epoch"]


def test_resume_at_epoch_and_mid_epoch_matches_a_straight_run(data_dir, tmp_path, model="bert"):
    # bert's dropouts, augmentation and label smoothing all on: every RNG and the data order must be restored
    common = ["--epochs", 4, "--dropout", 0.3, "--frame_dropout", 0.2, "--temporal_crop", 0.7,
              "--temporal_stride", 2, "--label_smoothing", 0.1, "--seed", 3, "--model", model,
              "--hidden_size", 16, "--num_heads", 2]
    run_main(*train_args(data_dir, tmp_path, "straight", *common))
    run_main(*train_args(data_dir, tmp_path, "epochs", *common, "--stop_after_epochs", 2))
    assert len(epoch_records(tmp_path / "t" / "epochs")) == 2
    run_main(*train_args(data_dir, tmp_path, "epochs", *common))  # same command: --resume auto
    run_main(*train_args(data_dir, tmp_path, "steps", *common, "--stop_after_steps", 6))
    mid = load_checkpoint(tmp_path / "t" / "steps" / "checkpoints" / "last.pth")
    assert (mid["epoch"], mid["batch_in_epoch"], mid["global_step"]) == (1, 2, 6)
    run_main(*train_args(data_dir, tmp_path, "steps", *common))

    straight = epoch_records(tmp_path / "t" / "straight")
    final = load_checkpoint(tmp_path / "t" / "straight" / "checkpoints" / "last.pth")["model_state"]
    for name in ("epochs", "steps"):
        assert epoch_records(tmp_path / "t" / name) == straight
        state = load_checkpoint(tmp_path / "t" / name / "checkpoints" / "last.pth")["model_state"]
        for key, value in final.items():
            torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6)


def test_group_by_length_is_on_for_sequence_heads_recorded_and_resumed_exactly(data_dir, tmp_path):
    # batches of 8 from 64 videos: mega-batches of 16 sorted by length, so grouping changes which videos meet
    common = ["--model", "bilstm", "--hidden_size", 16, "--epochs", 2, "--batch_size", 8, "--dropout", 0.2,
              "--frame_dropout", 0.2]
    run_main(*train_args(data_dir, tmp_path, "straight", *common))
    ckpt = load_checkpoint(tmp_path / "t" / "straight" / "checkpoints" / "last.pth")
    assert ckpt["args"]["group_by_length"] is True  # the default for a sequence head, recorded
    run_main(*train_args(data_dir, tmp_path, "steps", *common, "--stop_after_steps", 11))
    run_main(*train_args(data_dir, tmp_path, "steps", *common))  # resumed in the middle of epoch 2
    assert epoch_records(tmp_path / "t" / "steps") == epoch_records(tmp_path / "t" / "straight")
    run_main(*train_args(data_dir, tmp_path, "plain", *common, "--no-group_by_length", "--epochs", 1))
    assert load_checkpoint(tmp_path / "t" / "plain" / "checkpoints" / "last.pth")["args"]["group_by_length"] is False
    # another batch plan is another run: resuming the folder with the grouping switched is refused
    with pytest.raises(BadInputError, match="--group_by_length False -> True"):
        run_main(*train_args(data_dir, tmp_path, "plain", *common))
    # a run saved before the flag existed resumes with the random batches it started with
    last = tmp_path / "t" / "plain" / "checkpoints" / "last.pth"
    old = load_checkpoint(last)
    del old["args"]["group_by_length"]
    save_checkpoint(old, last)
    run_main(*train_args(data_dir, tmp_path, "plain", *common))
    assert load_checkpoint(last)["args"]["group_by_length"] is False
    args = main.get_args_parser().parse_args(["--model", "meanpool"])
    assert main.resolve_group_by_length(args) is False and args.group_by_length is False


@pytest.mark.slow
def test_sequence_head_learns_order_that_meanpool_cannot(data_dir, tmp_path):
    """Classes 2i and 2i+1 hold the same frames in opposite order: only a sequence model separates them."""
    best = {}
    for model in ("bilstm", "meanpool"):
        run_main(*train_args(data_dir, tmp_path, model, "--model", model, "--epochs", 8, "--hidden_size", 32,
                             "--lr", 1e-2))
        best[model] = load_checkpoint(tmp_path / "t" / model / "checkpoints" / "best.pth")["best_metric"]
    assert best["bilstm"] >= 0.9
    assert best["meanpool"] <= 0.65  # the pair is told apart by appearance, never the order: ~50%


def probe_results(run_dir, split="test"):
    return json.loads((run_dir / f"probes_{split}.json").read_text())["probes"]


@pytest.mark.slow
def test_probes_show_which_head_uses_order(data_dir, tmp_path):
    """--probes: a head that learned the order pairs loses them when the frames are reversed; meanpool and bert
    --positions none (order-blind by construction) do not change at all under shuffle or reverse."""
    heads = {"bilstm": ["--model", "bilstm", "--hidden_size", 32, "--lr", 1e-2, "--epochs", 8],
             "meanpool": ["--lr", 1e-2, "--epochs", 3],
             "setbert": ["--model", "bert", "--positions", "none", "--hidden_size", 16, "--num_heads", 2,
                         "--epochs", 2]}
    probes = {}
    for name, extra in heads.items():
        run_main(*train_args(data_dir, tmp_path, name, *extra))
        run = tmp_path / "t" / name
        run_main("--mode", "test", "--model_ckpt", run / "checkpoints" / "best.pth", "--data_dir", data_dir,
                 "--split", "test", "--num_workers", 0, "--probes", "shuffle", "reverse", "static", "half")
        probes[name] = probe_results(run)
        with open(run / "probes_per_class_test.csv") as fh:
            rows = list(csv.DictReader(fh))
        assert [r["class_name"] for r in rows] == [f"class_{c}" for c in range(4)]
        assert sum(int(r["count"]) for r in rows) == 23
        for probe in ("shuffle", "reverse", "static", "half"):
            result = probes[name][probe]
            assert result["count"] == 23
            assert result["top1_drop"] == pytest.approx(probes[name]["none"]["top1"] - result["top1"])
            per_class_top1 = sum(float(r[probe]) * int(r["count"]) for r in rows) / 23
            assert per_class_top1 == pytest.approx(result["top1"])
    assert load_checkpoint(tmp_path / "t" / "setbert" / "checkpoints" / "best.pth")["model_config"]["positions"] == "none"
    # the unchanged run is test mode's own result
    assert probes["bilstm"]["none"]["top1"] == json.loads((tmp_path / "t" / "bilstm" / "results_test.json")
                                                           .read_text())["top1"]
    assert probes["bilstm"]["none"]["top1"] >= 0.9 and probes["bilstm"]["reverse"]["top1_drop"] >= 0.5
    for name in ("meanpool", "setbert"):
        assert probes[name]["shuffle"]["top1_drop"] == 0 and probes[name]["reverse"]["top1_drop"] == 0


def test_positions_and_probes_flags_are_refused_up_front_where_they_mean_nothing(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(main, "rank_group", lambda: pytest.fail("work started"))
    with pytest.raises(BadInputError, match="--positions applies to attnpool, bert, roberta"):
        run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 1, "--model", "bilstm", "--positions", "none"))
    with pytest.raises(BadInputError, match="--positions applies to attnpool, bert, roberta"):
        run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 1, "--model", "e2e_meanpool", "--positions", "none"))
    with pytest.raises(BadInputError, match="--probes evaluates a trained checkpoint"):
        run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 1, "--probes", "shuffle"))
    assert not (tmp_path / "t").exists()
    main.check_args(main.get_args_parser().parse_args(["--model", "e2e_bert", "--positions", "none"]))


def test_refuses_checkpoint_of_another_model_or_class_count(data_dir, tmp_path):
    run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 1))
    ckpt = tmp_path / "t" / "r" / "checkpoints" / "last.pth"
    with pytest.raises(BadInputError, match="checkpoint of model 'meanpool', not 'bilstm'"):
        run_main(*train_args(data_dir, tmp_path, "other", "--epochs", 2, "--model", "bilstm", "--model_ckpt", ckpt))
    with pytest.raises(BadInputError, match="other settings .*--seed 0 -> 5"):  # same folder, another run
        run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 2, "--seed", 5))
    six = write_data(tmp_path / "six", num_pairs=3)
    with pytest.raises(BadInputError, match="trained for 4 classes but the data has 6"):
        run_main(*train_args(six, tmp_path, "other", "--epochs", 2, "--model_ckpt", ckpt))
    with pytest.raises(BadInputError, match="trained for 4 classes but the data has 6"):
        run_main("--mode", "test", "--model_ckpt", ckpt, "--data_dir", six, "--num_workers", 0)


def test_shape_mismatch_is_a_clear_error(data_dir, tmp_path):
    bad = write_data(tmp_path / "bad")
    meta = json.loads((bad / "val.json").read_text())
    meta["memmap_size"][0] += 5
    (bad / "val.json").write_text(json.dumps(meta))
    with pytest.raises(BadInputError, match=r"val\.npy has shape .* but .*val\.json declares"):
        run_main(*train_args(bad, tmp_path, "r", "--epochs", 1))


@pytest.mark.slow
def test_num_cls_disagreeing_with_the_data_exits_with_one_line(data_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *map(str, train_args(data_dir, tmp_path, "r", "--num_cls", 7))],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "error: --num_cls 7 disagrees with the data" in proc.stderr and "Traceback" not in proc.stderr


def test_confusion_matrix_readable_with_101_classes(tmp_path):
    import matplotlib.image

    names = [f"ApplyEyeMakeup_{i:03d}" for i in range(101)]
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 3, size=(101, 101)) + np.diag(rng.integers(5, 30, size=101))
    plot_confusion(cm, names, tmp_path / "cm.png", dpi=40)  # a low dpi keeps the test quick; the default is 150
    side, font = confusion_layout(101)
    assert side >= 20 and 5 <= font <= 7  # ~0.2 inch per class: every label has room at a 5-7 pt font
    height, width = matplotlib.image.imread(tmp_path / "cm.png").shape[:2]
    assert min(height, width) >= side * 40


@pytest.mark.slow
@pytest.mark.parametrize("grouping", [[], ["--group_by_length", "--batch_size", 8]])
def test_ddp_on_gloo_matches_one_process(data_dir, tmp_path, grouping):
    args = [str(a) for a in train_args(data_dir, tmp_path, "ddp", "--epochs", 2, "--dropout", 0.0,
                                       "--frame_dropout", 0.2, *grouping)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "main.py"),
         *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_main(*train_args(data_dir, tmp_path, "single", "--epochs", 2, "--dropout", 0.0, "--frame_dropout", 0.2,
                         *grouping))
    ddp, single = epoch_records(tmp_path / "t" / "ddp"), epoch_records(tmp_path / "t" / "single")
    assert [r["val_count"] for r in ddp] == [31, 31]  # uneven shards (16 + 15), no duplicates counted
    for a, b in zip(ddp, single, strict=True):
        for key in ("val_loss", "val_top1", "val_top5", "val_mean_class_acc", "train_loss", "train_top1"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    run = tmp_path / "t" / "ddp"
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1  # only rank 0 writes
    assert (run / "train_log.txt").read_text().count("command:") == 1


# ----- bad input never stops, hangs or silently corrupts a run (issue 11) ------------------------------------------


@pytest.mark.parametrize(("argv", "named"), [
    (["--batch_size", "0"], "--batch_size"), (["--batch_size", "-4"], "--batch_size"),
    (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--epochs", "0"], "--epochs"),
    (["--backbone_lr", "-0.001"], "--backbone_lr"),
    (["--num_layers", "0"], "--num_layers"), (["--dropout", "1.5"], "--dropout"), (["--dropout", "1"], "--dropout"),
    (["--num_heads", "0"], "--num_heads"), (["--label_smoothing", "1"], "--label_smoothing"),
    (["--temporal_crop", "0"], "--temporal_crop"), (["--num_workers", "-1"], "--num_workers"),
])
def test_bad_flag_values_are_argparse_errors(tmp_path, argv, named, capsys):
    """Issue 11 item 8: --batch_size 0 trained with batch 1, bert --num_layers 0 ignored its input, --lr nan,
    --dropout 1.5 and bilstm --num_layers 0 ended in tracebacks, --epochs 0 claimed to be already trained."""
    with pytest.raises(SystemExit) as exc:
        main.get_args_parser().parse_args(["--mode", "train", "--model", "bilstm", "--data_dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"error: argument {named}: must be" in err and "usage:" in err


def test_heads_that_do_not_divide_the_width_are_refused_up_front(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(main, "rank_group", lambda: pytest.fail("work started"))
    with pytest.raises(BadInputError, match="--model bert: hidden_size 32 is not divisible by num_heads 3"):
        run_main(*train_args(data_dir, tmp_path, "r", "--model", "bert", "--num_heads", 3, "--hidden_size", 32))
    with pytest.raises(BadInputError, match="hidden_size 256 is not divisible by num_heads 5"):  # the default
        run_main(*train_args(data_dir, tmp_path, "r", "--model", "e2e_roberta", "--num_heads", 5))
    assert not (tmp_path / "t").exists()


def test_group_by_length_for_an_e2e_model_is_refused_up_front(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(main, "rank_group", lambda: pytest.fail("work started"))
    with pytest.raises(BadInputError, match="clips that all have --clip_len frames"):
        run_main(*train_args(data_dir, tmp_path, "r", "--model", "e2e_bert", "--group_by_length"))
    assert not (tmp_path / "t").exists()
    args = main.get_args_parser().parse_args(["--model", "e2e_bert", "--no-group_by_length"])
    main.check_args(args)  # switched off: nothing to refuse
    assert main.resolve_group_by_length(args) is False


def test_output_folder_that_is_a_file_is_refused_before_any_work(data_dir, tmp_path, capsys):
    """Issue 11 item 9: --expt_dir naming a file gave a FileExistsError traceback."""
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="--expt_dir.* is a file|lies under .*file, which is a file"):
        run_main(*train_args(data_dir, tmp_path / "file", "r", "--epochs", 1))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # what the command line does with it (run_cli, in this process)
        run_cli(main.main, main.get_args_parser().parse_args(map(str, train_args(data_dir, tmp_path / "file", "r"))))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("error: ") == 1 and "Traceback" not in err


def test_nonfinite_embeddings_are_named_before_training(tmp_path):
    """Issue 11 item 4: a NaN row in train.npy trained with loss nan, exited 0 and saved NaN weights."""
    data = write_data(tmp_path / "data")
    arr = np.load(data / "train.npy", mmap_mode="r+")
    arr[5, 1, 3] = np.nan
    arr[9, 0, 0] = np.inf
    arr.flush()
    del arr
    with pytest.raises(BadInputError, match=r"2 video\(s\) have non-finite \(NaN/inf\) embeddings: train_00005, "
                                            r"train_00009"):
        run_main(*train_args(data, tmp_path, "r", "--epochs", 1))
    assert not (tmp_path / "t" / "r" / "checkpoints").exists()


def test_nonfinite_validation_inputs_are_named(tmp_path):
    data = write_data(tmp_path / "data")
    arr = np.load(data / "val.npy", mmap_mode="r+")
    arr[4, 0, 0] = np.nan
    arr.flush()
    del arr
    with pytest.raises(BadInputError, match=r"non-finite \(NaN/inf\) model outputs for 1 video\(s\): val_00004"):
        run_main(*train_args(data, tmp_path, "r", "--epochs", 1))


def test_nonfinite_loss_stops_training_naming_step_and_videos(data_dir, tmp_path, monkeypatch):
    """A loss that becomes NaN mid-run (here: forced at the third step) stops the run, names the step and the
    batch's videos, and leaves no checkpoint from the non-finite state."""
    run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 1))
    last = tmp_path / "t" / "r" / "checkpoints" / "last.pth"
    before = last.read_bytes()
    calls = {"n": 0}
    real = torch.nn.CrossEntropyLoss.forward

    def poisoned(self, logits, labels):
        calls["n"] += 1
        loss = real(self, logits, labels)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(torch.nn.CrossEntropyLoss, "forward", poisoned)
    with pytest.raises(BadInputError, match=r"training loss is nan at step 7 \(epoch 2\) on a batch of 16 video\(s\): "
                                            r"train_\d{5}, .*last finite state"):
        run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 3))
    assert last.read_bytes() == before


def test_resume_refuses_other_head_settings_and_says_a_changed_schedule(data_dir, tmp_path, capfd):
    """Issue 11 item 8: --model_ckpt with another --hidden_size silently kept the checkpoint's size."""
    run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 1, "--model", "bilstm", "--hidden_size", 16))
    ckpt = tmp_path / "t" / "r" / "checkpoints" / "last.pth"
    with pytest.raises(BadInputError, match=r"other head settings: --hidden_size 32 \(the checkpoint's model has 16\)"):
        run_main(*train_args(data_dir, tmp_path, "other", "--epochs", 2, "--model", "bilstm", "--hidden_size", 32,
                             "--model_ckpt", ckpt))
    with pytest.raises(BadInputError, match=r"--num_layers 2 \(the checkpoint's model has 1\)"):
        run_main(*train_args(data_dir, tmp_path, "other", "--epochs", 2, "--model", "bilstm", "--hidden_size", 16,
                             "--num_layers", 2, "--resume", ckpt))
    run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 2, "--model", "bilstm", "--hidden_size", 16,
                         "--lr", 5e-3))
    assert "resuming with a changed schedule (--epochs 1 -> 2, --lr 0.01 -> 0.005)" in capfd.readouterr().err
    resumed = load_checkpoint(ckpt)
    assert resumed["epoch"] == 2
    assert [g["initial_lr"] for g in resumed["optimizer"]["param_groups"]] == [5e-3, 5e-3]  # the new peak is used


def test_second_training_run_in_one_folder_is_refused(data_dir, tmp_path):
    from utils import OutputLock

    run = tmp_path / "t" / "r"
    with OutputLock(run):  # what a run in progress holds
        with pytest.raises(BadInputError, match=f"in use by another run \\(pid {os.getpid()}"):
            run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 1))
    run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 1))  # released: runs


def test_confusion_matrix_with_names_no_installed_font_draws(tmp_path, monkeypatch):
    """Issue 11 item 11: CJK and emoji class names rendered as boxes. With no installed font that has their
    characters (as on this machine), the axes show class indices and a legend spells the names with escapes;
    with such a font, the names are drawn in it."""
    import warnings

    import matplotlib.pyplot as plt

    import reports

    drawn = {}
    real_close = plt.close

    def keep(fig=None):
        if fig is not None and hasattr(fig, "axes") and fig.axes:
            ax = fig.axes[0]
            drawn["ticks"] = [t.get_text() for t in ax.get_yticklabels()]
            drawn["texts"] = [t.get_text() for t in fig.texts]
        real_close(fig)

    monkeypatch.setattr(plt, "close", keep)
    names = ["Biking", "動作", "🚴 ride"]
    if reports.label_font(names) is None:  # the fallback, the case of this machine
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # "Glyph ... missing from font" would be a warning
            plot_confusion(np.eye(3), names, tmp_path / "cm.png", title="test")
        assert drawn["ticks"] == ["0", "1", "2"]
        assert "1: \\u52d5\\u4f5c" in drawn["texts"][0] and "2: \\U0001f6b4 ride" in drawn["texts"][0]
    monkeypatch.setattr(reports, "label_font", lambda texts: "DejaVu Sans")  # as if a covering font were found
    plot_confusion(np.eye(3), ["Biking", "Café", "Walk"], tmp_path / "cm2.png")
    assert drawn["ticks"] == ["Biking", "Café", "Walk"] and drawn["texts"] == []


def test_segments_and_views_over_embeddings_train_test_and_probes(data_dir, tmp_path):
    """--clip_len T (alias --num_segments) on the embedding route: recorded in the checkpoint, used by test mode by
    default; --num_clips K views are averaged in one place (each video's probabilities are the softmax of its
    views' mean logits), and an order-blind head gives the same accuracy under shuffle and reverse with views."""
    from routes import model_from_checkpoint
    from sampling import eval_indices

    run_main(*train_args(data_dir, tmp_path, "seg", "--epochs", 2, "--num_segments", 4))
    run = tmp_path / "t" / "seg"
    ckpt_path = run / "checkpoints" / "best.pth"
    best = load_checkpoint(ckpt_path)
    assert (best["data_info"]["clip_len"], best["data_info"]["num_clips"]) == (4, 1)
    assert "4 segments" in (run / "train_log.txt").read_text()
    run_main("--mode", "test", "--model_ckpt", ckpt_path, "--data_dir", data_dir, "--split", "test",
             "--num_workers", 0, "--batch_size", 5)
    results = json.loads((run / "results_test.json").read_text())
    assert (results["clip_len"], results["num_clips"], results["count"]) == (4, 1, 23)  # the checkpoint's
    run_main("--mode", "test", "--model_ckpt", ckpt_path, "--data_dir", data_dir, "--split", "test",
             "--num_workers", 0, "--batch_size", 5, "--num_clips", 3, "--probes", "shuffle", "reverse")
    results = json.loads((run / "results_test.json").read_text())
    assert (results["clip_len"], results["num_clips"], results["count"]) == (4, 3, 23)
    # the frames: 3 views of 4 per video, every view counted in the rate
    assert results["infer_frames_per_s"] == pytest.approx(12 * results["infer_videos_per_s"], rel=0.02)
    probes = probe_results(run)
    assert probes["shuffle"]["top1_drop"] == 0 and probes["reverse"]["top1_drop"] == 0  # meanpool is order-blind

    model = model_from_checkpoint(__import__("checkpoint").read_checkpoint(ckpt_path))
    meta = json.loads((data_dir / "test.json").read_text())
    rows = np.load(data_dir / "test.npy", mmap_mode="r")
    rec = meta["data"][0]
    views = torch.from_numpy(np.asarray(rows[rec["video_idx"]][eval_indices(rec["video_length"], 4, 3)]))
    with torch.no_grad():
        probs = model(views, torch.full((3,), 4)).mean(0).softmax(-1)
    with open(run / "predictions_test.csv") as fh:
        row = next(r for r in csv.DictReader(fh) if r["video"] == rec["video_name"])
    assert float(row["prob1"]) == pytest.approx(float(probs.max()), abs=1e-5)


def test_views_without_segments_and_grouping_with_segments_are_refused(data_dir, tmp_path):
    with pytest.raises(BadInputError, match="--num_clips 2 takes views of --clip_len segments"):
        run_main(*train_args(data_dir, tmp_path, "v", "--epochs", 1, "--num_clips", 2))
    with pytest.raises(BadInputError, match="--clip_len frames"):
        run_main(*train_args(data_dir, tmp_path, "g", "--epochs", 1, "--clip_len", 4, "--model", "bilstm",
                             "--group_by_length"))


def test_unlabelled_split_gets_predictions_without_accuracy_and_a_mixed_one_is_refused(data_dir, tmp_path, capfd):
    """An official test split without labels (label_idx -1, as stage 2 embeds SSv2's and Jester's): test mode writes
    predictions_<split>.csv in the labelled format with true_label and correct empty, results saying labelled:
    false, and one log line instead of an accuracy; a split of both kinds, and --probes on it, are refused;
    compare_runs leaves it out of the comparison."""
    import compare_runs

    run_main(*train_args(data_dir, tmp_path, "r", "--epochs", 1))
    ckpt = tmp_path / "t" / "r" / "checkpoints" / "best.pth"
    data = tmp_path / "data"
    videos, labels = make_order_task(9, num_pairs=2, dim=DIM, seed=7)
    names = [f"class_{c}" for c in range(4)]
    write_embedding_split(data, "test", videos, np.full(9, -1), class_names=names)
    test = ["--mode", "test", "--model_ckpt", ckpt, "--data_dir", data, "--split", "test", "--num_workers", 0]
    capfd.readouterr()
    run_main(*test)
    assert "test is unlabelled (label_idx -1 for all 9 videos): no accuracy computed" in capfd.readouterr().err
    run = tmp_path / "t" / "r"
    results = json.loads((run / "results_test.json").read_text())
    assert results["labelled"] is False and results["count"] == 9 and "top1" not in results
    with open(run / "predictions_test.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 9 and all(r["true_label"] == "" and r["correct"] == "" for r in rows)
    assert all(r["predicted"] == r["top1"] in names and float(r["prob1"]) > 0 for r in rows)
    assert not (run / "per_class_test.csv").exists() and not (run / "confusion_test.png").exists()
    with pytest.raises(BadInputError, match="no label"):
        compare_runs.correctness(run / "predictions_test.csv")
    summary = compare_runs.summarise_run(run, "test", {"g": names[:2]})
    assert summary.predictions is None and summary.row["test_top1"] is None and "g_top1" not in summary.row
    with pytest.raises(BadInputError, match="unlabelled"):
        run_main(*test, "--probes", "shuffle")
    write_embedding_split(data, "test", videos, np.array([-1, 0, 1, 2, 3, 0, 1, 2, 3]), class_names=names)
    with pytest.raises(BadInputError, match="1 of 9 videos are unlabelled"):
        run_main(*test)
    # training never takes an unlabelled video: it is a bad record, left out and named
    write_embedding_split(data, "train", videos, np.array([-1, 0, 1, 2, 3, 0, 1, 2, 3]), class_names=names)
    from dataset import load_split_info
    info = load_split_info(data, "train")
    assert len(info) == 8 and "unlabelled (label_idx -1)" in info.skipped[0]["reason"]


def test_segment_sampling_is_deterministic_under_the_seed(data_dir, tmp_path):
    """With --clip_len the random frame per segment comes from (seed, epoch, video) (tests/test_dataset.py pins
    the draws): the same --seed replays the whole run exactly, another seed gives another run."""
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run_main(*train_args(data_dir, tmp_path, name, "--epochs", 2, "--clip_len", 3, "--seed", seed,
                             "--dropout", 0.0))
    a, b, c = (epoch_records(tmp_path / "t" / n) for n in "abc")
    assert a == b and a != c


def test_positions_time_trains_tests_with_probes_and_rebuilds(data_dir, tmp_path):
    """--positions time through main.py: the batches carry the frames' times (the split's fps), the checkpoint
    rebuilds the head with its setting, and test mode runs the probes with them; e2e refuses it up front."""
    run_main(*train_args(data_dir, tmp_path, "timed", "--model", "attnpool", "--num_layers", 2, "--positions", "time",
                         "--hidden_size", 16, "--num_heads", 2, "--epochs", 1))
    run = tmp_path / "t" / "timed"
    ckpt = load_checkpoint(run / "checkpoints" / "best.pth")
    assert ckpt["model_config"]["positions"] == "time"
    run_main("--mode", "test", "--model_ckpt", run / "checkpoints" / "best.pth", "--data_dir", data_dir,
             "--split", "test", "--num_workers", 0, "--probes", "shuffle", "half")
    probes = probe_results(run)
    assert probes["shuffle"]["count"] == probes["none"]["count"] == 23
    with pytest.raises(BadInputError, match="--positions time reads each frame's timestamp"):
        main.check_args(main.get_args_parser().parse_args(["--model", "e2e_bert", "--positions", "time"]))
    with pytest.raises(BadInputError, match="num_layers 1 has none"):
        main.check_args(main.get_args_parser().parse_args(["--model", "attnpool", "--positions", "rotary"]))


def test_positions_time_with_segments_and_views(data_dir, tmp_path):
    """--positions time with TSN segments and test-time views: each view row carries its own frames' times, so
    training, test mode with 2 views and the probes all run, and test mode counts every video once."""
    run_main(*train_args(data_dir, tmp_path, "timed_seg", "--model", "attnpool", "--num_layers", 2, "--positions",
                         "time", "--hidden_size", 16, "--num_heads", 2, "--epochs", 1, "--num_segments", 4))
    run = tmp_path / "t" / "timed_seg"
    run_main("--mode", "test", "--model_ckpt", run / "checkpoints" / "best.pth", "--data_dir", data_dir,
             "--split", "test", "--num_workers", 0, "--num_clips", 2, "--probes", "shuffle", "half")
    probes = probe_results(run)
    assert probes["shuffle"]["count"] == probes["half"]["count"] == probes["none"]["count"] == 23

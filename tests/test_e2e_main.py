"""main.py --model e2e_*: the CNN trained jointly with the head on stage 1's frames of the demo data.

One module-scoped pipeline (make_demo_data -> prepare_ucf101 at 64 px, 1 fps) and one 6-epoch e2e_bilstm run that
several tests read: it learns, its backbone moves, a stopped-and-resumed run replays it exactly, test mode writes
its reports and predict.py on a raw video gives test mode's probabilities.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import main
import make_demo_data
import prepare_ucf101
from checkpoint import load_checkpoint
from clip_dataset import ClipDataset
from layout import read_class_names
from models.e2e import build_e2e_model
from probes import ProbedDataset, probe_indices
from tests.conftest import ROOT
from tests.synthetic import make_order_task, write_embedding_split
from utils import BadInputError, set_seed

CLASSES = ["GrowingDisc", "ShrinkingDisc", "PlainSquare", "Triangle"]
# lr and batch checked over seeds 0-2 (best val top-1 0.50-0.75 on 8 val videos, chance 0.25) with 3 epochs; with
# today's package versions (OpenCV 5.1, numpy 2.4) 3 epochs gave 0.375 on seed 0 (the same on fd533bd), so 6.
TRAIN = ["--weights", "none", "--image_size", 64, "--clip_len", 4, "--batch_size", 4, "--lr", 1e-3,
         "--hidden_size", 32, "--seed", 0, "--gpu_id", -1, "--save_interval", 0]
EPOCHS = 6


# slow: its fixture trains a CNN that must beat chance, and one test launches torchrun
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def run_main(*argv) -> None:
    args = main.get_args_parser().parse_args([str(a) for a in argv])
    assert main.main(args) == 0


def train_args(stage1: Path, expts: Path, run_name: str, *extra) -> list:
    return ["--mode", "train", "--model", "e2e_bilstm", "--split_json_dir", stage1, "--expt_dir", expts,
            "--expt_name", "e", "--run_name", run_name, "--num_workers", 0, *TRAIN, *extra]


def epoch_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"} for line in lines]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, Path]:
    """16 train / 8 val / 8 test videos of 4 classes, frames at 64 px and 1 fps; and the straight 3-epoch run."""
    d = tmp_path_factory.mktemp("e2e_main")
    argv = ["-o", str(d / "demo"), "--groups", "4", "--clips", "2", "--classes", *CLASSES, "--size", "64",
            "--workers", "1"]
    assert make_demo_data.main(make_demo_data.get_args_parser().parse_args(argv)) in (0, None)
    argv = ["-v", str(d / "demo" / "videos"), "-o", str(d / "stage1"), "--split_dir", str(d / "demo" / "splits"),
            "--split_id", "1", "-fps", "1", "--frame_size", "64", "--workers", "1"]
    assert prepare_ucf101.main(prepare_ucf101.get_args_parser().parse_args(argv)) in (0, None)
    torch.set_num_threads(1)
    run_main(*train_args(d / "stage1", d / "expts", "straight", "--epochs", EPOCHS))
    return {"root": d, "videos": d / "demo" / "videos", "stage1": d / "stage1", "expts": d / "expts",
            "run": d / "expts" / "e" / "straight"}


def initial_model(**kwargs) -> torch.nn.Module:
    """The model main.py builds before training: same seed, same order of initialisation."""
    set_seed(0)
    return build_e2e_model(num_classes=len(CLASSES), backbone="resnet18", weights="none", **kwargs)


def test_e2e_learns_the_demo_classes_and_trains_its_backbone(demo):
    records = epoch_records(demo["run"])
    assert [r["epoch"] for r in records] == list(range(1, EPOCHS + 1))
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert all(r["val_count"] == 8 for r in records)
    best = load_checkpoint(demo["run"] / "checkpoints" / "best.pth")
    assert best["best_metric"] >= 0.5  # 4 classes: chance is 0.25
    assert best["model_name"] == "e2e_bilstm" and best["feature_dim"] == 512
    info = best["data_info"]  # what predict.py needs to cut the same clips from a raw video
    assert (info["fps"], info["frame_size"], info["clip_len"], info["image_size"], info["num_clips"]) == (
        1.0, 64, 4, 64, 1)
    assert (info["backbone"], info["weights"]) == ("resnet18", "none")

    last = load_checkpoint(demo["run"] / "checkpoints" / "last.pth")["model_state"]
    init = initial_model(name="e2e_bilstm", hidden_size=32).state_dict()
    conv = "backbone.layer1.0.conv1.weight"
    assert not torch.equal(last[conv], init[conv])  # not frozen: the backbone learns
    assert (demo["run"] / "curves.png").is_file() and list((demo["run"] / "tensorboard").glob("events.*"))


def test_frozen_backbone_keeps_its_initial_weights(demo, tmp_path):
    """--freeze_backbone_stages 5 (resnet: stem + 4 layers): weights and BatchNorm statistics stay as built."""
    run_main(*train_args(demo["stage1"], tmp_path, "frozen", "--model", "e2e_bert", "--num_heads", 2,
                         "--freeze_backbone_stages", 5, "--epochs", 1))
    ckpt = load_checkpoint(tmp_path / "e" / "frozen" / "checkpoints" / "last.pth")
    assert ckpt["model_config"]["freeze_backbone_stages"] == 5
    init = initial_model(name="e2e_bert", hidden_size=32, num_heads=2).state_dict()
    backbone = [k for k in init if k.startswith("backbone.")]
    assert backbone and all(torch.equal(ckpt["model_state"][k], init[k]) for k in backbone)
    assert not torch.equal(ckpt["model_state"]["head.classifier.weight"], init["head.classifier.weight"])


def test_stopped_and_resumed_run_equals_the_straight_run(demo):
    """--stop_after_epochs 1, then the same command: metrics.jsonl and weights equal the uninterrupted run's,
    although the resumed part decodes clips in a worker process (data depends on seed, epoch, index only)."""
    stage1, expts = demo["stage1"], demo["expts"]
    run_main(*train_args(stage1, expts, "resumed", "--epochs", EPOCHS, "--stop_after_epochs", 1))
    assert len(epoch_records(expts / "e" / "resumed")) == 1
    run_main(*train_args(stage1, expts, "resumed", "--epochs", EPOCHS, "--num_workers", 1))
    assert epoch_records(expts / "e" / "resumed") == epoch_records(demo["run"])
    final = load_checkpoint(demo["run"] / "checkpoints" / "last.pth")["model_state"]
    resumed = load_checkpoint(expts / "e" / "resumed" / "checkpoints" / "last.pth")["model_state"]
    for key, value in final.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6)


def test_test_mode_reports_and_predict_on_a_raw_video_agree(demo, tmp_path):
    best = demo["run"] / "checkpoints" / "best.pth"
    run_main("--mode", "test", "--model_ckpt", best, "--split_json_dir", demo["stage1"], "--split", "test",
             "--num_workers", 0, "--batch_size", 3, "--gpu_id", -1)
    results = json.loads((demo["run"] / "results_test.json").read_text())
    assert results["count"] == 8 and results["model"] == "e2e_bilstm"
    assert (results["clip_len"], results["image_size"], results["num_clips"]) == (4, 64, 1)  # the checkpoint's
    with open(demo["run"] / "predictions_test.csv") as fh:
        rows = {r["video"]: r for r in csv.DictReader(fh)}
    assert len(rows) == 8 and (demo["run"] / "confusion_test.png").is_file()
    run_main("--mode", "test", "--model_ckpt", best, "--split_json_dir", demo["stage1"], "--split", "val",
             "--num_workers", 0, "--batch_size", 3, "--gpu_id", -1, "--num_clips", 2)  # two views averaged
    results = json.loads((demo["run"] / "results_val.json").read_text())
    assert results["count"] == 8 and results["num_clips"] == 2

    name = "v_ShrinkingDisc_g04_c01"
    out = tmp_path / "pred.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), str(demo["videos"] / "ShrinkingDisc" / f"{name}.avi"),
         "--model_ckpt", str(best), "--topk", "4", "--json", str(out), "--gpu_id", "-1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    predicted = {t["label"]: t["prob"] for t in json.loads(out.read_text())[0]["topk"]}
    tested = {rows[name][f"top{r}"]: float(rows[name][f"prob{r}"]) for r in range(1, 5)}
    assert predicted.keys() == tested.keys()
    for label, prob in tested.items():
        assert predicted[label] == pytest.approx(prob, abs=1e-4), label


def test_test_mode_on_an_unlabelled_split_writes_predictions_only(demo, tmp_path):
    """An e2e checkpoint on a split without labels (label_idx -1, as SSv2's test) with 2 views: the predictions of
    the labelled run, without accuracy."""
    best = demo["run"] / "checkpoints" / "best.pth"
    entries = json.loads((demo["stage1"] / "test_ucf101.json").read_text())
    blind = [{k: v for k, v in e.items() if k != "class_name"} | {"label_idx": -1} for e in entries]
    (demo["stage1"] / "blind_ucf101.json").write_text(json.dumps(blind))
    common = ["--mode", "test", "--model_ckpt", best, "--split_json_dir", demo["stage1"], "--num_workers", 0,
              "--batch_size", 3, "--gpu_id", -1, "--num_clips", 2, "--expt_dir", tmp_path, "--run_name", "r"]
    run_main(*common, "--split", "test")
    run_main(*common, "--split", "blind")
    results = json.loads((tmp_path / "default" / "r" / "results_blind.json").read_text())
    assert results["labelled"] is False and results["count"] == 8 and "top1" not in results
    rows = {}
    for split in ("test", "blind"):
        with open(tmp_path / "default" / "r" / f"predictions_{split}.csv") as fh:
            rows[split] = {r["video"]: r for r in csv.DictReader(fh)}
    for name, row in rows["blind"].items():
        assert row["true_label"] == row["correct"] == ""
        assert (row["top1"], row["prob1"]) == (rows["test"][name]["top1"], rows["test"][name]["prob1"])


def _head_checkpoint(tmp_path: Path, stage1: Path, dim: int, class_names: list[str]) -> Path:
    """A bilstm head trained by main.py on (synthetic) embeddings of `dim` features and these classes."""
    data = tmp_path / f"emb{dim}"
    for split, seed in (("train", 0), ("val", 1)):
        videos, labels = make_order_task(16, num_pairs=2, dim=dim, seed=seed)
        write_embedding_split(data, split, videos, labels, class_names=class_names)
    run_main("--mode", "train", "--model", "bilstm", "--data_dir", data, "--expt_dir", tmp_path, "--expt_name", "h",
             "--run_name", f"d{dim}", "--hidden_size", 32, "--epochs", 1, "--batch_size", 8, "--num_workers", 0,
             "--gpu_id", -1)
    return tmp_path / "h" / f"d{dim}" / "checkpoints" / "last.pth"


def test_init_head_from_a_head_trained_on_embeddings(demo, tmp_path):
    names = read_class_names(demo["stage1"])
    head = _head_checkpoint(tmp_path, demo["stage1"], 512, names)
    # --lr 0: the e2e checkpoint's head is exactly the loaded one (standardisation included); one step is enough
    run_main(*train_args(demo["stage1"], tmp_path, "init", "--init_head_from", head, "--lr", 0, "--epochs", 1,
                         "--stop_after_steps", 1, "--hidden_size", 8))
    e2e = load_checkpoint(tmp_path / "e" / "init" / "checkpoints" / "last.pth")
    assert e2e["model_config"]["hidden_size"] == 32  # the head's own size, not --hidden_size
    for key, value in load_checkpoint(head)["model_state"].items():
        assert torch.equal(e2e["model_state"][f"head.{key}"], value), key

    with pytest.raises(BadInputError, match=r"holds a 'bilstm' head, not the head of e2e_bert"):
        run_main(*train_args(demo["stage1"], tmp_path, "bert", "--model", "e2e_bert", "--init_head_from", head))
    small = _head_checkpoint(tmp_path, demo["stage1"], 8, names)
    with pytest.raises(BadInputError, match=r"does not fit: input_dim 8 \(resnet18 gives 512\)"):
        run_main(*train_args(demo["stage1"], tmp_path, "small", "--init_head_from", small))
    other = _head_checkpoint(tmp_path / "other", demo["stage1"], 512, [f"c{i}" for i in range(4)])
    with pytest.raises(BadInputError, match="other class names"):
        run_main(*train_args(demo["stage1"], tmp_path, "other", "--init_head_from", other))


def test_probes_apply_to_the_clip_frames(demo, tmp_path):
    """--probes on an e2e checkpoint: each probe changes the frames of the clip as it is read, and the official
    split id stage 1 recorded travels into the checkpoint."""
    best = demo["run"] / "checkpoints" / "best.pth"
    assert load_checkpoint(best)["data_info"]["split_id"] == 1
    run_main("--mode", "test", "--model_ckpt", best, "--split_json_dir", demo["stage1"], "--split", "test",
             "--num_workers", 0, "--batch_size", 3, "--gpu_id", -1, "--probes", "reverse", "half", "static")
    probes = json.loads((demo["run"] / "probes_test.json").read_text())["probes"]
    assert set(probes) == {"none", "reverse", "half", "static"} and all(p["count"] == 8 for p in probes.values())
    assert probes["none"]["top1"] == json.loads((demo["run"] / "results_test.json").read_text())["top1"]

    entries = json.loads((demo["stage1"] / "test_ucf101.json").read_text())
    for views in (1, 2):
        ds = ClipDataset(demo["stage1"] / "frames", entries, clip_len=4, image_size=64, num_clips=views)
        clip, label, index = ds[2]
        name = ds.names[index]
        reversed_, _, _ = ProbedDataset(ds, "reverse", ds.names, 0, time_axis=-4)[2]
        half, _, _ = ProbedDataset(ds, "half", ds.names, 0, time_axis=-4)[2]
        assert torch.equal(reversed_, clip.flip(-4)) and torch.equal(half, clip.index_select(-4, torch.tensor([0, 2])))
        shuffled = ProbedDataset(ds, "shuffle", ds.names, 7, time_axis=-4)[2][0]
        order = torch.from_numpy(probe_indices("shuffle", 4, name, 7))
        assert torch.equal(shuffled, clip.index_select(-4, order))


def test_e2e_refuses_missing_split_dir_and_embedding_checkpoints(demo, tmp_path):
    with pytest.raises(BadInputError, match="need --split_json_dir"):
        run_main("--mode", "train", "--model", "e2e_bilstm", "--expt_dir", tmp_path, "--epochs", 1)
    with pytest.raises(BadInputError, match="--data_dir is required"):
        run_main("--mode", "train", "--model", "bilstm", "--expt_dir", tmp_path, "--epochs", 1)
    best = demo["run"] / "checkpoints" / "best.pth"
    with pytest.raises(BadInputError, match="checkpoint of model 'e2e_bilstm', not 'e2e_bert'"):
        run_main("--mode", "test", "--model_ckpt", best, "--model", "e2e_bert", "--split_json_dir", demo["stage1"])


def test_timm_vit_trains_freezes_k_blocks_resumes_and_predicts(demo, tmp_path):
    """e2e_meanpool over timm's random test ViT at 32 px with the patch embedding and first 2 blocks frozen and
    timm's own gradient checkpointing on: the frozen weights stay as built while the rest learns; stopped after an
    epoch and rerun, it equals the straight run; test mode and predict.py on a raw video give the same
    probabilities."""
    import predict

    stage1 = demo["stage1"]
    vit = ["--model", "e2e_meanpool", "--backbone", "timm:test_vit", "--image_size", 32,
           "--freeze_backbone_stages", 2, "--grad_checkpointing", "--epochs", 2, "--lr", 3e-3]
    run_main(*train_args(stage1, tmp_path, "vit", *vit))
    run_dir = tmp_path / "e" / "vit"
    last = load_checkpoint(run_dir / "checkpoints" / "last.pth")
    record = last["model_config"]["backbone_record"]
    assert (record["backbone"], record["dim"], record["resize"]["size"]) == ("timm:test_vit", 64, 32)
    assert record["channels_last"] is False and last["model_config"]["grad_checkpointing"] is True
    trained = build_e2e_model(**{**last["model_config"], "weights": "none"})  # the model the run trained
    assert trained.backbone.model.grad_checkpointing  # timm's set_grad_checkpointing, not a wrapper of ours
    assert not any(type(m).__name__.startswith("Checkpointed") for m in trained.modules())
    set_seed(0)  # the model main.py builds before training
    init = build_e2e_model("e2e_meanpool", num_classes=len(CLASSES), backbone="timm:test_vit",
                           weights="none", image_size=32, hidden_size=32).state_dict()
    frozen = ("backbone.model.patch_embed.", "backbone.model.cls_token", "backbone.model.pos_embed",
              "backbone.model.blocks.0.", "backbone.model.blocks.1.")
    for key, value in init.items():
        if key.startswith("backbone."):
            assert torch.equal(last["model_state"][key], value) == key.startswith(frozen), key

    run_main(*train_args(stage1, tmp_path, "vit_resumed", *vit, "--stop_after_epochs", 1))
    run_main(*train_args(stage1, tmp_path, "vit_resumed", *vit))
    assert epoch_records(tmp_path / "e" / "vit_resumed") == epoch_records(run_dir)
    resumed = load_checkpoint(tmp_path / "e" / "vit_resumed" / "checkpoints" / "last.pth")["model_state"]
    for key, value in last["model_state"].items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6)

    best = run_dir / "checkpoints" / "best.pth"
    run_main("--mode", "test", "--model_ckpt", best, "--split_json_dir", stage1, "--split", "test", "--num_workers", 0,
             "--batch_size", 4, "--gpu_id", -1)
    with open(run_dir / "predictions_test.csv") as fh:
        row = next(csv.DictReader(fh))
    predictor = predict.load_predictor(best)
    video = next(demo["videos"].glob(f"*/{row['video']}.*"))
    probs = predict.predict_video(predictor, video).probs
    for r in range(1, 5):
        label, prob = row[f"top{r}"], float(row[f"prob{r}"])
        assert probs[predictor.class_names.index(label)] == pytest.approx(prob, abs=1e-4), label
    # one window longer than the video: the e2e route cuts the same clip from the same frames
    (whole,) = predict.predict_windows(predictor, video, window=1000.0, stride=1000.0).results
    assert whole.window.partial and whole.num_frames == predictor_frames(predictor, video)
    np.testing.assert_allclose(whole.probs, probs, atol=1e-5)


def predictor_frames(predictor, video) -> int:
    import predict

    return len(predict.decode_video(video, predictor.settings).frames)


def test_ddp_on_gloo_trains_e2e(demo, tmp_path):
    # layer4 trainable (the rest frozen, to keep the test short): DDP syncs backbone and head gradients
    args = [str(a) for a in train_args(demo["stage1"], tmp_path, "ddp", "--epochs", 1, "--batch_size", 8,
                                       "--freeze_backbone_stages", 4)]
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "main.py"),
         *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "e" / "ddp"
    assert [r["val_count"] for r in epoch_records(run)] == [8]  # 4 + 4 over the two ranks, none twice
    ckpt = load_checkpoint(run / "checkpoints" / "last.pth")
    assert ckpt["model_name"] == "e2e_bilstm" and len(ckpt["rng"]) == 2
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 1

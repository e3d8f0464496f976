"""predict.py against the embeddings route on a tiny demo dataset: same probabilities for the same raw videos.

One module-scoped pipeline (make_demo_data -> prepare_ucf101 -> prepare_data x3 -> main.py train bert and
meanpool -> main.py --mode test), run in-process so the interpreter's imports are paid once.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import main as main_script
import make_demo_data
import predict
import prepare_data
import prepare_ucf101
import routes
from tests.conftest import ROOT
from transforms import load_frame
from utils import BadInputError

CLASSES = ["GrowingDisc", "ShrinkingDisc", "PlainSquare"]
CLASSES_SORTED = sorted(CLASSES)  # classInd order


def _run(module, argv: list[str]) -> None:
    assert module.main(module.get_args_parser().parse_args(argv)) in (0, None)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("predict")
    demo, stage1, data, expts = d / "demo", d / "stage1", d / "data", d / "expts"
    _run(make_demo_data, ["-o", str(demo), "--classes", *CLASSES, "--groups", "3", "--clips", "2", "--size", "72x56",
                          "--min_seconds", "3", "--max_seconds", "5", "--workers", "1"])
    _run(prepare_ucf101, ["-v", str(demo / "videos"), "-o", str(stage1), "--split_dir", str(demo / "splits"),
                          "-fps", "1", "--frame_size", "48", "--jpeg_quality", "80", "--workers", "1"])
    for split in ("train", "val", "test"):
        _run(prepare_data, ["-s", split, "-f", str(stage1 / "frames"), "-j", str(stage1 / f"{split}_ucf101.json"),
                            "-o", str(data), "--weights", "none", "--image_size", "64", "--seed", "0", "-nw", "0",
                            "-bs", "16"])
    common = ["--data_dir", str(data), "--expt_dir", str(expts), "--expt_name", "e", "--num_workers", "0",
              "--gpu_id", "0", "--batch_size", "8"]
    _run(main_script, ["--mode", "train", "--model", "bert", "--num_layers", "2", "--hidden_size", "32",
                       "--num_heads", "2", "--epochs", "2", "--lr", "1e-3", *common])
    _run(main_script, ["--mode", "train", "--model", "meanpool", "--epochs", "1", *common])
    bert_ckpt = expts / "e" / "bert" / "checkpoints" / "best.pth"
    _run(main_script, ["--mode", "test", "--model_ckpt", str(bert_ckpt), "--split", "test", *common])
    return {"demo": demo, "stage1": stage1, "data": data, "bert": bert_ckpt,
            "meanpool": expts / "e" / "meanpool" / "checkpoints" / "best.pth",
            "predictions": expts / "e" / "bert" / "predictions_test.csv"}


def _embedding_route_probs(pipeline: dict[str, Path]) -> dict[str, dict[str, float]]:
    with open(pipeline["predictions"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    k = sum(1 for key in rows[0] if key.startswith("prob"))
    return {r["video"]: {r[f"top{i}"]: float(r[f"prob{i}"]) for i in range(1, k + 1)} for r in rows}


def _source(pipeline: dict[str, Path], video_name: str) -> Path:
    manifest = json.loads((pipeline["stage1"] / "frames" / "manifest.json").read_text())
    return pipeline["demo"] / "videos" / manifest["videos"][video_name]["source"]


def test_same_probabilities_as_embedding_route(pipeline):
    expected = _embedding_route_probs(pipeline)
    predictor = predict.load_predictor(pipeline["bert"])
    assert predictor.settings.jpeg_quality == 80 and predictor.settings.frame_size == 48
    names = sorted(expected)[:1] + sorted(expected)[-1:]  # one GrowingDisc, one ShrinkingDisc test video
    for name in names:
        pred = predict.predict_video(predictor, _source(pipeline, name))
        got = {predictor.class_names[i]: float(p) for i, p in enumerate(pred.probs)}
        for label, prob in expected[name].items():
            assert got[label] == pytest.approx(prob, abs=1e-4), (name, label, got, expected[name])
        assert pred.num_frames == json.loads((pipeline["stage1"] / "frames" / "manifest.json").read_text())[
            "videos"][name]["num_frames"]
        # --window: one window longer than the video is the whole video; windows of 2 s every 1 s each give the
        # head's probabilities of those frames alone
        (whole,) = predict.predict_windows(predictor, _source(pipeline, name), 1000.0, 1000.0).results
        assert whole.window.partial and whole.num_frames == pred.num_frames
        np.testing.assert_allclose(whole.probs, pred.probs, atol=1e-5)
        timeline = predict.predict_windows(predictor, _source(pipeline, name), 2.0, 1.0)
        assert [r.window.start for r in timeline.results] == [float(k) for k in range(pred.num_frames)]
        assert [r.num_frames for r in timeline.results][:-1] == [2] * (pred.num_frames - 1)


@pytest.mark.parametrize("head", [["bilstm"], ["attnpool", "--num_layers", "2", "--num_heads", "2", "--positions", "time"]],
                         ids=["bilstm", "attnpool_time"])
def test_segments_and_views_of_an_embedding_checkpoint_as_test_mode(pipeline, tmp_path, head):
    """A head trained with --clip_len and tested with --num_clips: predict.py samples the checkpoint's segments and
    views of stage 2's frames and averages the views' logits, so it gives test mode's probabilities; a window as
    long as the video gives the same. With --positions time each view's frames carry their own seconds in both."""
    common = ["--data_dir", str(pipeline["data"]), "--expt_dir", str(tmp_path), "--expt_name", "e", "--num_workers",
              "0", "--gpu_id", "0", "--batch_size", "8"]
    _run(main_script, ["--mode", "train", "--model", *head, "--hidden_size", "16", "--epochs", "1",
                       "--clip_len", "3", "--num_clips", "2", *common])
    ckpt = tmp_path / "e" / head[0] / "checkpoints" / "best.pth"
    _run(main_script, ["--mode", "test", "--model_ckpt", str(ckpt), "--split", "test", *common])
    with open(tmp_path / "e" / head[0] / "predictions_test.csv", newline="") as fh:
        rows = {r["video"]: r for r in csv.DictReader(fh)}
    predictor = predict.load_predictor(ckpt)
    assert (predictor.settings.clip_len, predictor.settings.num_clips) == (3, 2)
    for name in sorted(rows)[:2]:
        pred = predict.predict_video(predictor, _source(pipeline, name), occlusion=True)
        top = int(np.argmax(pred.probs))
        assert predictor.class_names[top] == rows[name]["top1"]
        assert float(pred.probs[top]) == pytest.approx(float(rows[name]["prob1"]), abs=1e-4)
        assert len(pred.times) == 3 and len(pred.occlusion.drops) == 3  # the first view's frames
        (whole,) = predict.predict_windows(predictor, _source(pipeline, name), 1000.0, 1000.0).results
        np.testing.assert_allclose(whole.probs, pred.probs, atol=1e-5)


def test_same_embeddings_as_stage2(pipeline):
    """Tighter than the probabilities: the frame embeddings equal stage 2's rows (batch-shape float noise only)."""
    meta = json.loads((pipeline["data"] / "test.json").read_text())
    rows = np.load(pipeline["data"] / "test.npy", mmap_mode="r")
    predictor = predict.load_predictor(pipeline["bert"])
    # stage 2's layout, in its backbone record (resnet: channels_last)
    assert predictor.inference.channels_last is meta["backbone_record"]["channels_last"] is True
    rec = meta["data"][0]
    decoded = predict.decode_video(_source(pipeline, rec["video_name"]), predictor.settings)
    feats = routes.embed_frames(predictor, decoded.frames, 64).numpy()
    assert feats.shape[0] == rec["video_length"]
    np.testing.assert_allclose(feats, rows[rec["video_idx"], : rec["video_length"]], rtol=1e-4, atol=1e-5)


def test_max_len_cap_subsamples_like_stage2(pipeline, tmp_path):
    """With stage 2's --max_len, predict.py keeps the same frames of a long video as prepare_data.py does."""
    capped = tmp_path / "capped"
    _run(prepare_data, ["-s", "test", "-f", str(pipeline["stage1"] / "frames"), "-j",
                        str(pipeline["stage1"] / "test_ucf101.json"), "-o", str(capped), "--weights", "none",
                        "--image_size", "64", "--seed", "0", "-nw", "0", "-bs", "16", "--max_len", "3"])
    meta = json.loads((capped / "test.json").read_text())
    rows = np.load(capped / "test.npy", mmap_mode="r")
    predictor = predict.load_predictor(pipeline["bert"])
    settings = replace(predictor.settings, max_len_cap=3)
    rec = max(meta["data"], key=lambda r: r["num_frames"])
    assert rec["num_frames"] > 3 and rec["video_length"] == 3
    decoded = predict.decode_video(_source(pipeline, rec["video_name"]), settings)
    keep = routes.kept_frames(len(decoded.frames), settings)
    feats = routes.embed_frames(predictor, [decoded.frames[i] for i in keep], 64).numpy()
    np.testing.assert_allclose(feats, rows[rec["video_idx"], :3], rtol=1e-4, atol=1e-5)


def test_jpeg_round_trip_matters(pipeline):
    """The round trip is not a no-op at the quality used, so matching the route above really checks it."""
    name = sorted(_embedding_route_probs(pipeline))[0]
    predictor = predict.load_predictor(pipeline["bert"])
    with_rt = predict.decode_video(_source(pipeline, name), predictor.settings)
    without = predict.decode_video(_source(pipeline, name), replace(predictor.settings, jpeg_quality=100))
    assert any(not torch.equal(a, b) for a, b in zip(with_rt.frames, without.frames, strict=True))
    stored = sorted((pipeline["stage1"] / "frames" / name).iterdir())
    first = load_frame(str(stored[0]), 64, "crop")
    assert torch.equal(first, with_rt.frames[0])  # byte for byte what stage 2 fed its backbone


def test_cli_folder_bad_videos_json_and_attention(pipeline, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    good = _source(pipeline, sorted(_embedding_route_probs(pipeline))[0])
    (folder / "sub" / good.name).write_bytes(good.read_bytes())
    (folder / "broken.avi").write_bytes(b"not a video at all" * 10)
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "notes.txt").write_text("ignored: not a video extension")
    out_json, plot = tmp_path / "out.json", tmp_path / "att.png"
    args = predict.get_args_parser().parse_args(
        ["--model_ckpt", str(pipeline["bert"]), str(folder), str(tmp_path / "missing.mp4"), "--topk", "2",
         "--json", str(out_json), "--attention_plot", str(plot)]
    )
    assert predict.main(args) == 0
    out = capsys.readouterr().out
    assert f"skipped {folder / 'broken.avi'}" in out and f"skipped {folder / 'empty.mp4'}" in out
    assert "missing.mp4: no such file" in out and "notes.txt" not in out
    results = json.loads(out_json.read_text())
    assert [r["video"] for r in results] == [str(folder / "sub" / good.name)]
    assert len(results[0]["topk"]) == 2 and results[0]["num_frames"] >= 3
    top = results[0]["topk"]
    assert top[0]["prob"] >= top[1]["prob"] and top[0]["label"] == CLASSES_SORTED[top[0]["class_idx"]]
    # three inputs named -> per-video plot names; only the classified one gets a plot
    png = tmp_path / f"att_{good.stem}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def test_occlusion_cli_for_a_head_without_attention(pipeline, tmp_path, capsys):
    """--occlusion works for every head (here meanpool): a PNG under the frames and the curve in --json."""
    video = _source(pipeline, sorted(_embedding_route_probs(pipeline))[0])
    out_json, plot = tmp_path / "out.json", tmp_path / "occ.png"
    args = predict.get_args_parser().parse_args(["--model_ckpt", str(pipeline["meanpool"]), str(video),
                                                 "--json", str(out_json), "--occlusion", str(plot)])
    assert predict.main(args) == 0
    assert f"occlusion plot: {plot}" in capsys.readouterr().out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (result,) = json.loads(out_json.read_text())
    occ = result["occlusion"]
    assert occ["label"] == result["topk"][0]["label"] and occ["prob"] == pytest.approx(result["topk"][0]["prob"])
    assert len(occ["drops"]) == len(occ["times"]) == result["num_frames"]
    assert occ["times"] == [float(k) for k in range(result["num_frames"])]
    # meanpool over T frames: removing frame t moves the mean by (mean - x_t) / (T - 1), never nothing
    assert any(abs(d) > 1e-6 for d in occ["drops"])


def test_attention_maps_follow_kept_frames(pipeline):
    predictor = predict.load_predictor(pipeline["bert"])
    name = sorted(_embedding_route_probs(pipeline))[0]
    pred = predict.predict_video(predictor, _source(pipeline, name), attention=True)
    assert pred.attention.shape == (2 + 1, pred.num_frames)  # 2 layers + rollout, one column per frame
    np.testing.assert_allclose(pred.attention.sum(1), 1.0, atol=1e-5)
    assert pred.times == [float(k) for k in range(pred.num_frames)] and len(pred.thumbs) == pred.num_frames


def test_attention_plot_refused_for_meanpool_and_errors(pipeline, tmp_path):
    video = str(_source(pipeline, sorted(_embedding_route_probs(pipeline))[0]))
    parse = predict.get_args_parser().parse_args
    with pytest.raises(BadInputError, match="meanpool model, which has no attention"):
        predict.main(parse(["--model_ckpt", str(pipeline["meanpool"]), video, "--attention_plot", str(tmp_path / "a.png")]))
    assert not (tmp_path / "a.png").exists()
    with pytest.raises(BadInputError, match="checkpoint not found"):
        predict.main(parse(["--model_ckpt", str(tmp_path / "nope.pth"), video]))
    (tmp_path / "bad.avi").write_bytes(b"\0" * 100)
    with pytest.raises(BadInputError, match="no video could be classified"):
        predict.main(parse(["--model_ckpt", str(pipeline["meanpool"]), str(tmp_path / "bad.avi")]))
    # a window the checkpoint's 1 fps cannot fill is refused once, before any video is decoded
    with pytest.raises(BadInputError, match="--window 0.5 s holds no frame at the checkpoint's 1 fps"):
        predict.main(parse(["--model_ckpt", str(pipeline["meanpool"]), video, "--window", "0.5"]))


def test_backbone_weights_override_and_missing_provenance(pipeline, tmp_path):
    ckpt = torch.load(pipeline["meanpool"], weights_only=True)
    # a local state_dict of the same random backbone gives the same result as rebuilding it from the seed
    from models.backbone import build_backbone

    backbone, _ = build_backbone("resnet18", "none", seed=0)
    torch.save(backbone.state_dict(), tmp_path / "r18.pth")
    video = _source(pipeline, sorted(_embedding_route_probs(pipeline))[0])
    a = predict.predict_video(predict.load_predictor(pipeline["meanpool"]), video)
    b = predict.predict_video(predict.load_predictor(pipeline["meanpool"], str(tmp_path / "r18.pth")), video)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
    moved = str(tmp_path / "elsewhere" / "r18.pth")  # trained on another machine
    ckpt["data_info"]["weights"] = ckpt["data_info"]["backbone_record"]["weights"] = moved
    torch.save(ckpt, tmp_path / "moved.pth")
    with pytest.raises(BadInputError, match="--backbone_weights PATH"):
        predict.load_predictor(tmp_path / "moved.pth")
    c = predict.predict_video(predict.load_predictor(tmp_path / "moved.pth", str(tmp_path / "r18.pth")), video)
    np.testing.assert_allclose(a.probs, c.probs, atol=1e-6)
    del ckpt["data_info"]["jpeg_quality"]
    torch.save(ckpt, tmp_path / "old.pth")
    with pytest.raises(BadInputError, match="lacks 'jpeg_quality'"):
        predict.load_predictor(tmp_path / "old.pth")


@pytest.mark.slow
def test_cli_exit_codes(pipeline, tmp_path):
    """As a command: a bad video among good ones still exits 0 with a line naming it."""
    (tmp_path / "bad.mp4").write_bytes(b"garbage")
    video = _source(pipeline, sorted(_embedding_route_probs(pipeline))[-1])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "predict.py"), "--model_ckpt", str(pipeline["meanpool"]), str(tmp_path / "bad.mp4"),
         str(video), "--topk", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipped {tmp_path / 'bad.mp4'}" in proc.stdout and "rank" in proc.stdout and video.name in proc.stdout


def test_find_videos_recursive_sorted(tmp_path):
    for rel in ("b/z.MP4", "b/a.avi", "a [1]/x.mkv", ".hidden/h.avi", "c/readme.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    videos, failures = predict.find_videos([tmp_path, tmp_path / "empty"])
    assert [p.relative_to(tmp_path).as_posix() for p in videos] == ["a [1]/x.mkv", "b/a.avi", "b/z.MP4"]
    assert failures == [{"file": str(tmp_path / "empty"), "reason": "folder holds no video files"}]
    paths = predict.plot_paths(tmp_path / "o.png", [Path("x/v 1.avi"), Path("y/v 1.avi")])
    assert [p.name for p in paths] == ["o_v_1.png", "o_v_1_2.png"]
    assert predict.plot_paths("o.png", [Path("v.avi")]) == [Path("o.png")]


def test_find_videos_reads_frame_folders_with_source_fps(tmp_path):
    """--source_fps: a folder of numbered frames is one video, a folder of such folders one video each."""
    for rel in ("media/20/00001.jpg", "media/3/00001.png", "media/3/00002.png", "media/notes/readme.txt",
                "one/00001.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    videos, failures = predict.find_videos([tmp_path / "media", tmp_path / "one", tmp_path / "empty"],
                                           frame_folders=True)
    assert [p.relative_to(tmp_path).as_posix() for p in videos] == ["media/20", "media/3", "one"]
    assert [f["file"] for f in failures] == [str(tmp_path / "empty")] and "frame folders" in failures[0]["reason"]


def test_end_to_end_checkpoint_matches_clip_dataset_eval(pipeline, tmp_path):
    """An e2e checkpoint: predict.py's clip from the raw video equals ClipDataset's evaluation clip from stage 1's
    frames (segment centres, num_clips views averaged), so the probabilities agree; attention works for e2e_bert."""
    from checkpoint import build_checkpoint, save_checkpoint
    from clip_dataset import ClipDataset
    from models.e2e import build_e2e_model

    torch.manual_seed(0)
    model = build_e2e_model("e2e_bert", num_classes=3, backbone="resnet18", weights="none", hidden_size=32,
                            num_layers=1, num_heads=2).eval()
    provenance = {"fps": 1.0, "frame_size": 48, "jpeg_quality": 80, "image_size": 64, "resize": "crop",
                  "clip_len": 4, "num_clips": 2}
    save_checkpoint(build_checkpoint(model, CLASSES_SORTED, provenance), tmp_path / "e2e.pth")
    predictor = predict.load_predictor(tmp_path / "e2e.pth")
    ds = ClipDataset(pipeline["stage1"] / "frames", pipeline["stage1"] / "test_ucf101.json", clip_len=4,
                     image_size=64, num_clips=2)
    clip, _, _ = ds[0]
    with torch.no_grad():
        expected = model(clip[None], torch.tensor([4])).softmax(-1)[0].numpy()
    pred = predict.predict_video(predictor, _source(pipeline, ds.names[0]), attention=True, occlusion=True)
    np.testing.assert_allclose(pred.probs, expected, atol=1e-5)
    assert pred.attention.shape == (2, 4) and len(pred.thumbs) == 4
    # occlusion over the first view's frames: frame 1 removed is that view's clip without frame 1
    occ = pred.occlusion
    assert occ.class_idx == int(np.argmax(pred.probs)) and occ.drops.shape == (4,) and len(occ.thumbs) == 4
    with torch.no_grad():
        full = model(clip[:1], torch.tensor([4])).softmax(-1)[0, occ.class_idx]
        without = model(clip[:1, [0, 2, 3]], torch.tensor([3])).softmax(-1)[0, occ.class_idx]
    assert occ.prob == pytest.approx(float(full), abs=1e-5)
    assert occ.drops[1] == pytest.approx(float(full - without), abs=1e-5)


# ----- each input gets a result or one line saying why (issue 11) --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A meanpool head over a random resnet18 at 32 px, 1 fps: enough to run predict.py on any video, cheaply."""
    from checkpoint import build_checkpoint, save_checkpoint
    from models import build_model

    model = build_model("meanpool", input_dim=512, num_classes=2)
    info = {"backbone": "resnet18", "weights": "none", "seed": 0, "fps": 1.0, "frame_size": 32, "jpeg_quality": 90,
            "image_size": 32, "resize": "crop", "max_len_cap": None, "dtype": "float32"}
    path = tmp_path_factory.mktemp("tiny") / "tiny.pth"
    save_checkpoint(build_checkpoint(model, ["Biking", "動作"], info), path)
    return path


def _predict_args(*argv: str | Path):
    return predict.get_args_parser().parse_args([str(a) for a in argv])


def test_output_paths_are_refused_before_any_work(tiny_ckpt, tmp_path, monkeypatch):
    """Issue 11 item 9: --json naming a folder raised IsADirectoryError after all the work was done."""
    monkeypatch.setattr(predict, "load_predictor", lambda *a, **k: pytest.fail("work started"))
    with pytest.raises(BadInputError, match="--json .* is a folder"):
        predict.main(_predict_args("--model_ckpt", tiny_ckpt, "--json", tmp_path, ROOT / "x.mp4"))
    (tmp_path / "f").write_text("x")
    with pytest.raises(BadInputError, match="--attention_plot folder"):
        predict.main(_predict_args("--model_ckpt", tiny_ckpt, "--attention_plot", tmp_path / "f" / "a.png", "x.mp4"))
    with pytest.raises(BadInputError, match="--occlusion folder"):
        predict.main(_predict_args("--model_ckpt", tiny_ckpt, "--occlusion", tmp_path / "f" / "o.png", "x.mp4"))


def test_an_explicit_omp_num_threads_is_kept(tiny_ckpt, monkeypatch):
    """predict.py sized torch's thread pool by the cores even when the user set OMP_NUM_THREADS (prepare_data.py
    already kept it); both now go through threads.set_default_threads."""
    import threads

    monkeypatch.setattr(threads, "default_threads", lambda *a: 3)  # what the cores would give
    monkeypatch.setattr(predict, "load_predictor", lambda *a, **k: pytest.fail("stop here"))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        with pytest.raises(pytest.fail.Exception):
            predict.main(_predict_args("--model_ckpt", tiny_ckpt, "x.mp4"))
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("OMP_NUM_THREADS")
        with pytest.raises(pytest.fail.Exception):
            predict.main(_predict_args("--model_ckpt", tiny_ckpt, "x.mp4"))
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_bad_backbone_weights_are_named_as_typed(tiny_ckpt, tmp_path):
    """Issue 11 item 11: a bad --backbone_weights was reported as `--weights ...`."""
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x80\x04 not a state dict")
    with pytest.raises(BadInputError) as exc:
        predict.load_predictor(tiny_ckpt, str(junk))
    assert str(exc.value).startswith(f"--backbone_weights {junk}") and "weights_only" not in str(exc.value)


@pytest.mark.needs_shared_data  # reads two of the shared clips
def test_any_error_in_one_video_is_that_videos_line(tiny_ckpt, tmp_path, monkeypatch, capsys):
    """Any exception while classifying one video (not only a VideoDecodeError) skips it with one line."""
    from tests.conftest import VIDEOS

    real = predict.predict_video

    def flaky(predictor, path, *a, **k):
        if Path(path).name == "bikes.mp4":
            raise RuntimeError("out of something")
        return real(predictor, path, *a, **k)

    monkeypatch.setattr(predict, "predict_video", flaky)
    out = tmp_path / "out.json"
    assert predict.main(_predict_args("--model_ckpt", tiny_ckpt, VIDEOS / "bikes.mp4",
                                      VIDEOS / "carphone_pristine.mp4", "--json", out)) == 0
    printed = capsys.readouterr().out
    assert "skipped" in printed and "bikes.mp4: unexpected error (RuntimeError: out of something)" in printed
    assert [Path(r["video"]).name for r in json.loads(out.read_text())] == ["carphone_pristine.mp4"]


def test_nonfinite_checkpoint_is_refused(tiny_ckpt, tmp_path):
    """Issue 11 item 4: predict.py printed nan probabilities from a NaN checkpoint, exit 0."""
    ckpt = torch.load(tiny_ckpt, weights_only=True)
    ckpt["model_state"]["classifier.weight"][0, 0] = float("nan")
    torch.save(ckpt, tmp_path / "nan.pth")
    with pytest.raises(BadInputError, match="not finite"):
        predict.load_predictor(tmp_path / "nan.pth")


@pytest.mark.slow  # a few dozen videos through the backbone
def test_fuzz_corpus_every_input_classified_or_skipped_with_a_line(fuzz_video_dir, tiny_ckpt, tmp_path, capsys,
                                                                   monkeypatch, one_thread):
    """The stage-1 fuzz corpus (38 damaged files) plus good videos through predict.py: no hang, no traceback,
    every input either classified (in --json) or skipped with one line."""
    from tests.conftest import VIDEOS

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # predict.py then keeps one_thread's single torch thread
    vids, bad, good_in_dir = fuzz_video_dir
    good = [VIDEOS / "carphone_pristine.mp4", VIDEOS / "tree.avi"]
    out = tmp_path / "out.json"
    assert predict.main(_predict_args("--model_ckpt", tiny_ckpt, vids, *good, "--json", out, "--gpu_id", -1)) == 0
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err + printed.out
    classified = {r["video"] for r in json.loads(out.read_text())}
    skipped = {line.split(": ", 1)[0].removeprefix("skipped ") for line in printed.out.splitlines()
               if line.startswith("skipped ")}
    every = {str(p) for p in bad} | {str(vids / g) for g in good_in_dir} | {str(g) for g in good}
    assert classified | skipped == every and not classified & skipped
    assert {str(g) for g in good} | {str(vids / g) for g in good_in_dir} <= classified
    for r in json.loads(out.read_text()):
        assert all(np.isfinite(t["prob"]) for t in r["topk"])


@pytest.mark.parametrize("backbone", ["timm:test_vit", "hf"])
def test_timm_and_hf_backbones_predict_as_the_embedding_route(pipeline, tmp_path, tiny_hf_models, backbone):
    """A head over timm or Hugging Face embeddings: predict.py rebuilds the backbone and its preprocessing from the
    record in the checkpoint's data_info, so a raw video gets stage 2's embeddings and the head's probabilities."""
    from checkpoint import build_checkpoint, save_checkpoint
    from dataset import load_split_info
    from models import build_model

    if backbone == "hf":
        name, flags = f"hf:{tiny_hf_models['clip']}", ["--feature", "projected"]  # CLIP's image embedding
    else:
        name, flags = backbone, ["--weights", "none", "--image_size", "32", "--seed", "0"]
    data = tmp_path / "data"
    _run(prepare_data, ["-s", "test", "-f", str(pipeline["stage1"] / "frames"), "-j",
                        str(pipeline["stage1"] / "test_ucf101.json"), "-o", str(data), "-m", name, "-nw", "0",
                        "-bs", "16", *flags])
    info = load_split_info(data, "test")
    torch.manual_seed(0)
    head = build_model("meanpool", input_dim=info.shape[2], num_classes=len(CLASSES)).eval()
    save_checkpoint(build_checkpoint(head, CLASSES_SORTED, info.provenance), tmp_path / "head.pth")
    predictor = predict.load_predictor(tmp_path / "head.pth")
    assert predictor.settings.spec.to_dict() == info.provenance["backbone_record"]["resize"]
    rows = np.load(data / "test.npy", mmap_mode="r")
    row, length, video = int(info.rows[0]), int(info.lengths[0]), _source(pipeline, info.names[0])
    decoded = predict.decode_video(video, predictor.settings)
    feats = routes.embed_frames(predictor, decoded.frames, 64).numpy()
    np.testing.assert_allclose(feats, rows[row, :length], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        expected = head(torch.from_numpy(np.array(rows[row : row + 1, :length])), torch.tensor([length]))
    np.testing.assert_allclose(predict.predict_video(predictor, video).probs, expected.softmax(-1)[0].numpy(),
                               atol=1e-5)

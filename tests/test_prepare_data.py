"""Stage 2 on frames extracted from the real clips in ../shared/data/videos (random resnet18 at 64 px)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import prepare_data as pd
from layout import frame_name, read_split_json
from models.backbone import IMAGENET_MEAN, IMAGENET_STD, build_backbone, embed_batch
from tests.conftest import ROOT, VIDEOS
from transforms import load_frame, normalize_batch

pytestmark = pytest.mark.needs_shared_data

# clip -> keep every Nth decoded frame (about 10-14 frames each, different lengths)
CLIP_STEPS = {"vtest.avi": 60, "bikes.mp4": 20, "carphone_pristine.mp4": 12, "tree.avi": 6}


def write_frames_fixture(root: Path, clips: dict[str, int] = CLIP_STEPS, short_side: int = 80,
                         copies: int = 1, jpeg_quality: int = 90) -> tuple[Path, Path]:
    """Write frames/<video>/frame_000001.jpg... + manifest.json, split.json and classInd.txt in stage 1's
    layout from the real clips; `copies` > 1 repeats each clip under new names (for size tests).
    Returns (frames_dir, split_json)."""
    frames_dir = root / "frames"
    frames_dir.mkdir(parents=True, exist_ok=True)
    videos, records = {}, []
    for label, (clip, step) in enumerate(sorted(clips.items())):
        cap = cv2.VideoCapture(str(VIDEOS / clip))
        fps = cap.get(cv2.CAP_PROP_FPS) or 1.0
        frames = []
        k = 0
        while True:
            ok = cap.grab()
            if not ok:
                break
            if k % step == 0:
                ok, bgr = cap.retrieve()
                if not ok:
                    break
                h, w = bgr.shape[:2]
                scale = short_side / min(h, w)
                frames.append((k / fps, cv2.resize(bgr, (round(w * scale), round(h * scale)),
                                                   interpolation=cv2.INTER_AREA)))
            k += 1
        cap.release()
        assert frames, clip
        for c in range(copies):
            name = f"{Path(clip).stem}_c{c:03d}"
            vdir = frames_dir / name
            vdir.mkdir(exist_ok=True)
            for i, (_, bgr) in enumerate(frames):
                cv2.imwrite(str(vdir / frame_name(i)), bgr, [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
            videos[name] = {"num_frames": len(frames), "timestamps": [t for t, _ in frames], "source": clip}
            records.append({"video_name": name, "label_idx": label})
    manifest = {"fps": 1.0, "frame_size": short_side, "jpeg_quality": jpeg_quality, "videos": videos}
    (frames_dir / "manifest.json").write_text(json.dumps(manifest))
    split_json = root / "split.json"
    split_json.write_text(json.dumps(records))
    (root / "classInd.txt").write_text("".join(f"{i + 1} {Path(c).stem.title()}\n" for i, c in enumerate(sorted(clips))))
    return frames_dir, split_json


# ------------------------------------------------------------------------------------------------ helpers

FAST = ["--weights", "none", "--image_size", "64", "-m", "resnet18", "-bs", "4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def run_stage(*args: str, check: bool = True, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "prepare_data.py"), *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def stage_args(frames: Path, split_json: Path, out: Path, *extra: str) -> list[str]:
    return ["-s", "train", "-f", str(frames), "-j", str(split_json), "-o", str(out), "-nw", "0", *FAST, *extra]


def run_main(*args: str) -> int:
    """prepare_data.main in this process (no torch import per call); logging left to pytest's caplog.
    One torch thread, like the subprocesses: spinning OpenMP threads crawl on a shared 2-core machine."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pd, "setup_logging", lambda verbose=False: None)
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        try:
            return pd.main(pd.get_args_parser().parse_args(list(args)))
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fixture_frames(tmp_path_factory) -> tuple[Path, Path]:
    return write_frames_fixture(tmp_path_factory.mktemp("stage1"))


@pytest.fixture(scope="module")
def reference(fixture_frames, tmp_path_factory) -> Path:
    """One uninterrupted single-process run that the other tests compare against."""
    frames, split_json = fixture_frames
    out = tmp_path_factory.mktemp("ref")
    assert run_main(*stage_args(frames, split_json, out)) == 0
    return out


def load_out(out: Path, split: str = "train") -> tuple[np.ndarray, dict]:
    return np.load(out / f"{split}.npy", mmap_mode="r"), json.loads((out / f"{split}.json").read_text())


# ------------------------------------------------------------------------------------------------ outputs


def test_outputs_match_json_shapes_lengths_padding(reference, fixture_frames):
    frames, split_json = fixture_frames
    arr, meta = load_out(reference)
    manifest = json.loads((frames / "manifest.json").read_text())
    assert isinstance(meta["data"], list)
    assert list(arr.shape) == meta["memmap_size"] == [4, max(v["num_frames"] for v in manifest["videos"].values()), 512]
    assert arr.dtype == np.float32 and meta["feature_dim"] == 512 and meta["dtype"] == "float32"
    assert meta["class_names"] == ["Bikes", "Carphone_Pristine", "Tree", "Vtest"] and meta["num_classes"] == 4
    assert meta["fps"] == manifest["fps"] and meta["backbone"] == "resnet18" and meta["weights"] == "none"
    assert meta["split_id"] is None  # not an official split
    split = {r["video_name"]: r["label_idx"] for r in json.loads(split_json.read_text())}
    for i, rec in enumerate(meta["data"]):
        assert rec["video_idx"] == i and rec["label_idx"] == split[rec["video_name"]]
        assert rec["video_length"] == manifest["videos"][rec["video_name"]]["num_frames"] == rec["num_frames"]
        n = rec["video_length"]
        assert np.all(arr[i, n:] == 0), "padding must be zeros"
        assert np.all(np.abs(arr[i, :n]).sum(axis=1) > 0), "every real frame has an embedding"
    assert json.loads((reference / "failed_train.json").read_text()) == []
    assert not list(reference.glob(".train.*")) and not (reference / "train.npy.partial").exists()


def test_rerun_is_noop_and_other_settings_are_refused(reference, fixture_frames, tmp_path, caplog):
    frames, split_json = fixture_frames
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    caplog.set_level(logging.INFO, logger="actionbert")
    assert run_main(*stage_args(frames, split_json, out)) == 0
    assert "nothing to do" in caplog.text
    for extra in (["--image_size", "32"], ["--dtype", "float16"], ["-m", "resnet34"], ["--resize", "squash"],
                  ["--weights", "imagenet"], ["--max_len", "5"]):
        with pytest.raises(pd.BadInputError, match="refusing to mix"):
            run_main(*stage_args(frames, split_json, out, *extra))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_layout_flag_is_recorded_and_predict_runs_it(reference, fixture_frames, tmp_path):
    """--no-channels_last overrides resnet18's preference: the record says so (no identity change: the rows agree
    with the default layout's to float noise), and predict.py rebuilds the backbone in that layout."""
    import predict
    from checkpoint import build_checkpoint, save_checkpoint
    from dataset import load_split_info
    from models import build_model

    frames, split_json = fixture_frames
    out = tmp_path / "nchw"
    assert run_main(*stage_args(frames, split_json, out, "--no-channels_last")) == 0
    arr, meta = load_out(out)
    assert meta["backbone_record"]["channels_last"] is False
    assert load_out(reference)[1]["backbone_record"]["channels_last"] is True
    np.testing.assert_allclose(arr, load_out(reference)[0], rtol=1e-4, atol=1e-5)
    info = load_split_info(out, "train")
    head = build_model("meanpool", input_dim=512, num_classes=len(info.class_names))
    save_checkpoint(build_checkpoint(head, info.class_names, info.provenance), tmp_path / "head.pth")
    assert predict.load_predictor(tmp_path / "head.pth").inference.channels_last is False


def test_embedding_does_not_depend_on_batch_mates(fixture_frames):
    frames, _ = fixture_frames
    torch.manual_seed(0)
    model, record = build_backbone("resnet18", "none", seed=0)
    dim = record.dim
    clips = sorted(p for p in frames.iterdir() if p.is_dir())
    batch = [[load_frame(str(f), 64, "crop") for f in sorted(c.glob("*.jpg"))[:4]] for c in clips[:3]]
    stats = IMAGENET_MEAN, IMAGENET_STD
    alone = embed_batch(model, normalize_batch(torch.stack(batch[0]), "cpu", *stats))
    mixed = embed_batch(model, normalize_batch(torch.stack(batch[1][:3] + batch[0] + batch[2]), "cpu", *stats))[3:7]
    assert alone.shape == (4, dim)
    torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=1e-6)
    # the original code's train-mode BatchNorm would fail this test
    model.train()
    with torch.no_grad():
        mixed_train = model(normalize_batch(torch.stack(batch[1][:3] + batch[0] + batch[2]), "cpu", *stats))[3:7]
    assert not torch.allclose(mixed_train, alone, rtol=1e-3, atol=1e-4)


# ------------------------------------------------------------------------------------------------ resume


@pytest.mark.slow
def test_resume_after_sigkill_is_byte_identical(reference, fixture_frames, tmp_path, caplog):
    frames, split_json = fixture_frames
    out = tmp_path / "out"
    # Progress recorded after every batch, so the kill lands mid-run however fast the machine embeds the fixture.
    args = stage_args(frames, split_json, out, "--checkpoint_seconds", "0")
    cmd = [sys.executable, str(ROOT / "prepare_data.py"), *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log_file = out / ".train.progress.rank0.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if log_file.is_file() and '"r"' in log_file.read_text():
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "train.json").exists() and (out / "train.npy.partial").exists()
    caplog.set_level(logging.INFO, logger="actionbert")
    assert run_main(*args) == 0
    done_before, total = map(int, caplog.text.split("frames to embed (")[1].split(" frames done before")[0].split(" of "))
    assert 4 <= done_before < total, caplog.text  # it resumed: the first batches were not redone
    for name in ("train.npy", "train.json", "failed_train.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    assert not list(out.glob(".train.*")) and not (out / "train.npy.partial").exists()


# ------------------------------------------------------------------------------------------------ torchrun


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(reference, fixture_frames, tmp_path):
    frames, split_json = fixture_frames
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(ROOT / "prepare_data.py"), *stage_args(frames, split_json, out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 1 of 2" in proc.stderr
    arr, meta = load_out(out)
    ref_arr, ref_meta = load_out(reference)
    assert meta == ref_meta
    np.testing.assert_allclose(arr, ref_arr, rtol=1e-5, atol=1e-6)
    # ranks share out the batches of one plan, so every frame met the same batch-mates: identical bytes
    for name in ("train.npy", "train.json"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


# ------------------------------------------------------------------------------------------------ bad input


def test_missing_videos_and_corrupt_frames(reference, fixture_frames, tmp_path, caplog):
    frames, split_json = fixture_frames
    bad_frames = tmp_path / "frames"
    shutil.copytree(frames, bad_frames)
    # bikes: one truncated JPEG and one non-image file; tree: every frame garbage; plus a video with no folder
    bikes = sorted((bad_frames / "bikes_c000").glob("*.jpg"))
    bikes[2].write_bytes(bikes[2].read_bytes()[:300])
    bikes[5].write_bytes(b"this is not a jpeg")
    for f in (bad_frames / "tree_c000").glob("*.jpg"):
        f.write_bytes(b"")
    records = json.loads(split_json.read_text()) + [{"video_name": "v_Missing_g01_c01", "label_idx": 1}]
    bad_json = tmp_path / "split.json"
    bad_json.write_text(json.dumps(records))
    shutil.copy(split_json.parent / "classInd.txt", tmp_path / "classInd.txt")
    out = tmp_path / "out"

    strict = run_stage(*stage_args(bad_frames, bad_json, out, "--strict"), check=False)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert "error:" in strict.stderr and "v_Missing_g01_c01" in strict.stderr

    caplog.set_level(logging.INFO, logger="actionbert")
    assert run_main(*stage_args(bad_frames, bad_json, out)) == 0
    arr, meta = load_out(out)
    failed = json.loads((out / "failed_train.json").read_text())
    assert {f["video_name"] for f in failed} == {"v_Missing_g01_c01", "tree_c000"}
    assert "v_Missing_g01_c01" in caplog.text and "tree_c000" in caplog.text
    assert "bikes_c000: skipped 2 corrupt frame(s)" in caplog.text
    names = [r["video_name"] for r in meta["data"]]
    assert names == ["bikes_c000", "carphone_pristine_c000", "vtest_c000"]
    assert list(arr.shape) == meta["memmap_size"] and arr.shape[0] == 3
    bikes_rec = meta["data"][0]
    assert bikes_rec["skipped_frames"] == 2 and bikes_rec["video_length"] == bikes_rec["num_frames"] - 2
    assert meta["skipped_frames"] == 2
    # the other videos' rows are those of the clean run (moved intact; batch shapes differ, hence allclose)
    ref_arr, ref_meta = load_out(reference)
    ref_idx = {r["video_name"]: r["video_idx"] for r in ref_meta["data"]}
    for i, name in enumerate(names[1:], 1):
        np.testing.assert_allclose(arr[i], ref_arr[ref_idx[name]], rtol=1e-4, atol=1e-5)
    # bikes keeps its readable frames, in order, with the bad ones dropped
    keep = [k for k in range(bikes_rec["num_frames"]) if k not in (2, 5)]
    np.testing.assert_allclose(arr[0, : len(keep)], ref_arr[ref_idx["bikes_c000"], keep], rtol=1e-5, atol=1e-6)
    assert np.all(arr[0, len(keep) :] == 0)
    # ...and its record says which stage 1 frames its rows are (their times, k / fps, for --positions time)
    assert bikes_rec["frame_index"] == keep and all("frame_index" not in r for r in meta["data"][1:])


def test_max_len_dtype_and_class_name_fallback(fixture_frames, tmp_path, caplog):
    frames, split_json = fixture_frames
    lonely_json = tmp_path / "split.json"  # no classInd.txt beside it
    # records of official split 2, as stage 1 writes them: the id travels into the JSON (then data_info)
    lonely_json.write_text(json.dumps([{**r, "split_id": 2} for r in json.loads(split_json.read_text())[:2]]))
    out = tmp_path / "out"
    caplog.set_level(logging.INFO, logger="actionbert")
    assert run_main(*stage_args(frames, lonely_json, out, "--max_len", "5", "--dtype", "float16", "--resize", "squash",
                                "-nw", "2")) == 0  # workers forked after this process used cv2 threads
    assert "classInd.txt" in caplog.text
    arr, meta = load_out(out)
    assert arr.dtype == np.float16 and arr.shape == (2, 5, 512)
    assert meta["max_len"] == 5 and meta["max_len_cap"] == 5 and meta["resize"] == "squash"
    assert meta["class_names"] == ["class_0", "class_1"]
    assert all(r["video_length"] == 5 < r["num_frames"] for r in meta["data"])
    assert meta["subsampled_videos"] == 2
    assert meta["split_id"] == 2


# ------------------------------------------------------------------------------------------------ backbones

# --model -> (flags, D): random timm models at small sizes; the Hugging Face ones are conftest's tiny local folders
BACKBONES = {
    "timm:resnet18": (["--weights", "none", "--image_size", "64"], 512),
    "timm:vit_tiny_patch16_224": (["--weights", "none", "--image_size", "32"], 192),
    "hf:clip": ([], 32),
    "hf:dinov2": ([], 32),
}


def _own_forward(name: str, folder: Path | None) -> torch.nn.Module:
    """The library's own model as the record says (timm: pre-logits, seed 0; HF: the pooler output)."""
    if folder is not None:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(folder).eval()
        return lambda x: model(pixel_values=x).pooler_output
    import timm

    lib = name.removeprefix("timm:")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        kwargs = {"img_size": 32} if "vit" in lib else {}
        return timm.create_model(lib, num_classes=0, **kwargs).eval()


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_timm_and_hf_backbones_record_their_input_and_equal_their_own_forward(backbone, fixture_frames, tmp_path,
                                                                             tiny_hf_models):
    from transforms import ResizeSpec

    frames, split_json = fixture_frames
    folder = tiny_hf_models[backbone[3:]] if backbone.startswith("hf:") else None
    name = f"hf:{folder}" if folder else backbone
    flags, dim = BACKBONES[backbone]
    out = tmp_path / "out"
    args = ["-s", "train", "-f", str(frames), "-j", str(split_json), "-o", str(out), "-nw", "0", "-bs", "8", "-m", name]
    assert run_main(*args, *flags) == 0
    arr, meta = load_out(out)
    record = meta["backbone_record"]
    assert arr.shape[2] == meta["feature_dim"] == record["dim"] == dim and meta["backbone"] == name
    assert record["channels_last"] is (backbone == "timm:resnet18")  # the layout it ran in: convnets only
    if folder is None:  # timm's pretrained config, with the size flag recorded as an override
        import timm

        cfg = timm.models.get_pretrained_cfg(backbone[5:]).to_dict()
        assert (tuple(record["mean"]), tuple(record["std"])) == (cfg["mean"], cfg["std"])
        assert record["resize"]["crop_pct"] == cfg["crop_pct"] and record["overridden"] == ["image_size"]
    else:  # the folder's image processor config
        processor = json.loads((folder / "preprocessor_config.json").read_text())
        assert (record["mean"], record["std"]) == (processor["image_mean"], processor["image_std"])
        assert record["overridden"] == [] and record["resize"]["size"] == processor["crop_size"]["height"]
    assert meta["image_size"] == record["resize"]["size"] and meta["feature"] == record["feature"] == "pooled"
    # the stored rows are the library's own forward on the frames as the record preprocesses them
    own = _own_forward(backbone, folder)
    spec = ResizeSpec(**record["resize"])
    rec = meta["data"][0]
    files = sorted((frames / rec["video_name"]).glob("frame_*.jpg"))
    x = normalize_batch(torch.stack([load_frame(str(f), spec) for f in files]), "cpu", record["mean"], record["std"])
    with torch.no_grad():
        expected = own(x).numpy()
    np.testing.assert_allclose(arr[rec["video_idx"], : rec["video_length"]], expected, rtol=1e-4, atol=2e-5)
    if backbone == "timm:vit_tiny_patch16_224":  # another feature is another set of embeddings
        with pytest.raises(pd.BadInputError, match="feature='pooled' .this run: 'cls'"):
            run_main(*args, *flags, "--feature", "cls")


# ------------------------------------------------------------------------------------------------ pure functions


def test_batch_plan_covers_every_frame_once(fixture_frames):
    frames, split_json = fixture_frames
    entries = [(r["video_name"], r["label_idx"]) for r in read_split_json(split_json)]
    plans, failures = pd.plan_videos(entries, frames, None)
    assert not failures
    total = int(pd.frame_offsets(plans)[-1])
    done = np.zeros(total, dtype=bool)
    ids = pd.batches_to_do(total, done, 5)
    assert ids == list(range(-(-total // 5)))
    ds = pd.FrameBatches(plans, ids, 5, 32, "crop")
    seen = [(int(v), int(f)) for k in range(len(ds)) for v, f in zip(ds[k]["vpos"], ds[k]["fpos"], strict=True)]
    assert seen == [(v, f) for v, p in enumerate(plans) for f in range(len(p.frames))]
    # two ranks split the batches between them; a batch with any frame left is redone whole
    assert sorted(pd.batches_to_do(total, done, 5, 0, 2) + pd.batches_to_do(total, done, 5, 1, 2)) == ids
    done[:12] = True
    assert pd.batches_to_do(total, done, 5) == ids[2:]


def test_bad_split_json_and_frames_dir_name_the_file(tmp_path):
    """The split JSON's own checks are layout.read_split_json's (tests/test_layout.py); here, through the stage."""
    bad = tmp_path / "bad.json"
    bad.write_text('[{"video_name": "x", "label_idx": -1}]')
    with pytest.raises(pd.BadInputError, match="frames folder not found"):
        run_main(*stage_args(tmp_path / "nope", bad, tmp_path / "out"))
    (tmp_path / "frames").mkdir()
    with pytest.raises(pd.BadInputError, match="bad.json"):
        run_main(*stage_args(tmp_path / "frames", bad, tmp_path / "out"))


# ------------------------------------------------------------------------------------------------ issue 11


def test_nonfinite_embedding_fails_its_video(fixture_frames, tmp_path, monkeypatch, caplog):
    """Issue 11 item 4: NaN/inf from the backbone went into the memmap. Every batch is checked: a video with a
    non-finite frame embedding is listed and left out, the others are kept."""
    frames, split_json = fixture_frames
    real = pd.embed_batch
    calls = {"n": 0}

    def poisoned(model, x, precision="fp32"):
        out = real(model, x, precision).clone()
        calls["n"] += len(out) > 1  # batches of real frames (the first is checked before any file exists)
        if calls["n"] == 1 and len(out) > 1:
            out[1, 3] = float("nan")  # the second frame of the first video in the plan (bikes_c000)
        return out

    monkeypatch.setattr(pd, "embed_batch", poisoned)
    out = tmp_path / "out"
    assert run_main(*stage_args(frames, split_json, out)) == 0
    arr, meta = load_out(out)
    failed = json.loads((out / "failed_train.json").read_text())
    assert [(f["video_name"], "not finite (NaN/inf)" in f["reason"]) for f in failed] == [("bikes_c000", True)]
    assert [r["video_name"] for r in meta["data"]] == ["carphone_pristine_c000", "tree_c000", "vtest_c000"]
    assert np.isfinite(arr).all()


def test_second_run_on_one_split_is_refused_and_flags_checked(fixture_frames, tmp_path, capsys):
    from utils import OutputLock

    frames, split_json = fixture_frames
    out = tmp_path / "out"
    with OutputLock(out, ".lock.train"), pytest.raises(pd.BadInputError, match="in use by another run"):
        run_main(*stage_args(frames, split_json, out))
    (tmp_path / "file").write_text("x")
    with pytest.raises(pd.BadInputError, match="-o/--out_dir .*is a file"):
        run_main(*stage_args(frames, split_json, tmp_path / "file"))
    for bad in (["-bs", "0"], ["--num_workers", "-1"], ["--max_len", "0"], ["--checkpoint_seconds", "nan"]):
        with pytest.raises(SystemExit) as exc:
            pd.get_args_parser().parse_args(stage_args(frames, split_json, out, *bad))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "error: argument " in err and bad[0] in err.split("error: argument ")[1]


def stamped_copy(frames: Path, copy: Path) -> tuple[Path, dict]:
    """A copy of stage 1's frames whose manifest records each video's source (size, time), as stage 1 writes it;
    returns the copy and its manifest, to change a record as stage 1 redoing a video would."""
    shutil.copytree(frames, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    for i, entry in enumerate(manifest["videos"].values()):
        entry.update(source_size=1000 + i, source_mtime_ns=10**18)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy, manifest


def test_frames_redone_by_stage_1_are_embedded_again(reference, fixture_frames, tmp_path, caplog):
    """Issue 11: stage 2 checks its source too. Stage 1 redid a video whose source changed (its manifest
    records the new size and time; here even the frame count is the same): the split is embedded again."""
    frames, split_json = fixture_frames
    copy, manifest = stamped_copy(frames, tmp_path / "frames")
    out = tmp_path / "out"
    assert run_main(*stage_args(copy, split_json, out)) == 0
    caplog.set_level(logging.INFO, logger="actionbert")
    assert run_main(*stage_args(copy, split_json, out)) == 0 and "nothing to do" in caplog.text
    first = json.loads((out / "train.json").read_text())["plan_sha256"]
    manifest["videos"]["tree_c000"]["source_mtime_ns"] += 1
    (copy / "manifest.json").write_text(json.dumps(manifest))
    caplog.clear()
    assert run_main(*stage_args(copy, split_json, out)) == 0
    assert "changed since" in caplog.text and "embedding the split again" in caplog.text
    arr, meta = load_out(out)
    assert meta["plan_sha256"] != first and np.isfinite(arr).all()
    ref_arr, _ = load_out(reference)
    np.testing.assert_array_equal(arr, ref_arr)  # the same frames embedded again give the same rows


def test_frames_folder_disagreeing_with_the_manifest_fails_its_video(fixture_frames, tmp_path):
    """Issue 11 item 5: a frames folder holding 316 of the 1500 frames its record names was embedded without a
    word. Stage 2 compares each folder with stage 1's manifest."""
    frames, split_json = fixture_frames
    copy = tmp_path / "frames"
    shutil.copytree(frames, copy)
    files = sorted((copy / "bikes_c000").glob("*.jpg"))
    for f in files[len(files) // 2 :]:
        f.unlink()
    out = tmp_path / "out"
    assert run_main(*stage_args(copy, split_json, out)) == 0
    failed = json.loads((out / "failed_train.json").read_text())
    assert [f["video_name"] for f in failed] == ["bikes_c000"]
    assert f"holds {len(files) // 2} frame(s) but stage 1's manifest records {len(files)}" in failed[0]["reason"]


def test_decoding_starts_before_the_model_is_built(fixture_frames, tmp_path, monkeypatch):
    """Worker start-up and the first batches overlap the model build: the loader starts first."""
    frames, split_json = fixture_frames
    calls = []
    start, build = pd.start_frame_batches, pd.build_backbone
    monkeypatch.setattr(pd, "start_frame_batches", lambda *a, **k: calls.append("decode") or start(*a, **k))
    monkeypatch.setattr(pd, "build_backbone", lambda *a, **k: calls.append("build") or build(*a, **k))
    assert run_main(*stage_args(frames, split_json, tmp_path / "out")) == 0
    assert calls == ["decode", "build"]


def test_backbone_that_cannot_take_the_frames_leaves_out_untouched(fixture_frames, tmp_path, caplog):
    frames, split_json = fixture_frames
    out = tmp_path / "out"
    with pytest.raises(pd.BadInputError, match="backbone vit_b_16 cannot embed 64x64 frames"):
        run_main(*stage_args(frames, split_json, out, "-m", "vit_b_16"))  # ViT-B/16 wants 224x224
    # checked on the first batch, before any file is made: OUT holds nothing but this split's (idle, empty) lock
    assert [(p.name, p.stat().st_size) for p in out.iterdir()] == [(".lock.train", 0)]
    assert run_main(*stage_args(frames, split_json, out)) == 0  # so the fitting command just runs


def test_frames_redone_after_an_interrupted_run_are_embedded_again_in_one_go(reference, fixture_frames, tmp_path,
                                                                          monkeypatch):
    """An interrupted run whose frames stage 1 then redid is stale: its progress logs describe other frames, so
    the rerun (which plans its batches before rank 0 clears those logs) must embed every frame, not skip the ones
    the old logs name."""
    frames, split_json = fixture_frames
    copy, manifest = stamped_copy(frames, tmp_path / "frames")
    out = tmp_path / "out"
    real, calls = pd.embed_batch, {"n": 0}

    def dies_at_the_third_batch(model, x, precision="fp32"):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(model, x, precision)

    with monkeypatch.context() as m:
        m.setattr(pd, "embed_batch", dies_at_the_third_batch)
        with pytest.raises(RuntimeError, match="killed"):
            run_main(*stage_args(copy, split_json, out, "--checkpoint_seconds", "0"))
    assert '"r"' in (out / ".train.progress.rank0.jsonl").read_text()  # the first batch was recorded
    manifest["videos"]["tree_c000"]["source_mtime_ns"] += 1  # stage 1 redid tree_c000
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert run_main(*stage_args(copy, split_json, out)) == 0
    arr, _ = load_out(out)
    np.testing.assert_array_equal(arr, load_out(reference)[0])

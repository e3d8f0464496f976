"""End-to-end pieces: clip sampling and augmentation (clip_dataset.py) and the joint CNN + head model (models/e2e.py).

Frames come from the real clips in ../shared/data/videos, decoded with cv2 and written in stage 1's layout.
"""

from __future__ import annotations

import copy

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from clip_dataset import (
    ClipDataset,
    clip_collate,
    clip_provenance,
    eval_clip_from_frames,
    eval_indices,
    frame_path,
    read_class_names,
    sample_crop,
    segment_indices,
    train_indices,
)
from dataset import TrainSampler
from models import build_model
from models.e2e import (
    E2E_MODEL_NAMES,
    bn_stats_frozen,
    build_e2e_model,
    head_kwargs_from_checkpoint,
    load_e2e_model,
)
from tests.conftest import VIDEOS
from utils import BadInputError, set_seed

CLIP_LEN = 4
SIZE = 64
# (video file, frames to keep, label): tree.avi gives a video shorter than CLIP_LEN.
SOURCES = [("carphone_pristine.mp4", 12, 0), ("bikes.mp4", 10, 1), ("tree.avi", 3, 2), ("vtest.avi", 9, 0)]


def _decode(path, keep: int, shorter: int = 80, max_read: int = 150) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < max_read:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr)
    cap.release()
    assert len(frames) >= keep, path
    picked = [frames[int(i)] for i in np.linspace(0, len(frames) - 1, keep)]
    h, w = picked[0].shape[:2]
    scale = shorter / min(h, w)
    return [cv2.resize(f, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) for f in picked]


def _write_video(frames_dir, name: str, frames_bgr: list[np.ndarray]) -> None:
    (frames_dir / name).mkdir(parents=True)
    for k, img in enumerate(frames_bgr):
        cv2.imwrite(str(frame_path(frames_dir, name, k)), img, [cv2.IMWRITE_JPEG_QUALITY, 95])


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """(frames_dir, split entries) from the real clips, 3 classes."""
    root = tmp_path_factory.mktemp("e2e_frames")
    entries = []
    for file, keep, label in SOURCES:
        name = file.split(".")[0]
        _write_video(root, name, _decode(VIDEOS / file, keep))
        entries.append({"video_name": name, "label_idx": label, "class_name": f"c{label}"})
    return root, entries


# ----------------------------------------------------------------------------------------------------------------
# Sampling


def test_train_segments_cover_the_video_in_order():
    n, t = 40, 4
    seen = np.zeros(n, dtype=bool)
    for s in range(300):
        idx = train_indices(n, t, np.random.default_rng(s))
        assert idx.shape == (t,)
        for i, k in enumerate(idx):  # one frame inside each segment, hence in order
            assert i * n // t <= k < (i + 1) * n // t
        seen[idx] = True
    assert seen.all()  # every frame can be drawn


def test_eval_uniform_and_shifted_views():
    centres = eval_indices(40, 4)
    assert centres.tolist() == [[5, 15, 25, 35]]
    views = eval_indices(40, 4, num_clips=2)
    assert views.shape == (2, 4)
    assert (views[0] < views[1]).all()  # shifted inside the same segments
    assert ((views // 10) == np.arange(4)).all()


def test_short_video_repeats_frames_in_order():
    for idx in (eval_indices(3, 8)[0], train_indices(3, 8, np.random.default_rng(0)), segment_indices(1, 5, 0.5)):
        assert len(idx) in (8, 5)
        assert (np.diff(idx) >= 0).all()
    assert set(eval_indices(3, 8)[0].tolist()) == {0, 1, 2}


def test_sampling_deterministic_per_seed_epoch_index(frames):
    root, entries = frames
    a = ClipDataset(root, entries, CLIP_LEN, train=True, image_size=SIZE, seed=3)
    b = ClipDataset(root, entries, CLIP_LEN, train=True, image_size=SIZE, seed=3)
    x1, label, idx = a[(1, 5)]
    assert torch.equal(x1, b[(1, 5)][0]) and label == entries[1]["label_idx"] and idx == 1
    epochs = [a[(1, e)][0] for e in range(6)]
    assert any(not torch.equal(epochs[0], e) for e in epochs[1:])  # augmentation changes with the epoch
    c = ClipDataset(root, entries, CLIP_LEN, train=True, image_size=SIZE, seed=4)
    assert not torch.equal(x1, c[(1, 5)][0])
    # the same batches whatever the number of DataLoader workers
    sampler = TrainSampler(a.labels, seed=0)
    sampler.set_epoch(2)
    runs = []
    for workers in (0, 2):
        loader = DataLoader(a, batch_size=2, sampler=sampler, num_workers=workers, collate_fn=clip_collate)
        runs.append([batch["clips"] for batch in loader])
    assert all(torch.equal(p, q) for p, q in zip(*runs, strict=True))


def test_items_shapes_dtypes_and_collate(frames):
    root, entries = frames
    train = ClipDataset(root, entries, CLIP_LEN, train=True, image_size=SIZE)
    clip, _, _ = train[(2, 0)]  # tree: 3 frames for a clip of 4
    assert clip.shape == (CLIP_LEN, 3, SIZE, SIZE) and clip.dtype == torch.uint8
    test = ClipDataset(root, entries, CLIP_LEN, train=False, image_size=SIZE, num_clips=3)
    views, _, _ = test[0]
    assert views.shape == (3, CLIP_LEN, 3, SIZE, SIZE)
    batch = clip_collate([test[0], test[1]])
    assert batch["clips"].shape == (2, 3, CLIP_LEN, 3, SIZE, SIZE)
    assert batch["lengths"].tolist() == [CLIP_LEN, CLIP_LEN] and batch["labels"].tolist() == [0, 1]
    assert read_class_names(root, entries) == ["c0", "c1", "c2"]


def test_eval_frames_match_stage2_preprocessing(frames):
    from models.backbone import preprocess_frame

    root, entries = frames
    test = ClipDataset(root, entries, CLIP_LEN, train=False, image_size=SIZE)
    clip, _, _ = test[0]
    k = int(eval_indices(12, CLIP_LEN)[0, 1])
    rgb = cv2.cvtColor(cv2.imread(str(frame_path(root, entries[0]["video_name"], k))), cv2.COLOR_BGR2RGB)
    assert torch.equal(clip[1], preprocess_frame(rgb, SIZE))


def test_predict_input_matches_eval_items(frames):
    root, entries = frames
    test = ClipDataset(root, entries, CLIP_LEN, train=False, image_size=SIZE, num_clips=2)
    name = entries[1]["video_name"]
    rgb = [cv2.cvtColor(cv2.imread(str(frame_path(root, name, k))), cv2.COLOR_BGR2RGB) for k in range(10)]
    assert torch.equal(eval_clip_from_frames(rgb, CLIP_LEN, SIZE, num_clips=2), test[1][0])
    assert clip_provenance(root, clip_len=CLIP_LEN)["clip_len"] == CLIP_LEN


# ----------------------------------------------------------------------------------------------------------------
# Augmentation: one draw per clip


def test_same_crop_and_flip_on_every_frame(tmp_path):
    rng = np.random.default_rng(0)
    img = (rng.random((60, 90, 3)) * 255).astype(np.uint8)
    img[:, :45] //= 4  # asymmetric, so a flip shows
    _write_video(tmp_path, "still", [img] * 7)
    ds = ClipDataset(tmp_path, [{"video_name": "still", "label_idx": 0}], CLIP_LEN, train=True, image_size=32)
    clips = [ds[(0, e)][0] for e in range(8)]
    for clip in clips:  # identical frames in, identical frames out: the crop and flip were drawn once
        assert all(torch.equal(clip[0], clip[i]) for i in range(1, CLIP_LEN))
    assert len({c[0].numpy().tobytes() for c in clips}) > 1
    left_dark = [c[0, :, :, :16].float().mean() < c[0, :, :, 16:].float().mean() for c in clips]
    assert any(left_dark) and not all(left_dark)  # some clips flipped, some not


def test_crop_box_inside_image_with_scale():
    for s in range(200):
        top, left, h, w = sample_crop(48, 80, np.random.default_rng(s), scale=(0.3, 0.6))
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 80
    areas = [np.prod(sample_crop(48, 80, np.random.default_rng(s), scale=(0.3, 0.6))[2:]) / (48 * 80) for s in range(50)]
    assert 0.2 < min(areas) and max(areas) < 0.7


# ----------------------------------------------------------------------------------------------------------------
# Bad input


def test_missing_and_corrupt_frames(frames, tmp_path):
    root, entries = frames
    ds = ClipDataset(root, [*entries, {"video_name": "ghost", "label_idx": 1}], CLIP_LEN, image_size=SIZE)
    assert len(ds) == len(entries) and ds.failures[0]["file"].endswith("ghost")
    with pytest.raises(BadInputError, match="ghost"):
        ClipDataset(root, [*entries, {"video_name": "ghost", "label_idx": 1}], CLIP_LEN, strict=True)
    with pytest.raises(BadInputError, match="no frames"):
        ClipDataset(root, [{"video_name": "ghost", "label_idx": 1}], CLIP_LEN)
    with pytest.raises(BadInputError, match="label_idx"):
        ClipDataset(root, [{"video_name": "x"}], CLIP_LEN)

    img = np.full((40, 40, 3), 200, np.uint8)
    _write_video(tmp_path, "v", [img] * 4)
    frame_path(tmp_path, "v", 1).write_bytes(b"not a jpeg")  # a corrupt frame: its neighbour stands in
    clip, _, _ = ClipDataset(tmp_path, [{"video_name": "v", "label_idx": 0}], CLIP_LEN, image_size=16)[0]
    assert torch.equal(clip[1], clip[0])
    for k in range(4):
        frame_path(tmp_path, "v", k).write_bytes(b"")
    with pytest.raises(BadInputError, match="no readable frame"):
        ClipDataset(tmp_path, [{"video_name": "v", "label_idx": 0}], CLIP_LEN, image_size=16)[0]


# ----------------------------------------------------------------------------------------------------------------
# Model


def _model(head: str = "meanpool", **kw) -> torch.nn.Module:
    set_seed(0)
    return build_e2e_model(f"e2e_{head}", num_classes=3, backbone="resnet18", weights="none", **kw)


def _batch(b: int = 2, seed: int = 0, size: int = 32, t: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random uint8 clips; 32 px and 3 frames are enough for the model's mechanics and cheap on the CPU."""
    g = torch.Generator().manual_seed(seed)
    clips = torch.randint(0, 256, (b, t, 3, size, size), dtype=torch.uint8, generator=g)
    return clips, torch.full((b,), t), torch.arange(b) % 3


def _bn_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k or "num_batches" in k}


def _train_steps(model, steps: int = 1, lr: float = 1e-2) -> None:
    opt = torch.optim.SGD(model.param_groups(lr, lr), lr=lr)
    model.train()
    for s in range(steps):
        clips, lengths, labels = _batch(seed=s)
        loss = torch.nn.functional.cross_entropy(model(clips, lengths), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_names_and_rebuild_from_config():
    assert set(E2E_MODEL_NAMES) >= {"e2e_meanpool", "e2e_bilstm", "e2e_bert", "e2e_roberta"}
    model = _model(grad_checkpointing=True).eval()
    clips, lengths, _ = _batch()
    again = load_e2e_model(model.config, model.state_dict()).eval()
    assert set(again.state_dict()) == set(_model().state_dict())  # checkpointing leaves the keys unchanged
    with torch.no_grad():
        assert torch.allclose(model(clips, lengths), again(clips, lengths))
        float_clips = (clips.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]
        ).view(3, 1, 1)
        assert torch.allclose(model(clips, lengths), model(float_clips, lengths), atol=1e-4)
        views = torch.stack([clips, clips.flip(-1)], 1)  # (B, V=2, T, 3, H, W): logits averaged over views
        expected = (model(clips, lengths) + model(clips.flip(-1), lengths)) / 2
        assert torch.allclose(model(views, lengths), expected, atol=1e-5)


def test_checkpoint_round_trip_through_checkpoint_py(tmp_path):
    from checkpoint import build_checkpoint, load_checkpoint, save_checkpoint

    model = _model("bilstm", freeze_backbone_stages=1).eval()
    ckpt = build_checkpoint(model, ["a", "b", "c"], {"backbone": "resnet18", "image_size": SIZE}, epoch=1)
    assert ckpt["model_name"] == "e2e_bilstm" and ckpt["feature_dim"] == 512 and ckpt["num_classes"] == 3
    save_checkpoint(ckpt, tmp_path / "last.pth")
    loaded = load_checkpoint(tmp_path / "last.pth")  # weights_only=True: plain values only
    again = load_e2e_model(loaded["model_config"], loaded["model_state"]).eval()
    assert again.freeze_backbone_stages == 1 and again.config == model.config
    clips, lengths, _ = _batch()
    with torch.no_grad():
        assert torch.allclose(model(clips, lengths), again(clips, lengths))


def test_padding_frames_never_reach_the_backbone():
    model = _model().eval()
    clips, _, _ = _batch()
    lengths = torch.tensor([3, 2])
    noisy = clips.clone()
    noisy[1, 2:] = 255 - noisy[1, 2:]
    with torch.no_grad():
        feats = model.frame_features(clips, lengths)
        assert torch.equal(feats[1, 2:], torch.zeros_like(feats[1, 2:]))
        assert torch.allclose(model(clips, lengths), model(noisy, lengths))


def test_backbone_trains_unless_frozen():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    _train_steps(model)
    after = model.state_dict()
    assert not torch.equal(before["backbone.conv1.weight"], after["backbone.conv1.weight"])
    assert not torch.equal(before["backbone.layer4.1.conv2.weight"], after["backbone.layer4.1.conv2.weight"])

    frozen = _model(freeze_backbone_stages=5)
    before, bn_before = copy.deepcopy(frozen.backbone.state_dict()), _bn_buffers(frozen.backbone)
    head_before = copy.deepcopy(frozen.head.state_dict())
    _train_steps(frozen)
    assert all(torch.equal(v, frozen.backbone.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(v, _bn_buffers(frozen.backbone)[k]) for k, v in bn_before.items())
    assert any(not torch.equal(v, frozen.head.state_dict()[k]) for k, v in head_before.items())


def test_partial_freeze_keeps_early_stages_and_their_batchnorm():
    model = _model(freeze_backbone_stages=2)  # stem + layer1
    model.train()
    assert not model.backbone.bn1.training and not model.backbone.layer1.training and model.backbone.layer2.training
    names = {g["name"] for g in model.param_groups(1e-4, 1e-3, 0.1)}
    assert names == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    n_group = sum(p.numel() for g in model.param_groups(1e-4, 1e-3) for p in g["params"])
    assert n_group == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert all(g["lr"] == (1e-4 if g["name"].startswith("backbone") else 1e-3) for g in model.param_groups(1e-4, 1e-3))
    before = copy.deepcopy(model.backbone.state_dict())
    _train_steps(model)
    after = model.backbone.state_dict()
    for key, value in before.items():  # weights and BN stats: frozen in stages 0-1, all updated from layer2 on
        assert torch.equal(value, after[key]) == key.startswith(("conv1.", "bn1.", "layer1.")), key
    with pytest.raises(BadInputError, match="stages"):
        _model(freeze_backbone_stages=6)


def test_grad_checkpointing_matches_plain_backward():
    plain = _model(dropout=0.0)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    clips, lengths, labels = _batch(b=2)
    losses = []
    for model in (plain, ckpt):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(clips, lengths), labels)
        loss.backward()
        losses.append(loss.detach())
    assert torch.allclose(losses[0], losses[1])
    grads = [{k: p.grad for k, p in m.named_parameters()} for m in (plain, ckpt)]
    assert all(torch.allclose(g, grads[1][k], atol=1e-6, rtol=1e-4) for k, g in grads[0].items())
    bn = [_bn_buffers(m) for m in (plain, ckpt)]  # the recomputation did not update BatchNorm stats twice
    assert all(torch.allclose(v, bn[1][k]) for k, v in bn[0].items())


def test_training_reduces_loss_on_tiny_set(frames):
    root, entries = frames
    set_seed(0)
    train = ClipDataset(root, entries, CLIP_LEN, train=True, image_size=SIZE, seed=0)
    evals = ClipDataset(root, entries, CLIP_LEN, train=False, image_size=SIZE)
    fixed = clip_collate([evals[i] for i in range(len(evals))])
    model = _model("meanpool", dropout=0.0, freeze_backbone_stages=2)  # the stem and layer1 frozen: half the cost
    stats_loader = DataLoader(train, batch_size=4, collate_fn=clip_collate)
    model.estimate_feature_stats(((b["clips"], b["lengths"]) for b in stats_loader), max_batches=1)
    assert model.head.feature_std.min() > 0 and not torch.equal(model.head.feature_mean, torch.zeros(512))

    def eval_loss() -> float:
        """Training loss on fixed clips, as the training forward computes it (BatchNorm on batch statistics:
        a few steps are far too few for eval mode's running averages to settle)."""
        model.train()
        with torch.no_grad(), bn_stats_frozen([model]):
            return torch.nn.functional.cross_entropy(model(fixed["clips"], fixed["lengths"]), fixed["labels"]).item()

    start = eval_loss()
    opt = torch.optim.AdamW(model.param_groups(1e-3, 1e-3, 0.0))
    for epoch in range(4):
        model.train()
        batch = clip_collate([train[(i, epoch)] for i in range(len(train))])
        loss = torch.nn.functional.cross_entropy(model(batch["clips"], batch["lengths"]), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = eval_loss()
    print(f"eval loss {start:.3f} -> {end:.3f}")
    assert end < 0.7 * start


# ----------------------------------------------------------------------------------------------------------------
# init_head_from


def test_init_head_from_embedding_checkpoint(tmp_path):
    set_seed(1)
    head = build_model("meanpool", input_dim=512, num_classes=3, dropout=0.0)
    head.set_feature_stats(torch.rand(512), torch.rand(512) + 0.5)
    path = tmp_path / "head.pth"
    torch.save({"model_state": head.state_dict(), "model_config": head.config, "backbone": "resnet18"}, path)
    model = _model(dropout=0.0)
    model.init_head_from(path)
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in head.state_dict().items())

    other = build_model("meanpool", input_dim=512, num_classes=5)
    torch.save({"model_state": other.state_dict(), "model_config": other.config}, tmp_path / "classes.pth")
    with pytest.raises(BadInputError, match="num_classes 5"):
        model.init_head_from(tmp_path / "classes.pth")
    wide = build_model("meanpool", input_dim=2048, num_classes=3)
    torch.save({"model_state": wide.state_dict(), "model_config": wide.config}, tmp_path / "dim.pth")
    with pytest.raises(BadInputError, match="input_dim 2048"):
        model.init_head_from(tmp_path / "dim.pth")
    lstm = build_model("bilstm", input_dim=512, num_classes=3)
    torch.save({"model_state": lstm.state_dict(), "model_config": lstm.config}, tmp_path / "lstm.pth")
    with pytest.raises(BadInputError, match="head 'bilstm'"):
        model.init_head_from(tmp_path / "lstm.pth")
    lstm_wide = build_model("bilstm", input_dim=512, num_classes=3, hidden_size=24)
    torch.save({"model_state": lstm_wide.state_dict(), "model_config": lstm_wide.config}, tmp_path / "wide.pth")
    with pytest.raises(BadInputError, match="other shape"):
        _model("bilstm", hidden_size=16).init_head_from(tmp_path / "wide.pth")
    name, kwargs = head_kwargs_from_checkpoint(tmp_path / "wide.pth")  # build a head that fits, then load it
    fitting = build_e2e_model(f"e2e_{name}", num_classes=3, **kwargs)
    fitting.init_head_from(tmp_path / "wide.pth")
    assert torch.equal(fitting.head.lstm.weight_hh_l0, lstm_wide.lstm.weight_hh_l0)
    from checkpoint import build_checkpoint, save_checkpoint  # an e2e checkpoint gives its head too

    save_checkpoint(build_checkpoint(fitting, ["a", "b", "c"], {}), tmp_path / "e2e.pth")
    again = build_e2e_model("e2e_bilstm", num_classes=3, hidden_size=24)
    again.init_head_from(tmp_path / "e2e.pth")
    assert all(torch.equal(v, again.head.state_dict()[k]) for k, v in fitting.head.state_dict().items())
    torch.save({"weights": torch.zeros(2)}, tmp_path / "junk.pth")
    with pytest.raises(BadInputError, match="not a model checkpoint"):
        model.init_head_from(tmp_path / "junk.pth")
    with pytest.raises(BadInputError, match="not found"):
        model.init_head_from(tmp_path / "nothing.pth")

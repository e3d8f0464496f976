"""The joint CNN + head model (models/e2e.py): rebuild, checkpoints, padding, freezing, gradient checkpointing,
learning, and starting from a head trained on embeddings. The clips it trains on are clip_dataset.py's
(tests/test_clip_dataset.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader

from checkpoint import build_checkpoint, read_head_checkpoint, save_checkpoint
from clip_dataset import ClipDataset, clip_collate
from models import build_model
from models.backbone import IMAGENET_MEAN, IMAGENET_STD
from models.e2e import E2E_MODEL_NAMES, bn_stats_frozen, build_e2e_model, load_e2e_model
from utils import BadInputError, set_seed

CLASSES = ["a", "b", "c"]
CLIP_LEN = 4
SIZE = 64


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
    opt = torch.optim.SGD(model.param_groups(weight_decay=0.0, lr=lr, backbone_lr=lr), lr=lr)
    model.train()
    for s in range(steps):
        clips, lengths, labels = _batch(seed=s)
        loss = torch.nn.functional.cross_entropy(model(clips, lengths), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_names_and_rebuild_from_config():
    assert set(E2E_MODEL_NAMES) >= {"e2e_meanpool", "e2e_attnpool", "e2e_bilstm", "e2e_bert", "e2e_roberta"}
    model = _model(grad_checkpointing=True).eval()
    assert model.supports_grad_checkpointing and not model.exposes_attention  # a meanpool head has no attention
    clips, lengths, _ = _batch()
    again = load_e2e_model(model.config, model.state_dict()).eval()
    assert set(again.state_dict()) == set(_model().state_dict())  # checkpointing leaves the keys unchanged
    with torch.no_grad():
        assert torch.allclose(model(clips, lengths), again(clips, lengths))
        float_clips = (clips.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(
            IMAGENET_STD
        ).view(3, 1, 1)
        assert torch.allclose(model(clips, lengths), model(float_clips, lengths), atol=1e-4)
        views = torch.stack([clips, clips.flip(-1)], 1)  # (B, V=2, T, 3, H, W): logits averaged over views
        expected = (model(clips, lengths) + model(clips.flip(-1), lengths)) / 2
        assert torch.allclose(model(views, lengths), expected, atol=1e-5)


def test_cnn_backbone_runs_channels_last_on_the_cpu_too():
    model = _model().prepare_for_device("cpu").eval()
    assert model.config["channels_last"] is True  # resnet: mostly convolutions, measured faster on the CPU
    assert model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    nchw = load_e2e_model({**model.config, "channels_last": False}, model.state_dict()).prepare_for_device("cpu")
    assert not nchw.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    clips, lengths, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(model(clips, lengths), nchw.eval()(clips, lengths), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("head", "kwargs"), [("attnpool", {"hidden_size": 16, "num_heads": 2}),
                                               ("bert", {"hidden_size": 16, "num_heads": 2, "num_layers": 1,
                                                         "positions": "none"})])
def test_order_blind_ablations_end_to_end(head, kwargs):
    """e2e_attnpool and e2e_bert --positions none: rebuilt from their config, and blind to the clip's frame order."""
    model = _model(head, **kwargs).eval()
    assert model.config["name"] == f"e2e_{head}"
    again = load_e2e_model(model.config, model.state_dict()).eval()
    clips, lengths, _ = _batch()
    with torch.no_grad():
        logits = model(clips, lengths)
        torch.testing.assert_close(again(clips, lengths), logits)
        torch.testing.assert_close(model(clips.flip(1), lengths), logits, rtol=1e-4, atol=1e-5)


def test_checkpoint_round_trip_through_checkpoint_py(tmp_path):
    from checkpoint import load_checkpoint

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
    names = {g["name"] for g in model.param_groups(weight_decay=0.1, lr=1e-3, backbone_lr=1e-4)}
    assert names == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    groups = model.param_groups(weight_decay=0.0, lr=1e-3, backbone_lr=1e-4)
    n_group = sum(p.numel() for g in groups for p in g["params"])
    assert n_group == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert all(g["lr"] == (1e-4 if g["name"].startswith("backbone") else 1e-3) for g in groups)
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


@pytest.mark.slow
def test_training_reduces_loss_on_tiny_set(clip_frames):
    root, entries = clip_frames
    set_seed(0)
    train = ClipDataset(root, entries, CLIP_LEN, train=True, image_size=SIZE, seed=0)
    evals = ClipDataset(root, entries, CLIP_LEN, train=False, image_size=SIZE)
    fixed = clip_collate([evals[i] for i in range(len(evals))])
    model = _model("meanpool", dropout=0.0, freeze_backbone_stages=2)  # the stem and layer1 frozen: half the cost
    stats_loader = DataLoader(train, batch_size=4, collate_fn=clip_collate)
    model.estimate_feature_stats(((b["inputs"], b["lengths"]) for b in stats_loader), max_batches=1)
    assert model.head.feature_std.min() > 0 and not torch.equal(model.head.feature_mean, torch.zeros(512))

    def eval_loss() -> float:
        """Training loss on fixed clips, as the training forward computes it (BatchNorm on batch statistics:
        a few steps are far too few for eval mode's running averages to settle)."""
        model.train()
        with torch.no_grad(), bn_stats_frozen([model]):
            return torch.nn.functional.cross_entropy(model(fixed["inputs"], fixed["lengths"]), fixed["labels"]).item()

    start = eval_loss()
    opt = torch.optim.AdamW(model.param_groups(weight_decay=0.0, lr=1e-3, backbone_lr=1e-3))
    for epoch in range(4):
        model.train()
        batch = clip_collate([train[(i, epoch)] for i in range(len(train))])
        loss = torch.nn.functional.cross_entropy(model(batch["inputs"], batch["lengths"]), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = eval_loss()
    print(f"eval loss {start:.3f} -> {end:.3f}")
    assert end < 0.7 * start


# ----------------------------------------------------------------------------------------------------------------
# init_head_from: checkpoint.read_head_checkpoint reads the file once, EndToEndModel.load_head checks and loads it


def _load_head(model, path) -> None:
    model.load_head(read_head_checkpoint(path))


def test_init_head_from_embedding_checkpoint(tmp_path):
    set_seed(1)
    head = build_model("meanpool", input_dim=512, num_classes=3, dropout=0.0)
    head.set_feature_stats(torch.rand(512), torch.rand(512) + 0.5)
    path = tmp_path / "head.pth"
    torch.save({"model_state": head.state_dict(), "model_config": head.config, "backbone": "resnet18"}, path)
    model = _model(dropout=0.0)
    _load_head(model, path)
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in head.state_dict().items())

    other = build_model("meanpool", input_dim=512, num_classes=5)
    torch.save({"model_state": other.state_dict(), "model_config": other.config}, tmp_path / "classes.pth")
    with pytest.raises(BadInputError, match="num_classes 5"):
        _load_head(model, tmp_path / "classes.pth")
    wide = build_model("meanpool", input_dim=2048, num_classes=3)
    torch.save({"model_state": wide.state_dict(), "model_config": wide.config}, tmp_path / "dim.pth")
    with pytest.raises(BadInputError, match="input_dim 2048"):
        _load_head(model, tmp_path / "dim.pth")
    lstm = build_model("bilstm", input_dim=512, num_classes=3)
    torch.save({"model_state": lstm.state_dict(), "model_config": lstm.config}, tmp_path / "lstm.pth")
    with pytest.raises(BadInputError, match="head 'bilstm'"):
        _load_head(model, tmp_path / "lstm.pth")
    lstm_wide = build_model("bilstm", input_dim=512, num_classes=3, hidden_size=24)
    torch.save({"model_state": lstm_wide.state_dict(), "model_config": lstm_wide.config}, tmp_path / "wide.pth")
    with pytest.raises(BadInputError, match="other shape"):
        _load_head(_model("bilstm", hidden_size=16), tmp_path / "wide.pth")
    wide_head = read_head_checkpoint(tmp_path / "wide.pth")  # build a head that fits, then load it
    fitting = build_e2e_model(f"e2e_{wide_head.name}", num_classes=3, **wide_head.build_kwargs)
    fitting.load_head(wide_head)
    assert torch.equal(fitting.head.lstm.weight_hh_l0, lstm_wide.lstm.weight_hh_l0)

    save_checkpoint(build_checkpoint(fitting, CLASSES, {}), tmp_path / "e2e.pth")  # an e2e checkpoint gives its head
    again = build_e2e_model("e2e_bilstm", num_classes=3, hidden_size=24)
    e2e_head = read_head_checkpoint(tmp_path / "e2e.pth")
    assert (e2e_head.name, e2e_head.class_names) == ("bilstm", CLASSES) and "backbone" not in e2e_head.config
    again.load_head(e2e_head)
    assert all(torch.equal(v, again.head.state_dict()[k]) for k, v in fitting.head.state_dict().items())
    torch.save({"weights": torch.zeros(2)}, tmp_path / "junk.pth")
    with pytest.raises(BadInputError, match="not a model checkpoint"):
        _load_head(model, tmp_path / "junk.pth")
    with pytest.raises(BadInputError, match="not found"):
        _load_head(model, tmp_path / "nothing.pth")


# ----------------------------------------------------------------------------------------------- timm and hf backbones


def _vit(**kw) -> torch.nn.Module:
    """e2e_meanpool over timm's random test ViT at 32 px (6 blocks of width 64: a real timm VisionTransformer)."""
    set_seed(0)
    return build_e2e_model("e2e_meanpool", num_classes=3, backbone="timm:test_vit", weights="none", image_size=32,
                           **kw)


def test_layout_comes_from_the_backbone_record():
    """A timm ViT runs NCHW and a timm ResNet channels_last, as stage 2 would run them; an explicit setting wins and
    the record in the model's config says so."""
    vit = _vit().prepare_for_device("cpu")
    assert vit.channels_last is vit.config["channels_last"] is vit.backbone_record.channels_last is False
    set_seed(0)
    cnn = build_e2e_model("e2e_meanpool", num_classes=3, backbone="timm:resnet18", weights="none", image_size=32)
    cnn.prepare_for_device("cpu")
    assert cnn.channels_last is cnn.config["backbone_record"]["channels_last"] is True
    assert cnn.backbone.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    nchw = load_e2e_model({**cnn.config, "channels_last": False}, cnn.state_dict())
    assert nchw.channels_last is nchw.config["backbone_record"]["channels_last"] is False
    again = load_e2e_model(nchw.config, nchw.state_dict())  # a checkpoint keeps its layout
    assert again.channels_last is False


def test_vit_freeze_k_keeps_patch_embedding_and_first_k_blocks():
    model = _vit(freeze_backbone_stages=2)
    assert model.num_stages == 7  # embedding + block 1, blocks 2..6, the final norm
    frozen = {n for n, p in model.backbone.model.named_parameters() if not p.requires_grad}
    expected = {n for n, _ in model.backbone.model.named_parameters()
                if n.startswith(("patch_embed.", "blocks.0.", "blocks.1.")) or n in ("cls_token", "pos_embed")}
    assert frozen == expected
    before = copy.deepcopy(model.backbone.state_dict())
    _train_steps(model)
    after = model.backbone.state_dict()
    for key, value in before.items():  # no BatchNorm here: LayerNorm models have only weights to keep
        assert torch.equal(value, after[key]) == (key.removeprefix("model.") in expected), key
    whole = _vit(freeze_backbone_stages=7)
    assert not any(p.requires_grad for p in whole.backbone.parameters())
    with pytest.raises(BadInputError, match="has 7 stages"):
        _vit(freeze_backbone_stages=8)


def test_hf_stages_and_parameters_the_feature_never_uses(tiny_hf_models):
    """A CLIP vision tower read at its class token never uses its final LayerNorm: those weights are frozen (DDP
    needs a gradient for every trainable parameter), whatever --freeze_backbone_stages sets; DINOv2's mask token
    likewise."""
    set_seed(0)
    model = build_e2e_model("e2e_meanpool", num_classes=3, backbone=f"hf:{tiny_hf_models['clip']}", feature="cls")
    assert model.num_stages == 3  # embeddings + pre-norm + layer 1, layer 2, post-norm
    model.set_frozen_stages(0)
    clips, lengths, labels = _batch()
    torch.nn.functional.cross_entropy(model.train()(clips, lengths), labels).backward()
    no_grad = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is None}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert not no_grad and frozen == {"backbone.model.post_layernorm.weight", "backbone.model.post_layernorm.bias"}
    dino = build_e2e_model("e2e_meanpool", num_classes=3, backbone=f"hf:{tiny_hf_models['dinov2']}")
    assert {n for n, p in dino.named_parameters() if not p.requires_grad} == {"backbone.model.embeddings.mask_token"}


@pytest.mark.parametrize("backbone", ["timm:test_vit", "hf"])
def test_library_grad_checkpointing_matches_plain_backward(backbone, tiny_hf_models):
    name = f"hf:{tiny_hf_models['clip']}" if backbone == "hf" else backbone
    set_seed(0)
    plain = build_e2e_model("e2e_meanpool", num_classes=3, backbone=name, weights="none", image_size=32, dropout=0.0)
    ckpt = copy.deepcopy(plain)
    ckpt.set_grad_checkpointing(True)
    lib = ckpt.backbone.model
    assert lib.grad_checkpointing if backbone != "hf" else lib.is_activation_checkpointing  # the library's switch
    clips, lengths, labels = _batch()
    for model in (plain, ckpt):
        torch.nn.functional.cross_entropy(model.train()(clips, lengths), labels).backward()
    grads = [{k: p.grad for k, p in m.named_parameters() if p.grad is not None} for m in (plain, ckpt)]
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    assert all(torch.allclose(g, grads[1][k], atol=1e-6, rtol=1e-4) for k, g in grads[0].items())
    with torch.no_grad():  # and evaluation is unaffected
        assert torch.allclose(plain.eval()(clips, lengths), ckpt.eval()(clips, lengths), atol=1e-6)


def test_timm_cnn_with_batchnorm_keeps_our_checkpointing():
    """timm's switch would recompute BatchNorm in backward and count each batch twice in its running stats."""
    set_seed(0)
    model = build_e2e_model("e2e_meanpool", num_classes=3, backbone="timm:resnet18", weights="none", image_size=32,
                            grad_checkpointing=True)
    assert not model.backbone.model.grad_checkpointing
    assert type(model.backbone.model.layer1[0]).__name__.startswith("Checkpointed")
    assert model.num_stages == 5  # timm's ResNet has torchvision's stages: stem, layer1..layer4


def test_checkpoint_rebuilds_an_hf_backbone_without_its_folder(tiny_hf_models, tmp_path):
    import shutil

    folder = tmp_path / "clip"
    shutil.copytree(tiny_hf_models["clip"], folder)
    set_seed(0)
    model = build_e2e_model("e2e_meanpool", num_classes=3, backbone=f"hf:{folder}", feature="projected").eval()
    save_checkpoint(build_checkpoint(model, CLASSES, {"image_size": 32}), tmp_path / "e2e.pth")
    shutil.rmtree(folder)  # the config travels in the record, the weights in the state
    ckpt = torch.load(tmp_path / "e2e.pth", weights_only=True)
    again = load_e2e_model(ckpt["model_config"], ckpt["model_state"]).eval()
    clips, lengths, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(again(clips, lengths), model(clips, lengths))
    assert again.backbone_record.feature == "projected" and again.feature_dim == 24

"""models/backbone.py: headless torchvision backbones, --weights handling, input statistics, embedding precision.
The frame preprocessing they take is transforms.py's (tests/test_transforms.py)."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from models.backbone import IMAGENET_MEAN, IMAGENET_STD, build_backbone, embed_batch, find_classifier, resolve_backbone
from utils import BadInputError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_headless_backbone_dim_matches_its_output(name):
    model, record = build_backbone(name, "none", seed=0)
    dim = record.dim
    reference = torchvision.models.get_model(name, weights=None)
    assert dim == find_classifier(reference)[1].in_features  # read from the model, not a table
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    out = embed_batch(model, torch.randn(2, 3, 64, 64))
    assert out.shape == (2, dim) and out.dtype == torch.float32


def test_random_init_is_reproducible_with_seed_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = build_backbone("resnet18", "none", seed=7)
    after = torch.rand(1)
    b, _ = build_backbone("resnet18", "none", seed=7)
    c, _ = build_backbone("resnet18", "none", seed=8)
    assert torch.equal(before, after)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])


def test_weights_path_full_or_headless_state_dict(tmp_path):
    full = torchvision.models.resnet18(weights=None)
    full_path = tmp_path / "full.pth"
    torch.save(full.state_dict(), full_path)
    model, record = build_backbone("resnet18", str(full_path))
    assert record.dim == 512 and torch.equal(model.state_dict()["conv1.weight"], full.state_dict()["conv1.weight"])
    x = torch.randn(2, 3, 64, 64)
    full.fc = torch.nn.Identity()
    full.eval()
    torch.testing.assert_close(embed_batch(model, x), embed_batch(full, x))
    # headless, wrapped the way training scripts save, with DDP's prefix
    headless = {f"module.{k}": v for k, v in model.state_dict().items()}
    wrapped_path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": headless}, wrapped_path)
    again, _ = build_backbone("resnet18", str(wrapped_path))
    torch.testing.assert_close(embed_batch(again, x), embed_batch(model, x))


def test_weights_path_mismatch_and_garbage_are_clear(tmp_path):
    other = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), other)
    with pytest.raises(BadInputError, match="resnet34.pth does not fit.*unexpected key"):
        build_backbone("resnet18", str(other))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(BadInputError, match="garbage.pth"):
        build_backbone("resnet18", str(garbage))
    with pytest.raises(BadInputError, match="no such file"):
        build_backbone("resnet18", str(tmp_path / "missing.pth"))
    with pytest.raises(BadInputError, match="unknown backbone"):
        build_backbone("resnet19", "none")


def test_imagenet_download_failure_names_the_alternatives(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(BadInputError) as err:
        build_backbone("resnet18", "imagenet")
    assert "no network" in str(err.value) and "resnet18" in str(err.value)
    assert "--weights none" in str(err.value) and "--weights PATH" in str(err.value)


def test_torchvision_backbones_take_imagenet_statistics():
    stats = [(r.mean, r.std) for r in (resolve_backbone("resnet18"), resolve_backbone("efficientnet_b0"))]
    assert stats[0] == stats[1] == (IMAGENET_MEAN, IMAGENET_STD)
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    assert tuple(weights.transforms().mean) == IMAGENET_MEAN and tuple(weights.transforms().std) == IMAGENET_STD


def test_bf16_autocast_on_cpu():
    """The resolution rules are precision.py's (tests/test_precision.py); here, the embedding under bf16."""
    model, record = build_backbone("resnet18", "none", seed=0)
    dim = record.dim
    x = torch.randn(2, 3, 64, 64)
    bf16 = embed_batch(model, x, "bf16")
    fp32 = embed_batch(model, x, "fp32")
    assert bf16.dtype == torch.float32 and bf16.shape == (2, dim)
    assert not torch.equal(bf16, fp32) and torch.allclose(bf16, fp32, rtol=0.1, atol=0.1)

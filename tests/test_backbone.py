"""models/backbone.py: torchvision, timm and Hugging Face backbones, their records (input, feature, D), --weights
handling, input statistics, embedding precision. The frame preprocessing they take is transforms.py's
(tests/test_transforms.py). timm models are random-initialised and the Hugging Face ones tiny local folders
(conftest.tiny_hf_models): nothing is downloaded."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from models.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneRecord,
    build_backbone,
    choose_channels_last,
    embed_batch,
    record_of,
    resolve_backbone,
)
from models.backbones.torchvision import find_classifier
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


def test_record_carries_the_memory_layout_each_family_prefers(tiny_hf_models):
    """channels_last is decided once, on the built module, for every library: convolution-heavy backbones
    (torchvision's and timm's ResNets) yes, ViTs and Hugging Face transformers no; a flag's choice is recorded."""
    prefers = {name: build_backbone(name, "none", seed=0, image_size=32)[1].channels_last
               for name in ("resnet18", "timm:resnet18", "timm:test_vit", "vit_b_16")}
    prefers["hf"] = build_backbone(f"hf:{tiny_hf_models['clip']}")[1].channels_last
    assert prefers == {"resnet18": True, "timm:resnet18": True, "timm:test_vit": False, "vit_b_16": False,
                       "hf": False}
    _, record = build_backbone("timm:resnet18", "none", seed=0, image_size=32)
    assert choose_channels_last(record, None).channels_last is True
    assert choose_channels_last(record, False).channels_last is False
    forced = choose_channels_last(record, False)
    assert BackboneRecord.from_dict(forced.to_dict()) == forced  # stored as stage 2 chose it
    assert build_backbone(forced)[1].channels_last is False  # a rebuild keeps the recorded layout
    with pytest.raises(ValueError, match="built record"):
        choose_channels_last(resolve_backbone("resnet18"), None)


def test_files_from_before_records_keep_their_recorded_layout():
    """A stage-2 JSON with a top-level channels_last and no record (written before records existed) keeps that
    layout; one older still takes the backbone's preference when rebuilt."""
    old = {"backbone": "resnet18", "weights": "none", "seed": 0, "image_size": 64, "resize": "crop"}
    assert record_of({**old, "channels_last": False}).channels_last is False
    assert record_of(old).channels_last is None
    assert build_backbone(record_of(old))[1].channels_last is True
    assert build_backbone(record_of({**old, "channels_last": False}))[1].channels_last is False


def test_bf16_autocast_on_cpu():
    """The resolution rules are precision.py's (tests/test_precision.py); here, the embedding under bf16."""
    model, record = build_backbone("resnet18", "none", seed=0)
    dim = record.dim
    x = torch.randn(2, 3, 64, 64)
    bf16 = embed_batch(model, x, "bf16")
    fp32 = embed_batch(model, x, "fp32")
    assert bf16.dtype == torch.float32 and bf16.shape == (2, dim)
    assert not torch.equal(bf16, fp32) and torch.allclose(bf16, fp32, rtol=0.1, atol=0.1)


# ----------------------------------------------------------------------------------------------- timm and hf


def _timm_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """timm's own model, built the way --weights none --seed builds it, in eval mode."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return timm.create_model(name, **kwargs).eval()


def test_unknown_backbone_names_list_the_three_prefixes():
    for name in ("resnet19", "foo:resnet18", "tv:resnet18"):
        with pytest.raises(BadInputError) as err:
            resolve_backbone(name)
        assert all(form in str(err.value) for form in ("torchvision name", "timm:NAME", "hf:NAME_OR_DIR")), err.value
    with pytest.raises(BadInputError, match="unknown timm model 'not_a_model'"):
        resolve_backbone("timm:not_a_model")
    with pytest.raises(BadInputError, match="Invalid pretrained tag"):
        resolve_backbone("timm:vit_small_patch16_224.no_such_tag")
    assert resolve_backbone("torchvision:resnet18").backbone == resolve_backbone("resnet18").backbone == "resnet18"


def test_timm_record_comes_from_its_pretrained_config_and_records_overrides():
    import json

    import timm

    clip = resolve_backbone("timm:vit_base_patch16_clip_224.openai")  # no model is built to resolve a record
    cfg = timm.models.get_pretrained_cfg("vit_base_patch16_clip_224.openai").to_dict()
    assert clip.weights == "pretrained" and clip.backbone == "timm:vit_base_patch16_clip_224.openai"
    # without a tag, the record names the weights timm picks (here a fine-tuned ImageNet classifier, not CLIP's own)
    assert resolve_backbone("timm:vit_base_patch16_clip_224").name == "vit_base_patch16_clip_224.laion2b_ft_in12k_in1k"
    assert (clip.mean, clip.std) == (tuple(cfg["mean"]), tuple(cfg["std"])) != (IMAGENET_MEAN, IMAGENET_STD)
    r = clip.resize
    assert (r.size, r.mode, r.crop_pct, r.interpolation, r.convention) == (224, "crop", cfg["crop_pct"], "bicubic",
                                                                           "timm")
    assert clip.overridden == () and clip.dim is None
    dino = resolve_backbone("timm:vit_small_patch14_dinov2.lvd142m")
    assert (dino.image_size, dino.resize.crop_pct, dino.mean) == (518, 1.0, IMAGENET_MEAN)
    small = resolve_backbone("timm:vit_small_patch14_dinov2.lvd142m", "none", image_size=224, resize="squash", seed=3)
    assert small.overridden == ("image_size", "resize") and (small.image_size, small.resize.mode) == (224, "squash")
    assert small.seed == 3 and resolve_backbone("timm:convnext_tiny", seed=3).seed is None  # seeds random init only
    again = BackboneRecord.from_dict(json.loads(json.dumps(small.to_dict())))  # through a JSON file and back
    assert again == small
    with pytest.raises(BadInputError, match="imagenet names torchvision's weights"):
        resolve_backbone("timm:convnext_tiny", "imagenet")


def test_hf_record_comes_from_its_image_processor_config(tiny_hf_models):
    clip = resolve_backbone(f"hf:{tiny_hf_models['clip']}")
    assert (clip.image_size, clip.resize.mode, clip.resize.crop_pct, clip.resize.interpolation) == (32, "crop", 1.0,
                                                                                                  "bicubic")
    assert clip.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073)) and clip.resize.convention == "transformers"
    dino = resolve_backbone(f"hf:{tiny_hf_models['dinov2']}")
    assert dino.image_size == 32 and dino.resize.scale_size == 36 and dino.mean == IMAGENET_MEAN
    siglip = resolve_backbone(f"hf:{tiny_hf_models['siglip']}")
    assert (siglip.image_size, siglip.resize.mode, siglip.mean, siglip.std) == (32, "squash", (0.5,) * 3, (0.5,) * 3)
    bare = tiny_hf_models["clip"].parent / "no_processor"
    bare.mkdir(exist_ok=True)
    (bare / "config.json").write_text((tiny_hf_models["clip"] / "config.json").read_text())
    with pytest.raises(BadInputError, match="preprocessor_config.json"):  # never a guess at ImageNet statistics
        resolve_backbone(f"hf:{bare}")


def test_timm_features_shapes_and_their_sources():
    x = torch.randn(2, 3, 32, 32)
    vit = _timm_model("vit_tiny_patch16_224", num_classes=0, img_size=32)
    tokens = vit.forward_features(x)
    expected = {"pooled": vit(x), "cls": tokens[:, 0], "mean": tokens[:, 1:].mean(1)}
    for feature, want in expected.items():
        model, record = build_backbone("timm:vit_tiny_patch16_224", "none", seed=0, feature=feature, image_size=32)
        assert record.dim == 192 and record.feature == feature and record.overridden == ("image_size",)
        torch.testing.assert_close(embed_batch(model, x), want)
    for name, feature, message in (("timm:resnet18", "cls", "feature map, not tokens"),
                                   ("timm:vit_base_patch16_siglip_224", "cls", "has no class token"),
                                   ("timm:vit_tiny_patch16_224", "projected", "vit_tiny_patch16_224.* no image-text"),
                                   ("resnet18", "mean", "torchvision backbones .* pooled")):
        with pytest.raises(BadInputError, match=message):
            build_backbone(name, "none", seed=0, feature=feature, image_size=32)


def test_timm_clip_projected_is_its_own_image_embedding():
    name = "vit_base_patch16_clip_224.openai"
    x = torch.randn(1, 3, 32, 32)
    own = _timm_model(name, img_size=32)  # timm's CLIP image tower: forward gives the projected embedding
    projected, record = build_backbone(f"timm:{name}", "none", seed=0, feature="projected", image_size=32)
    assert record.dim == 512 and own.forward_head(own.forward_features(x), pre_logits=True).shape[1] == 768
    torch.testing.assert_close(embed_batch(projected, x), own(x))


def test_hf_features_equal_the_models_own_outputs(tiny_hf_models):
    from transformers import CLIPVisionModelWithProjection, SiglipVisionModel

    x = torch.randn(2, 3, 32, 32)
    clip = CLIPVisionModelWithProjection.from_pretrained(tiny_hf_models["clip"]).eval()
    with torch.no_grad():
        out = clip(pixel_values=x)
        pooled = clip.vision_model(pixel_values=x).pooler_output  # the post-layernormed class token
    expected = {"pooled": pooled, "cls": out.last_hidden_state[:, 0], "mean": out.last_hidden_state[:, 1:].mean(1),
                "projected": out.image_embeds}
    for feature, want in expected.items():
        model, record = build_backbone(f"hf:{tiny_hf_models['clip']}", feature=feature)
        assert record.dim == (24 if feature == "projected" else 32), feature
        torch.testing.assert_close(embed_batch(model, x), want)
    siglip = SiglipVisionModel.from_pretrained(tiny_hf_models["siglip"]).eval()
    model, record = build_backbone(f"hf:{tiny_hf_models['siglip']}", feature="projected")
    with torch.no_grad():  # SigLIP's image embedding (get_image_features) is its attention-pool output
        torch.testing.assert_close(embed_batch(model, x), siglip(pixel_values=x).pooler_output)
    assert "SigLIP" in record.feature_from
    with pytest.raises(BadInputError, match="dinov2.*no image-text projection"):
        build_backbone(f"hf:{tiny_hf_models['dinov2']}", feature="projected")
    with pytest.raises(BadInputError, match="no class token"):
        build_backbone(f"hf:{tiny_hf_models['siglip']}", feature="cls")


def test_random_init_and_local_weights_for_timm_and_hf(tmp_path, tiny_hf_models):
    from safetensors.torch import save_file

    x = torch.randn(2, 3, 32, 32)
    a, _ = build_backbone("timm:test_vit", "none", seed=5, image_size=32)
    b, _ = build_backbone("timm:test_vit", "none", seed=5, image_size=32)
    c, _ = build_backbone("timm:test_vit", "none", seed=6, image_size=32)
    assert torch.equal(embed_batch(a, x), embed_batch(b, x)) and not torch.equal(embed_batch(a, x), embed_batch(c, x))
    # timm's own files: a full state_dict with its classifier (.pth) and a headless one (.safetensors)
    full = _timm_model("test_vit", seed=6, img_size=32)
    torch.save(full.state_dict(), tmp_path / "vit.pth")
    save_file({k: v for k, v in full.state_dict().items() if not k.startswith("head.")}, tmp_path / "vit.safetensors")
    with torch.no_grad():
        want = full.forward_head(full.forward_features(x), pre_logits=True)
    for path in (tmp_path / "vit.pth", tmp_path / "vit.safetensors"):
        loaded, record = build_backbone("timm:test_vit", str(path), image_size=32)
        assert record.weights == str(path)
        torch.testing.assert_close(embed_batch(loaded, x), want)
    torch.save(_timm_model("resnet18").state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(BadInputError, match="resnet.pth does not fit"):
        build_backbone("timm:test_vit", str(tmp_path / "resnet.pth"), image_size=32)
    with pytest.raises(BadInputError, match="model folder"):
        build_backbone(f"hf:{tiny_hf_models['clip']}", str(tmp_path / "vit.pth"))
    # hf: random init from the config alone, reproducible; --weights DIR loads another folder's weights
    r1, _ = build_backbone(f"hf:{tiny_hf_models['clip']}", "none", seed=1)
    r2, _ = build_backbone(f"hf:{tiny_hf_models['clip']}", "none", seed=1)
    own, _ = build_backbone(f"hf:{tiny_hf_models['clip']}")
    assert torch.equal(embed_batch(r1, x), embed_batch(r2, x)) and not torch.equal(embed_batch(r1, x),
                                                                                      embed_batch(own, x))
    via_dir, rec = build_backbone(f"hf:{tiny_hf_models['clip']}", str(tiny_hf_models["clip"]))
    torch.testing.assert_close(embed_batch(via_dir, x), embed_batch(own, x))
    with pytest.raises(BadInputError, match="does not hold CLIPVisionModel's weights"):
        build_backbone(f"hf:{tiny_hf_models['clip']}", str(tiny_hf_models["dinov2"]))


def test_failed_download_names_the_offline_alternatives_and_never_falls_back(monkeypatch, tiny_hf_models):
    import timm
    import transformers

    real_create = timm.create_model

    def offline_create(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline_create)
    with pytest.raises(BadInputError) as err:
        build_backbone("timm:test_vit", image_size=32)
    assert "couldn't connect" in str(err.value) and "--weights none" in str(err.value)
    assert "--weights PATH" in str(err.value)

    def offline_load(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(transformers.CLIPVisionModel, "from_pretrained", offline_load)
    with pytest.raises(BadInputError) as err:
        build_backbone(f"hf:{tiny_hf_models['clip']}")
    assert "--weights none" in str(err.value) and "--weights PATH" in str(err.value)


@pytest.mark.needs_shared_data
def test_record_preprocessing_matches_the_librarys_own(tmp_path, shared_data):
    """OpenCV from the record against timm's own eval transform (PIL) and the model's Hugging Face image processor,
    on real frames: within about a grey level on average (interpolation kernels differ; benchmarks/
    check_preprocessing.py measures more backbones). Rounding as the library does is what gets it there."""
    from dataclasses import replace

    import cv2
    import numpy as np
    import timm
    from PIL import Image
    from transformers import AutoImageProcessor, CLIPImageProcessor

    from transforms import resize_frame

    CLIPImageProcessor().save_pretrained(tmp_path)  # transformers' CLIP defaults: 224 px, shorter side, bicubic

    frames = []
    for clip in ("vtest.avi", "bikes.mp4"):
        ok, bgr = cv2.VideoCapture(str(shared_data / "videos" / clip)).read()
        assert ok
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        frames += [rgb, cv2.resize(rgb, (320, 240), interpolation=cv2.INTER_AREA)]  # and at UCF-101's size
    name = "vit_base_patch16_clip_224.openai"
    cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(name).to_dict())
    tf, mean, std = timm.data.create_transform(**cfg), torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
    processor = AutoImageProcessor.from_pretrained(tmp_path)

    def timm_own(rgb):
        return ((tf(Image.fromarray(rgb)) * std.view(3, 1, 1) + mean.view(3, 1, 1)) * 255).permute(1, 2, 0).numpy()

    def hf_own(rgb):
        out = processor(images=rgb, return_tensors="np", do_normalize=False, do_rescale=False)["pixel_values"][0]
        return out.transpose(1, 2, 0)

    for spec, own in ((resolve_backbone(f"timm:{name}").resize, timm_own),
                      (resolve_backbone(f"hf:{tmp_path}").resize, hf_own)):
        diff = np.mean([np.abs(resize_frame(f, spec).astype(np.float64) - own(f)).mean() for f in frames])
        legacy = np.mean([np.abs(resize_frame(f, replace(spec, convention="actionbert")).astype(np.float64)
                                 - own(f)).mean() for f in frames])
        assert diff < 1.2 and legacy > 2 * diff, (spec, diff, legacy)

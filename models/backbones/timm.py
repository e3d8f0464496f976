"""timm models as frame backbones (timm:NAME[.TAG]): CLIP, DINOv2, SigLIP, ConvNeXt, EVA, ..."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.backbone import (
    BackboneRecord,
    FrameEncoder,
    complete_record,
    first_line,
    interpolation_name,
    load_checked_state_dict,
    make_record,
    read_state_dict,
    rgb_triple,
    seeded,
)
from models.backbones.stages import Stage, block_stages, resnet_stages
from transforms import ResizeSpec
from utils import BadInputError

DEFAULT_WEIGHTS = "pretrained"
WEIGHTS_IN_FOLDER = False


def _timm_input(name: str) -> tuple[str, ResizeSpec, tuple, tuple]:
    """(name with its pretrained tag, input, mean, std) from timm's pretrained config, as timm.data.resolve_data_config
    resolves it (its defaults where the config is silent)."""
    import timm

    if not timm.is_model(name):
        arch = name.split(".")[0]
        similar = timm.list_models(f"*{arch.split('_')[0]}*")[:6]
        raise BadInputError(f"unknown timm model {name!r}" + (f" (timm has e.g. {', '.join(similar)})" if similar else
                                                               "; see timm.list_models()"))
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError as exc:  # an unknown pretrained tag
        raise BadInputError(f"timm:{name}: {exc}") from None
    cfg_dict = cfg.to_dict() if cfg is not None else {"architecture": name}
    data = timm.data.resolve_data_config(pretrained_cfg=cfg_dict)
    _, height, width = data["input_size"]
    if height != width:
        raise BadInputError(f"timm:{name} takes {height}x{width} input; frames here are square: pass --image_size")
    mode = {"center": "crop", "squash": "squash"}.get(data["crop_mode"])
    if mode is None:
        raise BadInputError(f"timm:{name}: crop mode {data['crop_mode']!r} is not supported; pass --resize crop "
                            "or --resize squash")
    full = f"{cfg.architecture}.{cfg.tag}" if cfg is not None and cfg.tag else name
    spec = ResizeSpec(int(height), mode, float(data["crop_pct"]), interpolation_name(data["interpolation"], name),
                      "timm")
    return full, spec, rgb_triple(data["mean"], "mean", name), rgb_triple(data["std"], "std", name)


def _timm_projection(model: nn.Module, name: str) -> str | None:
    """How a timm model gives its image-text embedding: 'head' (CLIP image towers, ViT, ConvNeXt or ResNet, keep
    their projection as the classifier head), 'pooled' (SigLIP: the attention-pool head output is the image
    embedding, as SigLIP's get_image_features returns it) or None (no image-text projection; a fine-tuned CLIP's head
    is a classifier)."""
    arch, _, tag = name.partition(".")
    if "ft" in tag.split("_"):
        return None
    if "siglip" in arch and getattr(model, "attn_pool", None) is not None:
        return "pooled"
    if "clip" in name and getattr(model, "num_classes", 0) > 0:
        return "head"
    return None


class TimmEncoder(FrameEncoder):
    def __init__(self, model: nn.Module, record: BackboneRecord) -> None:
        super().__init__(model, record)
        self.projection = _timm_projection(model, record.name) if record.feature == "projected" else None
        if record.feature == "projected" and self.projection is None:
            raise BadInputError(f"--feature projected: timm:{record.name} has no image-text projection; it is for "
                                "CLIP and SigLIP image towers (not fine-tuned ones; use pooled, cls or mean)")

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.projection == "head":
            return self.model(x)
        if self.record.feature in ("pooled", "projected"):
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)
        return self._token_feature(x)

    def set_library_checkpointing(self, enabled: bool) -> bool:
        self.model.set_grad_checkpointing(enabled)
        return True

    def feature_source(self, prefix: int | None) -> str:
        return {
            "pooled": "forward_head(forward_features(x), pre_logits=True)",
            "cls": "forward_features(x)[:, 0]",
            "mean": f"forward_features(x)[:, {prefix}:].mean(1)",
            "projected": {"head": "forward(x): the CLIP projection head",
                          "pooled": "forward_head(forward_features(x), pre_logits=True): SigLIP's image embedding",
                          }.get(self.projection or "", ""),
        }[self.record.feature]


def _build_timm(record: BackboneRecord, weights: str, seed: int | None, flag: str) -> FrameEncoder:
    import timm

    kwargs: dict[str, Any] = {}
    if record.feature != "projected":
        kwargs["num_classes"] = 0  # pre-logits features; the classifier is left out, not carried along
    if "image_size" in record.overridden:  # transformers size their position table to the input
        kwargs["img_size"] = record.image_size

    def create(pretrained: bool) -> nn.Module:
        try:
            return timm.create_model(record.name, pretrained=pretrained, **kwargs)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            kwargs.pop("img_size")  # a CNN: any input size works without being told
            return timm.create_model(record.name, pretrained=pretrained, **kwargs)

    if weights == "pretrained":
        try:
            model = create(True)
        except Exception as exc:  # hub download, cache and checksum failures all land here
            raise BadInputError(f"cannot get the pretrained weights of timm:{record.name} ({first_line(exc)}); "
                                f"use {flag} none for a random backbone or {flag} PATH for a local file") from None
    else:
        with seeded(seed if weights == "none" else None):
            model = create(False)
        if weights != "none":
            state = read_state_dict(Path(weights), flag)
            filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
            if filter_fn is not None:  # timm's own conversions: resampled position table, original formats
                try:
                    state = filter_fn(state, model)
                except Exception as exc:
                    raise BadInputError(f"{flag} {weights} does not fit timm:{record.name}: {first_line(exc)}") from None
            head = getattr(model, "pretrained_cfg", {}).get("classifier") or "head"
            heads = (head,) if isinstance(head, str) else tuple(head)
            if kwargs.get("num_classes") == 0:  # the file's classifier has no place here
                state = {k: v for k, v in state.items() if not k.startswith(tuple(h + "." for h in heads))}
            load_checked_state_dict(model, state, Path(weights), flag)
    return TimmEncoder(model, record)


def resolve(name: str, weights: str, seed: int | None, feature: str, image_size: int | None,
            resize: str | None) -> BackboneRecord:
    full_name, own, mean, std = _timm_input(name)
    return make_record("timm", name, full_name, weights, seed, feature, own, mean, std, image_size, resize)


def build(record: BackboneRecord, weights: str, seed: int | None, flag: str) -> tuple[nn.Module, BackboneRecord]:
    module = _build_timm(record, weights, seed, flag)
    return module, complete_record(module)


def stages(backbone: nn.Module) -> list[Stage]:
    """timm's ResNets: stem, layer1..layer4; other models: `block_stages`."""
    return resnet_stages(backbone) or block_stages(backbone.model)

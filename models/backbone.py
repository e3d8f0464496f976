"""Frame backbones: any torchvision classifier with its last Linear layer removed, plus the frame preprocessing
that prepare_data.py, predict.py and end-to-end training must share exactly (same resize, crop and normalisation).

`build_backbone(name, weights)` returns `(module, D)`: the module maps a normalised float batch (B, 3, S, S) to the
pooled penultimate feature (B, D). D is read from the removed layer, so new torchvision models work unchanged.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from utils import BadInputError

log = logging.getLogger("actionbert")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("crop", "squash")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def classification_model_names() -> list[str]:
    import torchvision  # imported here: it costs ~3 s at start-up and the embedding route never needs it

    return sorted(torchvision.models.list_models(module=torchvision.models))


def find_classifier(model: nn.Module) -> tuple[str, nn.Linear]:
    """The last Linear layer registered in the model: the classifier in every torchvision classification model
    (resnet `fc`, densenet/efficientnet/convnext `classifier[-1]`, vit `heads.head`, swin `head`, vgg fc8...)."""
    found: tuple[str, nn.Linear] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise BadInputError(f"{type(model).__name__} has no Linear classifier to remove; pick another --model")
    return found


def _replace_module(model: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _unwrap_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """Accept a bare state_dict or one wrapped as {"state_dict": ...} / {"model": ...}; strip DDP's `module.`."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(f"--weights {path}: not a state_dict (a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_headless_state_dict(model: nn.Module, classifier: str, path: Path) -> None:
    """Load a local state_dict, full (classifier keys dropped) or headless, into the headless model."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure is the user's file
        raise BadInputError(f"--weights {path}: cannot read it as a torch state_dict ({exc})") from exc
    state = _unwrap_state_dict(obj, path)
    state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (e.g. {unexpected[0]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatch(es) (e.g. {k}: file {tuple(state[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise BadInputError(
            f"--weights {path} does not fit this backbone: {'; '.join(parts)}. Was it saved from another --model?"
        )
    model.load_state_dict(state, strict=True)


def build_backbone(name: str, weights: str = "imagenet", seed: int | None = None) -> tuple[nn.Module, int]:
    """A torchvision classifier without its last Linear layer, in eval mode, and its feature dimension D.

    weights: "imagenet" (torchvision's DEFAULT weights, downloaded or from the torch hub cache), "none" (random
    init; pass `seed` to make it reproducible, as predict.py must to rebuild the same random backbone) or a path
    to a local state_dict (full classifier or headless).
    """
    import torchvision

    if name not in classification_model_names():
        some = ", ".join(n for n in classification_model_names() if n.startswith(("resnet", "efficientnet_b", "convnext")))
        raise BadInputError(f"unknown backbone --model {name!r}; any torchvision classification model works, e.g. {some}")
    if weights == "imagenet":
        try:
            weight_enum = torchvision.models.get_model_weights(name).DEFAULT
            model = torchvision.models.get_model(name, weights=weight_enum)
        except Exception as exc:  # network, hub cache and checksum failures all land here
            raise BadInputError(
                f"cannot get torchvision's ImageNet weights for {name} ({type(exc).__name__}: {exc}); "
                f"use --weights none for a random backbone or --weights PATH for a local state_dict"
            ) from exc
    else:
        if weights != "none" and not Path(weights).is_file():
            raise BadInputError(f"--weights {weights}: no such file (expected imagenet, none or a state_dict path)")
        rng = torch.random.fork_rng(devices=[]) if seed is not None else nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            model = torchvision.models.get_model(name, weights=None)
    classifier, layer = find_classifier(model)
    dim = int(layer.in_features)
    _replace_module(model, classifier, nn.Identity())
    if weights not in ("imagenet", "none"):
        load_headless_state_dict(model, classifier, Path(weights))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, dim


def resize_frame(rgb: np.ndarray, image_size: int, resize: str = "crop") -> np.ndarray:
    """Resize (and centre-crop) an HxWx3 frame to image_size x image_size.

    crop: shorter side to image_size, then the centre square (keeps the aspect ratio);
    squash: straight to SxS (the original code's behaviour, distorts the aspect ratio).
    INTER_AREA for strong downscaling (no aliasing), INTER_LINEAR otherwise (5x cheaper, same result near 1:1).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    h, w = rgb.shape[:2]
    if resize == "squash":
        new_w, new_h = image_size, image_size
    else:
        scale = image_size / min(h, w)
        new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    if (new_w, new_h) != (w, h):
        interp = cv2.INTER_AREA if new_w * 2 <= w or new_h * 2 <= h else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (new_w, new_h), interpolation=interp)
    if resize == "crop":
        top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
        rgb = rgb[top : top + image_size, left : left + image_size]
    return rgb


def preprocess_frame(rgb_uint8_hwc: np.ndarray, image_size: int, resize: str = "crop") -> torch.Tensor:
    """RGB uint8 HxWx3 -> uint8 tensor (3, S, S). Stays uint8 so workers ship 4x fewer bytes; normalise later."""
    if rgb_uint8_hwc.ndim != 3 or rgb_uint8_hwc.shape[2] != 3 or rgb_uint8_hwc.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 HxWx3 frame, got {rgb_uint8_hwc.dtype} {rgb_uint8_hwc.shape}")
    out = resize_frame(rgb_uint8_hwc, image_size, resize)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))


def normalize_batch(x_uint8: torch.Tensor, device: torch.device | str, channels_last: bool = False) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float32 normalised on `device`: the copy moves uint8 (4x less traffic) and the
    arithmetic runs on the device. non_blocking only helps (and is only safe) from pinned memory."""
    device = torch.device(device)
    x = x_uint8.to(device, non_blocking=device.type == "cuda" and x_uint8.is_pinned())
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255.0
    x = (x.float() - mean) / std
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto = fp16 autocast on CUDA, fp32 on the CPU (CPU autocast is slower than fp32 for most CNNs)."""
    if precision not in PRECISIONS:
        raise BadInputError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    return precision


def autocast_context(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def embed_batch(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Forward a normalised batch in inference mode (and autocast for fp16/bf16); returns float32 (B, D)."""
    with torch.inference_mode(), autocast_context(precision, x.device):
        out = model(x)
    return out.float().flatten(1)


def default_threads(local_world_size: int = 1) -> int:
    """torch threads per process so that K ranks on one machine do not oversubscribe its cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))

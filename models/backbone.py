"""Frame backbones: any torchvision classifier with its last Linear layer removed.

`build_backbone(name, weights)` returns `(module, D)`: the module maps a normalised float batch (B, 3, S, S) to the
pooled penultimate feature (B, D). D is read from the removed layer, so new torchvision models work unchanged.
`input_stats(name)` gives the mean and std its input is normalised with; the frame preprocessing itself, which
prepare_data.py, predict.py and end-to-end training share exactly, is in transforms.py.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from precision import autocast
from utils import BadInputError

log = logging.getLogger("actionbert")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_stats(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(mean, std) per RGB channel on [0, 1] that backbone `name` expects its input normalised with
    (transforms.normalize_batch). Every torchvision classifier was trained on ImageNet-normalised input, and a random
    one (--weights none) is fed the same way; this is the one place that says so."""
    return IMAGENET_MEAN, IMAGENET_STD


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


def _unwrap_state_dict(obj: object, path: Path, flag: str = "--weights") -> dict[str, torch.Tensor]:
    """Accept a bare state_dict or one wrapped as {"state_dict": ...} / {"model": ...}; strip DDP's `module.`."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(f"{flag} {path}: not a state_dict (a dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_headless_state_dict(model: nn.Module, classifier: str, path: Path, flag: str = "--weights") -> None:
    """Load a local state_dict, full (classifier keys dropped) or headless, into the headless model. Messages
    name the file by `flag`, the option the user typed it with."""
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure is the user's file; torch's text would advise weights_only=False
        raise BadInputError(f"{flag} {path}: cannot read it as a torch state_dict of plain tensors "
                            f"({type(exc).__name__}; damaged, or another kind of file)") from None
    state = _unwrap_state_dict(obj, path, flag)
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
            f"{flag} {path} does not fit this backbone: {'; '.join(parts)}. Was it saved from another --model?"
        )
    model.load_state_dict(state, strict=True)


def build_backbone(name: str, weights: str = "imagenet", seed: int | None = None,
                   flag: str = "--weights") -> tuple[nn.Module, int]:
    """A torchvision classifier without its last Linear layer, in eval mode, and its feature dimension D.

    weights: "imagenet" (torchvision's DEFAULT weights, downloaded or from the torch hub cache), "none" (random
    init; pass `seed` to make it reproducible, as predict.py must to rebuild the same random backbone) or a path
    to a local state_dict (full classifier or headless). `flag` is the option a path came from, for messages.
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
            raise BadInputError(f"{flag} {weights}: no such file (expected imagenet, none or a state_dict path)")
        rng = torch.random.fork_rng(devices=[]) if seed is not None else nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            model = torchvision.models.get_model(name, weights=None)
    classifier, layer = find_classifier(model)
    dim = int(layer.in_features)
    _replace_module(model, classifier, nn.Identity())
    if weights not in ("imagenet", "none"):
        load_headless_state_dict(model, classifier, Path(weights), flag)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, dim


def embed_batch(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Forward a normalised batch in inference mode (and autocast for fp16/bf16); returns float32 (B, D)."""
    with torch.inference_mode(), autocast(precision, x.device):
        out = model(x)
    return out.float().flatten(1)


def default_threads(local_world_size: int = 1) -> int:
    """torch threads per process so that K ranks on one machine do not oversubscribe its cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_world_size))


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether `model` should run in channels_last: where convolutions hold most of the weights. Chosen by
    measurement, the same on the CPU and on CUDA: on a 2-core CPU at 224 px (fp32 forward, one thread) channels_last
    ran resnet18 and resnet50 1.25x, mobilenet_v3_large 1.13x and densenet121 1.07x faster, and a resnet18 training
    step 1.11x; vit_b_16, swin_t and convnext_tiny, whose weights sit in Linear layers, gained nothing (0.99-1.08x,
    within noise), so they keep the default layout. On GPUs channels_last is what tensor-core convolutions want."""
    conv = sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False))
    total = sum(p.numel() for p in model.parameters())
    return total > 0 and 2 * conv >= total


def resolve_channels_last(flag: bool | None, model: nn.Module, name: str) -> bool:
    """--channels_last / --no-channels_last, else the backbone's own preference; logged either way."""
    chosen = prefers_channels_last(model) if flag is None else bool(flag)
    how = "--channels_last" if flag else "--no-channels_last" if flag is not None else "default for this backbone"
    log.info("memory layout: %s (%s)", "channels_last" if chosen else "contiguous NCHW", how if flag is not None
             else f"{how}: {name} is {'' if chosen else 'not '}mostly convolutions")
    return chosen

"""torchvision classifiers as frame backbones (bare names or torchvision:NAME), their last Linear layer removed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from torch import nn

from models.backbone import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BackboneRecord,
    load_checked_state_dict,
    override_input,
    read_state_dict,
    seeded,
)
from models.backbones.stages import Stage, resnet_stages
from transforms import ResizeSpec
from utils import BadInputError

DEFAULT_WEIGHTS = "imagenet"
WEIGHTS_IN_FOLDER = False


def classification_model_names() -> list[str]:
    import torchvision  # imported here: it costs ~3 s at start-up and the embedding route never needs it

    return sorted(torchvision.models.list_models(module=torchvision.models))


def record(name: str, weights: str, seed: int | None, image_size: int | None,
                        resize: str | None) -> BackboneRecord:
    """A torchvision classifier's input, as ActionBERT has always fed them: 224 px, shorter side then the centre
    square, bilinear, ImageNet statistics (a random backbone, --weights none, is fed the same way). This is the one
    place ImageNet statistics are assumed."""
    spec, overridden = override_input(ResizeSpec(224, "crop"), image_size, resize)
    return BackboneRecord(backbone=name, source="torchvision", name=name, weights=weights,
                          seed=seed if weights == "none" else None, feature="pooled", resize=spec, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD, overridden=overridden)


def resolve(name: str, weights: str, seed: int | None, feature: str, image_size: int | None,
            resize: str | None) -> BackboneRecord:
    if feature != "pooled":
        raise BadInputError(f"--feature {feature}: torchvision backbones ({name}) give their pooled "
                            "penultimate features only; use a timm: or hf: backbone for cls, mean or projected")
    return record(name, weights, seed, image_size, resize)


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


def load_headless_state_dict(model: nn.Module, classifier: str, path: Path, flag: str = "--weights") -> None:
    """Load a local state_dict, full (classifier keys dropped) or headless, into the headless torchvision model."""
    state = read_state_dict(path, flag)
    state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
    load_checked_state_dict(model, state, path, flag)


def _build(record: BackboneRecord, weights: str, seed: int | None, flag: str) -> tuple[nn.Module, int]:
    import torchvision

    name = record.name
    if weights == "imagenet":
        try:
            weight_enum = torchvision.models.get_model_weights(name).DEFAULT
            model = torchvision.models.get_model(name, weights=weight_enum)
        except Exception as exc:  # network, hub cache and checksum failures all land here
            raise BadInputError(
                f"cannot get torchvision's ImageNet weights for {name} ({type(exc).__name__}: {exc}); "
                f"use {flag} none for a random backbone or {flag} PATH for a local state_dict"
            ) from exc
    else:
        with seeded(seed if weights == "none" else None):
            model = torchvision.models.get_model(name, weights=None)
    classifier, layer = find_classifier(model)
    dim = int(layer.in_features)
    _replace_module(model, classifier, nn.Identity())
    if weights not in ("imagenet", "none"):
        load_headless_state_dict(model, classifier, Path(weights), flag)
    return model, dim


def build(record: BackboneRecord, weights: str, seed: int | None, flag: str) -> tuple[nn.Module, BackboneRecord]:
    module, dim = _build(record, weights, seed, flag)
    return module, replace(record, dim=dim, feature_from="input of the removed classifier (pooled penultimate layer)")


def stages(backbone: nn.Module) -> list[Stage]:
    """ResNets: stem, layer1..layer4. Others: the children of a `features` Sequential when there is one (VGG,
    MobileNet, EfficientNet, DenseNet), else the top-level children that hold parameters."""
    found = resnet_stages(backbone)
    if found is not None:
        return found
    features = getattr(backbone, "features", None)
    parent = features if isinstance(features, nn.Sequential) else backbone
    return [[child] for child in parent.children() if any(True for _ in child.parameters())]

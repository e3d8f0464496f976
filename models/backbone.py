"""Frame backbones from three libraries, each described by a record of what it expects and what it gives.

    resnet18, torchvision:resnet18    any torchvision classifier with its last Linear layer removed
    timm:NAME[.TAG]                   any timm model (CLIP, DINOv2, SigLIP, ConvNeXt, EVA, ...)
    hf:NAME_OR_DIR                    a Hugging Face vision encoder through transformers (CLIP, SigLIP, DINOv2, ...)

A `BackboneRecord` says everything a later stage needs to feed the backbone the same input and to rebuild it:
the library and name, the weights, the feature taken (`--feature pooled|cls|mean|projected`) and where it comes
from, D, and the input: size, resize and crop (`transforms.ResizeSpec`), mean and std. The input is read from the
model's own configuration (timm's pretrained config, the Hugging Face image processor config); torchvision
classifiers keep the preprocessing ActionBERT always gave them (ImageNet statistics, shorter side to the image size
and the centre square, bilinear). `--image_size` and `--resize` override, and the record lists what they overrode.
It also holds the memory layout the backbone runs in (channels_last for mostly-convolution backbones of any library,
measured on the built module; stage 2's --channels_last overrides), so predict.py runs stage 2's layout.
It is stored in stage 2's `<split>.json` and in every checkpoint, as a plain dict (`to_dict`/`from_dict`).

`resolve_backbone(...)` makes the record without building the model (cheap: stage 2 plans its input from it);
`build_backbone(...)` builds the module in eval mode, frozen, mapping a normalised (B, 3, S, S) batch to (B, D), and
returns it with the record completed (D). timm and transformers are imported only when such a backbone is used.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from precision import autocast
from transforms import RESIZE_MODES, ResizeSpec
from utils import BadInputError

log = logging.getLogger("actionbert")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SOURCES = ("torchvision", "timm", "hf")
FEATURES = ("pooled", "cls", "mean", "projected")
NAME_FORMS = "a torchvision name (resnet18, convnext_tiny, ...), timm:NAME or hf:NAME_OR_DIR"
# --help texts of the backbone flags, shared by prepare_data.py (-m/--model) and main.py's e2e group (--backbone)
BACKBONE_HELP = ("frame backbone: a torchvision classifier (resnet18, the default; torchvision:NAME is the same), "
                 "timm:NAME (any timm model, e.g. timm:vit_base_patch16_clip_224.openai) or hf:NAME_OR_DIR (a Hugging "
                 "Face vision encoder: CLIP, SigLIP, DINOv2, ...)")
WEIGHTS_HELP = ("imagenet (torchvision's; their default), pretrained (the model's own, downloaded by its library; "
                "default for timm/hf), none (random init from --seed) or a local PATH (torchvision/timm state_dict or "
                ".safetensors; an HF model folder)")
FEATURE_HELP = ("a frame's embedding (timm/hf): pooled (timm pre-logits, HF pooler output), cls (class token), mean "
                "(mean of the patch tokens) or projected (CLIP/SigLIP image embedding after the projection). "
                "torchvision: pooled only")
# PIL resampling codes in Hugging Face image processor configs -> transforms.INTERPOLATIONS names.
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "area", 5: "bilinear"}
HAMMING = 5  # PIL's hamming filter: OpenCV has none, bilinear is the nearest


# ----------------------------------------------------------------------------------------------- names and weights


def parse_backbone(name: str) -> tuple[str, str]:
    """(source, library name) of a --model/--backbone value: 'timm:X', 'hf:X', 'torchvision:X' or a bare torchvision
    name. One error lists the three forms for anything else."""
    prefix, sep, rest = name.partition(":")
    if sep and prefix in SOURCES and rest:
        return prefix, rest
    if sep:
        raise BadInputError(f"unknown backbone {name!r}: use {NAME_FORMS}")
    if name not in classification_model_names():
        some = ", ".join(n for n in classification_model_names() if n.startswith(("resnet", "efficientnet_b", "convnext")))
        raise BadInputError(f"unknown backbone {name!r}: use {NAME_FORMS} (torchvision has e.g. {some})")
    return "torchvision", name


def default_weights(name: str) -> str:
    """imagenet for torchvision names (their meaning before timm and hf existed), pretrained for the others."""
    return "imagenet" if parse_backbone(name)[0] == "torchvision" else "pretrained"


def _check_weights(source: str, weights: str, flag: str) -> str:
    """The weights value, checked against the source: imagenet is torchvision's name for its pretrained weights."""
    if weights in ("none", "pretrained", "imagenet"):
        if weights == "imagenet" and source != "torchvision":
            raise BadInputError(f"{flag} imagenet names torchvision's weights; a {source} backbone takes pretrained "
                                "(the model's own weights), none (random init) or a local PATH")
        return "imagenet" if source == "torchvision" and weights == "pretrained" else weights
    path = Path(weights)
    if not path.exists():
        raise BadInputError(f"{flag} {weights}: no such file or folder (expected pretrained, none, imagenet for "
                            "torchvision, or a local PATH)")
    if source == "hf" and not path.is_dir():
        raise BadInputError(f"{flag} {weights}: an hf backbone loads a model folder (config.json and weights, as "
                            "save_pretrained writes), not a file")
    if source != "hf" and not path.is_file():
        raise BadInputError(f"{flag} {weights}: a {source} backbone loads a state_dict file (.pth, .pt, .bin or "
                            ".safetensors), not a folder")
    return weights


def classification_model_names() -> list[str]:
    import torchvision  # imported here: it costs ~3 s at start-up and the embedding route never needs it

    return sorted(torchvision.models.list_models(module=torchvision.models))


# ----------------------------------------------------------------------------------------------- the record


@dataclass(frozen=True)
class BackboneRecord:
    """What a backbone is and what it expects; stored as a plain dict in embeddings' JSON and checkpoints."""

    backbone: str  # as a run records it: resnet18, timm:vit_small_patch16_224, hf:/models/clip
    source: str  # torchvision | timm | hf
    name: str  # the library's name: timm's with its pretrained tag, an HF hub id or folder
    weights: str  # imagenet | pretrained | none | PATH
    seed: int | None  # the random init of weights none
    feature: str  # pooled | cls | mean | projected
    resize: ResizeSpec  # input size, resize mode, crop fraction, interpolation, rounding convention
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    overridden: tuple[str, ...] = ()  # of image_size and resize: those set by a flag instead of the model's config
    dim: int | None = None  # D, known once built
    feature_from: str = ""  # where the feature is taken, in the library's terms
    prefix_tokens: int | None = None  # class and register tokens before the patch tokens (transformers)
    config: dict[str, Any] | None = field(default=None, repr=False)  # hf: the vision config, to rebuild offline
    # the memory layout it runs in: its own preference (prefers_channels_last) unless a flag chose; None until built
    # (and in files older than the layout choice), when build_backbone fills in the preference
    channels_last: bool | None = None

    @property
    def image_size(self) -> int:
        return self.resize.size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"], d["overridden"] = list(self.mean), list(self.std), list(self.overridden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackboneRecord:
        d = dict(d)
        d["resize"] = ResizeSpec(**d["resize"])
        d["mean"], d["std"] = tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"])
        d["overridden"] = tuple(d.get("overridden") or ())
        return cls(**d)

    def describe(self) -> str:
        r = self.resize
        tag = f" = timm:{self.name}" if self.source == "timm" and f"timm:{self.name}" != self.backbone else ""
        return (f"{self.backbone}{tag} ({self.weights}), feature {self.feature} = {self.feature_from}, D={self.dim}; input "
                f"{r.size}px {r.mode} crop_pct {r.crop_pct:g} {r.interpolation}, mean {_fmt(self.mean)} std "
                f"{_fmt(self.std)}" + (f"; overridden: {', '.join(self.overridden)}" if self.overridden else ""))


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _three(values: Any, what: str, where: str) -> tuple[float, float, float]:
    vals = [float(values)] * 3 if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(vals) != 3:
        raise BadInputError(f"{where}: {what} has {len(vals)} values, expected 3 (RGB)")
    return vals[0], vals[1], vals[2]


def _override(own: ResizeSpec, image_size: int | None, resize: str | None) -> tuple[ResizeSpec, tuple[str, ...]]:
    """Apply --image_size / --resize to the model's own input; the flags that changed it are recorded."""
    spec, changed = own, []
    if image_size is not None and image_size != own.size:
        spec, changed = replace(spec, size=int(image_size)), [*changed, "image_size"]
    if resize is not None and resize != own.mode:
        if resize not in RESIZE_MODES:
            raise BadInputError(f"--resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")
        spec, changed = replace(spec, mode=resize), [*changed, "resize"]
    return spec, tuple(changed)


def resolve_backbone(
    name: str,
    weights: str | None = None,
    feature: str = "pooled",
    image_size: int | None = None,
    resize: str | None = None,
    seed: int | None = None,
    flag: str = "--weights",
) -> BackboneRecord:
    """The record of backbone `name` (D not yet known), from the model's own configuration, without building it.

    weights None is the source's default (default_weights). image_size / resize None keep the model's own."""
    source, lib_name = parse_backbone(name)
    weights = _check_weights(source, weights or default_weights(name), flag)
    if feature not in FEATURES:
        raise BadInputError(f"--feature must be one of {', '.join(FEATURES)}, got {feature!r}")
    if source == "torchvision":
        if feature != "pooled":
            raise BadInputError(f"--feature {feature}: torchvision backbones ({lib_name}) give their pooled "
                                "penultimate features only; use a timm: or hf: backbone for cls, mean or projected")
        return _torchvision_record(lib_name, weights, seed, image_size, resize)
    if source == "timm":
        full_name, own, mean, std = _timm_input(lib_name)
    else:
        # a local folder by its absolute path, so predict.py finds it from any working directory
        full_name = str(Path(lib_name).resolve()) if Path(lib_name).is_dir() else lib_name
        own, mean, std = _hf_input(full_name)
    spec, overridden = _override(own, image_size, resize)
    return BackboneRecord(backbone=f"{source}:{lib_name}", source=source, name=full_name, weights=weights,
                          seed=seed if weights == "none" else None, feature=feature, resize=spec, mean=mean, std=std,
                          overridden=overridden)


def _torchvision_record(name: str, weights: str, seed: int | None, image_size: int | None,
                        resize: str | None) -> BackboneRecord:
    """A torchvision classifier's input, as ActionBERT has always fed them: 224 px, shorter side then the centre
    square, bilinear, ImageNet statistics (a random backbone, --weights none, is fed the same way). This is the one
    place ImageNet statistics are assumed."""
    spec, overridden = _override(ResizeSpec(224, "crop"), image_size, resize)
    return BackboneRecord(backbone=name, source="torchvision", name=name, weights=weights,
                          seed=seed if weights == "none" else None, feature="pooled", resize=spec, mean=IMAGENET_MEAN,
                          std=IMAGENET_STD, overridden=overridden)


# ----------------------------------------------------------------------------------------------- timm


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
    spec = ResizeSpec(int(height), mode, float(data["crop_pct"]), _interpolation_name(data["interpolation"], name),
                      "timm")
    return full, spec, _three(data["mean"], "mean", name), _three(data["std"], "std", name)


def _interpolation_name(value: Any, where: str) -> str:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        code = int(value)
        if code == HAMMING:
            log.warning("%s: PIL's hamming resampling has no OpenCV equivalent; bilinear is used", where)
        if code not in PIL_RESAMPLE:
            raise BadInputError(f"{where}: unknown resampling code {value!r}")
        return PIL_RESAMPLE[code]
    name = {"box": "area", "hamming": "bilinear", "lanczos": "lanczos"}.get(str(value), str(value))
    if name not in ("nearest", "bilinear", "bicubic", "lanczos", "area"):
        raise BadInputError(f"{where}: unknown interpolation {value!r}")
    return name


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
            raise BadInputError(f"cannot get the pretrained weights of timm:{record.name} ({_first_line(exc)}); "
                                f"use {flag} none for a random backbone or {flag} PATH for a local file") from None
    else:
        with _seeded(seed if weights == "none" else None):
            model = create(False)
        if weights != "none":
            state = read_state_dict(Path(weights), flag)
            filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
            if filter_fn is not None:  # timm's own conversions: resampled position table, original formats
                try:
                    state = filter_fn(state, model)
                except Exception as exc:
                    raise BadInputError(f"{flag} {weights} does not fit timm:{record.name}: {_first_line(exc)}") from None
            head = getattr(model, "pretrained_cfg", {}).get("classifier") or "head"
            heads = (head,) if isinstance(head, str) else tuple(head)
            if kwargs.get("num_classes") == 0:  # the file's classifier has no place here
                state = {k: v for k, v in state.items() if not k.startswith(tuple(h + "." for h in heads))}
            load_checked_state_dict(model, state, Path(weights), flag)
    return TimmEncoder(model, record)


# ----------------------------------------------------------------------------------------------- Hugging Face


def _hf_input(name: str) -> tuple[ResizeSpec, tuple, tuple]:
    """Input, mean and std from the model's image processor config (preprocessor_config.json), read as the
    processor would read it but without instantiating one (no PIL or torchvision code at run time)."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        cfg, _ = ImageProcessingMixin.get_image_processor_dict(name)
    except Exception as exc:  # missing file, offline hub, unreadable JSON
        how = ("save the model's image processor there (AutoImageProcessor.from_pretrained(ID).save_pretrained(DIR))"
               if Path(name).is_dir() else "offline, pass a local copy of the model folder: hf:DIR")
        raise BadInputError(f"hf:{name}: cannot read its image processor config, preprocessor_config.json "
                            f"({_first_line(exc)}), which says the model's input size, mean and std; {how}") from None
    where = f"hf:{name} preprocessor_config.json"
    if cfg.get("do_resize") is False:
        raise BadInputError(f"{where}: do_resize is false; frames of any size cannot be fed to it")
    if cfg.get("do_rescale", True) and abs(float(cfg.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise BadInputError(f"{where}: rescale_factor {cfg['rescale_factor']} (only 1/255 is supported)")
    if cfg.get("do_normalize", True):
        mean = _three(cfg.get("image_mean", IMAGENET_MEAN), "image_mean", where)
        std = _three(cfg.get("image_std", IMAGENET_STD), "image_std", where)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    interp = _interpolation_name(cfg.get("resample", 2), where)
    size, crop = cfg.get("size"), cfg.get("crop_size") if cfg.get("do_center_crop") else None
    if isinstance(size, int):
        size = {"shortest_edge": size} if crop is not None else {"height": size, "width": size}
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    if crop is not None and crop.get("height") != crop.get("width"):
        raise BadInputError(f"{where}: crop_size {crop} is not square")
    if isinstance(size, dict) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if "crop_pct" in cfg and cfg["crop_pct"] is not None:  # ConvNeXt's processor: crop below 384 px, warp above
            spec = ResizeSpec(edge, "crop", float(cfg["crop_pct"]), interp, "transformers") if edge < 384 else (
                ResizeSpec(edge, "squash", 1.0, interp, "transformers"))
        elif crop is not None:
            spec = ResizeSpec(int(crop["height"]), "crop", int(crop["height"]) / edge, interp, "transformers")
        else:
            log.info("%s: no centre crop; the centre square of the resized frame is used", where)
            spec = ResizeSpec(edge, "crop", 1.0, interp, "transformers")
    elif isinstance(size, dict) and size.get("height") is not None and size.get("height") == size.get("width"):
        side = int(size["height"])
        if crop is not None:
            spec = ResizeSpec(int(crop["height"]), "squash", int(crop["height"]) / side, interp, "transformers")
        else:
            spec = ResizeSpec(side, "squash", 1.0, interp, "transformers")
    else:
        raise BadInputError(f"{where}: size {size!r} is not supported (shortest_edge, or square height/width)")
    if spec.crop_pct > 1:
        raise BadInputError(f"{where}: crop_size is larger than the resized image")
    return spec, mean, std


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


@contextmanager
def _quiet_load_report() -> Iterator[None]:
    """transformers logs a report of unexpected keys (a CLIP checkpoint's text tower, when only its vision tower is
    built) as a warning; missing keys, the ones that matter, are checked here instead. A filter, not a level:
    transformers runs extra checks (and warns) when its logger's level is raised."""
    logger, drop = logging.getLogger("transformers.modeling_utils"), _DropLoadReport()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _hf_vision_config(record: BackboneRecord) -> Any:
    """The vision part of the model's config: from the record (rebuilding offline) or read from NAME."""
    from transformers import AutoConfig

    if record.config is not None:
        d = dict(record.config)
        return AutoConfig.for_model(d.pop("model_type"), **d)
    try:
        config = AutoConfig.from_pretrained(record.name)
    except Exception as exc:
        raise BadInputError(f"hf:{record.name}: cannot read its config.json ({_first_line(exc)}); offline, pass a "
                            "local model folder: hf:DIR") from None
    return getattr(config, "vision_config", None) or config


def _build_hf(record: BackboneRecord, weights: str, seed: int | None, flag: str) -> FrameEncoder:
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    src = record.name if weights in ("pretrained", "none") else weights  # the weights: NAME's or a --weights folder
    config = _hf_vision_config(record)
    class_name = MODEL_MAPPING_NAMES.get(config.model_type)
    if class_name is None:
        raise BadInputError(f"hf:{record.name}: transformers has no model for config type {config.model_type!r}")
    projection = None
    if record.feature == "projected":
        with_projection = getattr(transformers, class_name + "WithProjection", None)
        if with_projection is not None:  # CLIP: image_embeds, after visual_projection
            class_name, projection = with_projection.__name__, "image_embeds"
        elif config.model_type.startswith("siglip"):  # SigLIP's get_image_features is the pooled (MAP head) output
            projection = "pooler_output"
        else:
            raise BadInputError(f"--feature projected: hf:{record.name} ({config.model_type}) has no image-text "
                                "projection; it is for CLIP and SigLIP models (use pooled, cls or mean)")
    cls = getattr(transformers, class_name)
    if weights == "none":
        with _seeded(seed):
            model = cls(config)
    else:
        try:
            with _quiet_load_report():
                model, info = cls.from_pretrained(src, config=config, output_loading_info=True)
        except Exception as exc:
            raise BadInputError(f"cannot load hf:{record.name} from {src} ({_first_line(exc)}); use {flag} none for "
                                f"a random backbone or {flag} PATH for a local model folder") from None
        missing = sorted(set(info.get("missing_keys") or ()) | {k[0] for k in info.get("mismatched_keys") or ()})
        if missing:
            raise BadInputError(f"{src} does not hold {class_name}'s weights: {len(missing)} missing or mismatched "
                                f"(e.g. {missing[0]}); is it another kind of model?")
    return HFEncoder(model.float(), record, projection)


# ----------------------------------------------------------------------------------------------- encoders


class FrameEncoder(nn.Module):
    """A timm or Hugging Face model that maps a normalised (B, 3, S, S) batch to one (B, D) feature per frame.

    `model` is the library's module (its own state_dict keys under `model.`), and the encoder offers the library's
    own gradient checkpointing switch."""

    def __init__(self, model: nn.Module, record: BackboneRecord) -> None:
        super().__init__()
        self.model = model
        self.record = record

    def tokens(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def set_library_checkpointing(self, enabled: bool) -> bool:  # pragma: no cover - abstract
        """Turn the library's own gradient checkpointing on or off; False when it has none."""
        raise NotImplementedError

    def _token_feature(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(x)
        if self.record.feature == "cls":
            return tokens[:, 0]
        return tokens[:, self.record.prefix_tokens or 0 :].mean(1)


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


class HFEncoder(FrameEncoder):
    def __init__(self, model: nn.Module, record: BackboneRecord, projection: str | None) -> None:
        super().__init__(model, record)
        self.projection = projection
        native = getattr(model.config, "image_size", None)
        takes = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
        # position embeddings interpolated to another input size, where the model needs telling
        self.forward_kwargs = {"interpolate_pos_encoding": True} if takes and native != record.image_size else {}

    def _outputs(self, x: torch.Tensor) -> Any:
        return self.model(pixel_values=x, **self.forward_kwargs)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self._outputs(x).last_hidden_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.record.feature in ("cls", "mean"):
            return self._token_feature(x)
        out = self._outputs(x)
        feats = getattr(out, self.projection or "pooler_output", None)
        if feats is None:
            raise BadInputError(f"hf:{self.record.name} ({type(self.model).__name__}) has no pooler output; use "
                                "--feature cls or mean")
        return feats.flatten(1)

    def set_library_checkpointing(self, enabled: bool) -> bool:
        if not self.model.supports_gradient_checkpointing:
            return False
        # transformers >= 5.x names it activation_checkpointing; earlier releases gradient_checkpointing
        on = getattr(self.model, "activation_checkpointing_enable", None) or self.model.gradient_checkpointing_enable
        off = getattr(self.model, "activation_checkpointing_disable", None) or self.model.gradient_checkpointing_disable
        if enabled:
            on({"use_reentrant": False})
        else:
            off()
        return True


def _has_class_token(model: nn.Module) -> bool:
    """timm's cls_token, Hugging Face's cls_token / class_embedding: a learned token in front of the patches."""
    if getattr(model, "cls_token", None) is not None:
        return True
    return any(n.endswith(("cls_token", "class_embedding")) for n, _ in model.named_parameters())


def _patch_count(encoder: FrameEncoder, size: int) -> int | None:
    """Patch tokens at input size `size`, when the model has a patch size to tell."""
    patch = getattr(getattr(encoder.model, "config", None), "patch_size", None)
    if patch is None:
        pe = getattr(encoder.model, "patch_embed", None)
        patch = getattr(pe, "patch_size", None)
    if patch is None:
        return None
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return (size // ph) * (size // pw)


def _complete_record(encoder: FrameEncoder) -> BackboneRecord:
    """D, the prefix tokens and where the feature comes from, found by one small forward pass at the input size;
    a feature the model cannot give is an error naming the model."""
    rec, size = encoder.record, encoder.record.image_size
    x = torch.zeros((1, 3, size, size))
    try:
        with torch.inference_mode():
            tokens = encoder.tokens(x) if rec.feature in ("cls", "mean") else None
            out = encoder(x)
    except BadInputError:
        raise
    except Exception as exc:
        raise BadInputError(f"backbone {rec.backbone} cannot embed {size}x{size} frames: {_first_line(exc)}") from None
    prefix = None
    if tokens is not None:
        if tokens.dim() != 3:
            raise BadInputError(f"--feature {rec.feature}: {rec.backbone} gives a feature map, not tokens; cls and "
                                "mean are for transformers (use pooled)")
        prefix = getattr(encoder.model, "num_prefix_tokens", None)
        if prefix is None:
            patches = _patch_count(encoder, size)
            prefix = tokens.shape[1] - patches if patches is not None else None
        if rec.feature == "cls" and not (prefix and _has_class_token(encoder.model)):
            raise BadInputError(f"--feature cls: {rec.backbone} has no class token (use pooled or mean)")
        if prefix is None:
            raise BadInputError(f"--feature mean: cannot tell {rec.backbone}'s patch tokens from its other tokens")
    lib = "timm" if isinstance(encoder, TimmEncoder) else "transformers"
    where = {
        "pooled": "forward_head(forward_features(x), pre_logits=True)" if lib == "timm" else "pooler_output",
        "cls": "forward_features(x)[:, 0]" if lib == "timm" else "last_hidden_state[:, 0]",
        "mean": (f"forward_features(x)[:, {prefix}:].mean(1)" if lib == "timm"
                 else f"last_hidden_state[:, {prefix}:].mean(1)"),
        "projected": {"head": "forward(x): the CLIP projection head", "image_embeds": "image_embeds",
                      "pooled": "forward_head(forward_features(x), pre_logits=True): SigLIP's image embedding",
                      "pooler_output": "pooler_output: SigLIP's image embedding"}.get(encoder.projection or "", ""),
    }[rec.feature]
    config = encoder.model.config.to_dict() if lib == "transformers" else None
    return replace(rec, dim=int(out.flatten(1).shape[1]), prefix_tokens=prefix, feature_from=where, config=config)


# ----------------------------------------------------------------------------------------------- state dicts


def read_state_dict(path: Path, flag: str = "--weights") -> dict[str, torch.Tensor]:
    """A local state_dict: .safetensors, or a torch file holding a bare state_dict or one wrapped as
    {"state_dict": ...} / {"model": ...}; DDP's and torch.compile's prefixes stripped."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure is the user's file; torch's text would advise weights_only=False
        raise BadInputError(f"{flag} {path}: cannot read it as a state_dict of plain tensors ({type(exc).__name__}; "
                            "damaged, or another kind of file)") from None
    return _unwrap_state_dict(obj, path, flag)


def _unwrap_state_dict(obj: object, path: Path, flag: str = "--weights") -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(f"{flag} {path}: not a state_dict (a dict of tensors)")
    return {k.removeprefix("_orig_mod.").removeprefix("module."): v for k, v in obj.items()}


def load_checked_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: Path,
                            flag: str = "--weights") -> None:
    """Load `state` strictly, refusing a file that does not fit with the first missing, unexpected or misshapen key."""
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


def load_headless_state_dict(model: nn.Module, classifier: str, path: Path, flag: str = "--weights") -> None:
    """Load a local state_dict, full (classifier keys dropped) or headless, into the headless torchvision model."""
    state = read_state_dict(path, flag)
    state = {k: v for k, v in state.items() if not k.startswith(classifier + ".")}
    load_checked_state_dict(model, state, path, flag)


# ----------------------------------------------------------------------------------------------- torchvision


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


def _build_torchvision(record: BackboneRecord, weights: str, seed: int | None, flag: str) -> tuple[nn.Module, int]:
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
        with _seeded(seed if weights == "none" else None):
            model = torchvision.models.get_model(name, weights=None)
    classifier, layer = find_classifier(model)
    dim = int(layer.in_features)
    _replace_module(model, classifier, nn.Identity())
    if weights not in ("imagenet", "none"):
        load_headless_state_dict(model, classifier, Path(weights), flag)
    return model, dim


# ----------------------------------------------------------------------------------------------- building


def build_backbone(
    name: str | BackboneRecord,
    weights: str | None = None,
    seed: int | None = None,
    flag: str = "--weights",
    **choices: Any,
) -> tuple[nn.Module, BackboneRecord]:
    """The backbone in eval mode with frozen parameters, and its completed record (D filled in, and the memory
    layout it prefers unless the record already holds one: prefers_channels_last, measured on the built module).

    `name` is a --model/--backbone value (resolved with `weights`, `seed` and `choices`: feature, image_size, resize;
    see resolve_backbone) or a record to rebuild exactly. With a record, `weights` replaces the recorded weights
    (predict.py's --backbone_weights; "none" to rebuild an architecture whose weights come from a checkpoint), and
    the recorded seed rebuilds a random backbone. weights: imagenet (torchvision's DEFAULT weights), pretrained (the
    model's own, downloaded by its library), none (random init from `seed`, reproducible), or a local PATH (a
    torchvision/timm state_dict or .safetensors file, full or headless; an HF model folder). A failed download names
    the offline alternatives and never falls back.
    """
    if isinstance(name, BackboneRecord):
        record = name
        if weights is not None:
            weights = _check_weights(record.source, weights, flag)
    else:
        record = resolve_backbone(name, weights, seed=seed, flag=flag, **choices)
    weights = weights or record.weights
    seed = record.seed if seed is None else seed
    if record.source == "torchvision":
        module, dim = _build_torchvision(record, weights, seed, flag)
        record = replace(record, dim=dim, feature_from="input of the removed classifier (pooled penultimate layer)")
    else:
        module = (_build_timm if record.source == "timm" else _build_hf)(record, weights, seed, flag)
        module.eval()
        record = _complete_record(module)
    if record.channels_last is None:
        record = replace(record, channels_last=prefers_channels_last(module))
    if isinstance(module, FrameEncoder):
        module.record = record
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module, record


def record_of(info: dict[str, Any], where: str = "") -> BackboneRecord:
    """The backbone record that a stage-2 JSON, a checkpoint's data_info or an e2e model config holds. Files written
    before records existed name a torchvision backbone with image_size and resize: their record is rebuilt from
    those, which is exactly the preprocessing they were made with, and the memory layout they recorded (if any)."""
    if info.get("backbone_record"):
        return BackboneRecord.from_dict(info["backbone_record"])
    name = str(info.get("backbone") or "")
    source, lib_name = parse_backbone(name) if name else ("", "")
    if source != "torchvision":
        raise BadInputError(f"{where or 'the file'} names backbone {name or 'none'!r} without a backbone record")
    weights = str(info.get("weights") or "imagenet")
    record = _torchvision_record(lib_name, weights, info.get("seed"), int(info.get("image_size") or 224),
                                 info.get("resize") or "crop")
    layout = info.get("channels_last")
    return record if layout is None else replace(record, channels_last=bool(layout))


@contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    """Initialise under `seed` (when given) without moving the caller's global RNG."""
    with torch.random.fork_rng(devices=[]) if seed is not None else nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        yield


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def embed_batch(model: nn.Module, x: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """Forward a normalised batch in inference mode (and autocast for fp16/bf16); returns float32 (B, D)."""
    with torch.inference_mode(), autocast(precision, x.device):
        out = model(x)
    return out.float().flatten(1)


def prefers_channels_last(model: nn.Module) -> bool:
    """Whether `model` should run in channels_last: where convolutions hold most of the weights, whichever library
    built it. Chosen by measurement, the same on the CPU and on CUDA: on a 2-core CPU at 224 px (fp32 forward, one
    thread) channels_last ran resnet18 and resnet50 1.25x, mobilenet_v3_large 1.13x and densenet121 1.07x faster,
    and a resnet18 training step 1.11x; vit_b_16, swin_t and convnext_tiny, whose weights sit in Linear layers,
    gained nothing (0.99-1.08x, within noise), so they keep the default layout. So do timm's and Hugging Face's
    ViTs, CLIP, DINOv2 and SigLIP (a patch-embedding convolution, then Linear layers); timm's ResNets, EfficientNets
    and other convnets prefer channels_last. On GPUs channels_last is what tensor-core convolutions want."""
    conv = sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False))
    total = sum(p.numel() for p in model.parameters())
    return total > 0 and 2 * conv >= total


def choose_channels_last(record: BackboneRecord, flag: bool | None) -> BackboneRecord:
    """The record with its memory layout: --channels_last / --no-channels_last, else the backbone's own preference
    (filled in by build_backbone); logged either way. The record carries the choice to predict.py and checkpoints."""
    if record.channels_last is None:
        raise ValueError("choose_channels_last needs a built record (build_backbone fills in the preference)")
    chosen = record.channels_last if flag is None else bool(flag)
    how = ("--channels_last" if flag else "--no-channels_last") if flag is not None else (
        f"default for this backbone: {record.backbone} is {'' if chosen else 'not '}mostly convolutions")
    log.info("memory layout: %s (%s)", "channels_last" if chosen else "contiguous NCHW", how)
    return replace(record, channels_last=chosen)

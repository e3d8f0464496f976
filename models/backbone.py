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

This module holds what every library shares: the record, name and weights parsing, state-dict I/O, the memory
layout choice and the dispatch table `FAMILIES`. Each library's code is one module of models/backbones/
(torchvision.py, timm.py, hf.py) behind the interface models/backbones/__init__.py describes.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from precision import autocast
from transforms import RESIZE_MODES, ResizeSpec
from utils import BadInputError

log = logging.getLogger("actionbert")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# source -> its family module (models/backbones/: one per library, the interface in models/backbones/__init__.py)
FAMILIES = {"torchvision": "models.backbones.torchvision", "timm": "models.backbones.timm", "hf": "models.backbones.hf"}
SOURCES = tuple(FAMILIES)
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


def family(source: str) -> ModuleType:
    """The module of backbone family `source` (imported when first used: timm and transformers load only then)."""
    return importlib.import_module(FAMILIES[source])


# Torchvision classifiers present in every torchvision this project supports, so a bare name among them needs no
# `import torchvision` to be recognised: that import costs ~1.5 s, and stage 2 resolves its backbone before it
# starts its decode workers (their resize comes from the record) but builds the model after, so the import then
# overlaps the workers' decoding instead of delaying it (issue 22: the whole command against the forward pass).
_LONG_STANDING_TORCHVISION = frozenset({"resnet18", "resnet34", "resnet50", "resnet101", "resnet152"})


def parse_backbone(name: str) -> tuple[str, str]:
    """(source, library name) of a --model/--backbone value: 'timm:X', 'hf:X', 'torchvision:X' or a bare torchvision
    name. One error lists the three forms for anything else."""
    prefix, sep, rest = name.partition(":")
    if sep and prefix in SOURCES and rest:
        return prefix, rest
    if sep:
        raise BadInputError(f"unknown backbone {name!r}: use {NAME_FORMS}")
    if name in _LONG_STANDING_TORCHVISION:  # known without importing torchvision (see the set's comment)
        return "torchvision", name
    names = family("torchvision").classification_model_names()  # a bare name is a torchvision one
    if name not in names:
        some = ", ".join(n for n in names if n.startswith(("resnet", "efficientnet_b", "convnext")))
        raise BadInputError(f"unknown backbone {name!r}: use {NAME_FORMS} (torchvision has e.g. {some})")
    return "torchvision", name


def default_weights(name: str) -> str:
    """imagenet for torchvision names (their meaning before timm and hf existed), pretrained for the others."""
    return family(parse_backbone(name)[0]).DEFAULT_WEIGHTS


def _check_weights(source: str, weights: str, flag: str) -> str:
    """The weights value, checked against the source: imagenet is torchvision's name for its pretrained weights."""
    fam = family(source)
    if weights in ("none", "pretrained", "imagenet"):
        if weights == "imagenet" and fam.DEFAULT_WEIGHTS != "imagenet":
            raise BadInputError(f"{flag} imagenet names torchvision's weights; a {source} backbone takes pretrained "
                                "(the model's own weights), none (random init) or a local PATH")
        return fam.DEFAULT_WEIGHTS if weights == "pretrained" else weights
    path = Path(weights)
    if not path.exists():
        raise BadInputError(f"{flag} {weights}: no such file or folder (expected pretrained, none, imagenet for "
                            "torchvision, or a local PATH)")
    if fam.WEIGHTS_IN_FOLDER and not path.is_dir():
        raise BadInputError(f"{flag} {weights}: an hf backbone loads a model folder (config.json and weights, as "
                            "save_pretrained writes), not a file")
    if not fam.WEIGHTS_IN_FOLDER and not path.is_file():
        raise BadInputError(f"{flag} {weights}: a {source} backbone loads a state_dict file (.pth, .pt, .bin or "
                            ".safetensors), not a folder")
    return weights


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


def rgb_triple(values: Any, what: str, where: str) -> tuple[float, float, float]:
    vals = [float(values)] * 3 if isinstance(values, (int, float)) else [float(v) for v in values]
    if len(vals) != 3:
        raise BadInputError(f"{where}: {what} has {len(vals)} values, expected 3 (RGB)")
    return vals[0], vals[1], vals[2]


def override_input(own: ResizeSpec, image_size: int | None, resize: str | None) -> tuple[ResizeSpec, tuple[str, ...]]:
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
    return family(source).resolve(lib_name, weights, seed, feature, image_size, resize)


def make_record(source: str, lib_name: str, full_name: str, weights: str, seed: int | None, feature: str,
                own: ResizeSpec, mean: tuple, std: tuple, image_size: int | None, resize: str | None) -> BackboneRecord:
    """The record of a family that reads its input from the model's configuration (timm, hf), flags applied."""
    spec, overridden = override_input(own, image_size, resize)
    return BackboneRecord(backbone=f"{source}:{lib_name}", source=source, name=full_name, weights=weights,
                          seed=seed if weights == "none" else None, feature=feature, resize=spec, mean=mean, std=std,
                          overridden=overridden)


# ----------------------------------------------------------------------------------------------- shared by families


def interpolation_name(value: Any, where: str) -> str:
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

    def feature_source(self, prefix: int | None) -> str:  # pragma: no cover - abstract
        """Where the record's feature is taken, in the library's terms (`prefix`: tokens before the patches)."""
        raise NotImplementedError

    def library_config(self) -> dict[str, Any] | None:
        """The model's config, when the record needs it to rebuild the model offline."""
        return None

    def _token_feature(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(x)
        if self.record.feature == "cls":
            return tokens[:, 0]
        return tokens[:, self.record.prefix_tokens or 0 :].mean(1)


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


def complete_record(encoder: FrameEncoder) -> BackboneRecord:
    """D, the prefix tokens and where the feature comes from, found by one small forward pass at the input size;
    a feature the model cannot give is an error naming the model. Leaves the encoder in eval mode."""
    encoder.eval()
    rec, size = encoder.record, encoder.record.image_size
    x = torch.zeros((1, 3, size, size))
    try:
        with torch.inference_mode():
            tokens = encoder.tokens(x) if rec.feature in ("cls", "mean") else None
            out = encoder(x)
    except BadInputError:
        raise
    except Exception as exc:
        raise BadInputError(f"backbone {rec.backbone} cannot embed {size}x{size} frames: {first_line(exc)}") from None
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
    where, config = encoder.feature_source(prefix), encoder.library_config()
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
    module, record = family(record.source).build(record, weights, seed, flag)
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
    record = family("torchvision").record(lib_name, weights, info.get("seed"), int(info.get("image_size") or 224),
                                 info.get("resize") or "crop")
    layout = info.get("channels_last")
    return record if layout is None else replace(record, channels_last=bool(layout))


@contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Initialise under `seed` (when given) without moving the caller's global RNG."""
    with torch.random.fork_rng(devices=[]) if seed is not None else nullcontext():
        if seed is not None:
            torch.manual_seed(seed)
        yield


def first_line(exc: BaseException) -> str:
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

"""End-to-end models: a frame backbone (torchvision, timm or Hugging Face) trained jointly with a sequence head.

`EndToEndModel` = `models.backbone.build_backbone(name, weights)` (the same backbone as stage 2) followed by
`models.build_model(head_name, input_dim=D, ...)` (the same head code as the embedding route). It maps
`(clips (B, T, 3, H, W), lengths (B,))` to logits; a 6-D `(B, V, T, 3, H, W)` input (V test-time views)
returns the logits averaged over the views.

Clips may be uint8 RGB (what `clip_dataset.ClipDataset` yields: 4x less worker-to-main and host-to-device
traffic; `transforms.preprocess_frame` gives the same for predict.py) and are normalised here with stage 2's
`transforms.normalize_batch` and the backbone's own mean and std, on the device they are on; float clips are taken
as already normalised. The backbone's record (models.backbone.BackboneRecord) travels in the model's config, so
a checkpoint rebuilds the same architecture, input and feature without the original files.

Names are `e2e_<head>`, one per head of `models.MODEL_NAMES` (e2e_bilstm, e2e_bert, e2e_attnpool, ...).
`build_e2e_model(**model.config)` rebuilds a model from a checkpoint's config, like `build_model` does for heads.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models import MODEL_NAMES, build_model, head_names
from models.backbone import BackboneRecord, FrameEncoder, build_backbone, family
from models.backbones.stages import Stage
from models.base import VideoModel, decay_param_groups, length_mask
from sampling import average_views
from transforms import normalize_batch
from utils import BadInputError

log = logging.getLogger("actionbert")

E2E_PREFIX = "e2e_"
E2E_MODEL_NAMES = tuple(E2E_PREFIX + name for name in MODEL_NAMES)  # of the built-in heads


def e2e_model_names() -> tuple[str, ...]:
    """`e2e_<head>` for every registered head (models.register_head adds to them)."""
    return tuple(E2E_PREFIX + name for name in head_names())

# Keys of an e2e model's config that belong to the model rather than to its head.
_E2E_KEYS = ("name", "backbone", "weights", "freeze_backbone_stages", "grad_checkpointing", "channels_last", "feature",
             "image_size", "resize", "backbone_record")


def is_e2e_name(name: str) -> bool:
    return name.startswith(E2E_PREFIX)


def head_name_of(name: str) -> str:
    """`e2e_bert` -> `bert`, refusing names that are not an end-to-end model."""
    if name not in e2e_model_names():
        raise ValueError(f"unknown end-to-end model {name!r}; choose from {', '.join(e2e_model_names())}")
    return name[len(E2E_PREFIX) :]


# ---------------------------------------------------------------------------------------------------------------
# Stages: what --freeze_backbone_stages counts and what --grad_checkpointing wraps.


def _batch_norms(modules: Iterable[nn.Module]) -> Iterator[nn.modules.batchnorm._BatchNorm]:
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                yield sub


@contextlib.contextmanager
def bn_stats_frozen(modules: Iterable[nn.Module]) -> Iterator[None]:
    """BatchNorm layers compute exactly what they would, and their running stats are put back afterwards.

    Used for the recomputation of gradient checkpointing, which would otherwise update the running stats a
    second time for the same batch, and for estimating feature statistics. (Snapshot and restore rather than
    switching tracking off: the recomputation must save the same tensors as the original forward.)
    """
    saved = [
        (buf, buf.clone())
        for bn in _batch_norms(modules)
        for buf in (bn.running_mean, bn.running_var, bn.num_batches_tracked)
        if buf is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


class _CheckpointedStage:
    """Mixin put in front of a stage's class: its forward runs under torch.utils.checkpoint.

    Swapping the class (rather than wrapping the module) keeps state_dict keys identical with and without
    --grad_checkpointing, so checkpoints load either way, and deep copies stay correct.
    """

    def forward(self, *args: Any) -> Any:
        parent_forward = super().forward  # type: ignore[misc]
        if not torch.is_grad_enabled():
            return parent_forward(*args)
        calls = 0

        def run(*inner: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                return parent_forward(*inner)
            with bn_stats_frozen([self]):  # the recomputation in backward must not count the batch twice
                return parent_forward(*inner)

        return checkpoint(run, *args, use_reentrant=False)


@functools.cache
def _checkpointed_class(cls: type) -> type:
    return type(f"Checkpointed{cls.__name__}", (_CheckpointedStage, cls), {})


def checkpoint_units(stage: Stage) -> Iterator[nn.Module]:
    """The segments checkpointing wraps: the blocks of a Sequential of blocks (ResNet's layerN: one BasicBlock or
    Bottleneck at a time, so backward holds one block's activations, not a stage's), else the module itself.
    Single layers (ResNet's conv1 and bn1) are left alone: checkpointing one layer saves nothing."""
    for module in stage:
        children = list(module.children()) if isinstance(module, nn.Module) else []
        if not children:
            continue
        if isinstance(module, nn.Sequential) and all(any(True for _ in c.children()) for c in children):
            yield from children
        else:
            yield module


def set_stage_checkpointing(module: nn.Module, enabled: bool) -> None:
    cls = type(module)
    if enabled and not issubclass(cls, _CheckpointedStage):
        module.__class__ = _checkpointed_class(cls)
    elif not enabled and issubclass(cls, _CheckpointedStage):
        module.__class__ = cls.__bases__[1]


# ---------------------------------------------------------------------------------------------------------------


def unused_parameters(backbone: FrameEncoder) -> list[nn.Parameter]:
    """Backbone parameters the chosen feature never reaches (the final norm when the feature is the class token read
    before it, DINOv2's mask token of masked-image pre-training), found by one backward pass in eval mode. They are
    frozen: DistributedDataParallel needs a gradient for every trainable parameter, and they would never learn."""
    was_training = backbone.training
    backbone.eval()
    params = [p for p in backbone.parameters() if p.requires_grad]
    size = backbone.record.image_size
    try:
        with torch.enable_grad():
            out = backbone(torch.zeros((1, 3, size, size), device=params[0].device))
            grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    finally:
        backbone.train(was_training)
    return [p for p, g in zip(params, grads, strict=True) if g is None]


class EndToEndModel(VideoModel):
    """A frame backbone applied to every real frame, then a sequence head over the per-frame features."""

    supports_grad_checkpointing: ClassVar[bool] = True

    def __init__(
        self,
        head_name: str,
        num_classes: int,
        backbone: str = "resnet18",
        weights: str = "none",
        freeze_backbone_stages: int = 0,
        grad_checkpointing: bool = False,
        channels_last: bool | None = None,
        feature: str = "pooled",
        image_size: int | None = None,
        resize: str | None = None,
        backbone_record: dict[str, Any] | None = None,
        **head_config: Any,
    ) -> None:
        super().__init__()
        self.head_name = head_name
        self.backbone_name = backbone
        # a checkpoint's record rebuilds exactly its backbone; otherwise the flags resolve one (models.backbone)
        source = BackboneRecord.from_dict(backbone_record) if backbone_record else backbone
        self.backbone, self.backbone_record = build_backbone(source, weights, feature=feature, image_size=image_size,
                                                             resize=resize)
        self.backbone.requires_grad_(True)  # build_backbone hands out a frozen feature extractor
        self.input_mean, self.input_std = self.backbone_record.mean, self.backbone_record.std
        self._unused = unused_parameters(self.backbone) if isinstance(self.backbone, FrameEncoder) else []
        # torchvision models: no library switch; BatchNorm models: our checkpointing keeps the running stats right
        self._library_checkpointing = isinstance(self.backbone, FrameEncoder) and not any(
            True for _ in _batch_norms([self.backbone]))
        self.feature_dim = self.input_dim = int(self.backbone_record.dim)  # what checkpoint.py records as feature_dim
        self.head = build_model(head_name, input_dim=self.feature_dim, num_classes=num_classes, **head_config)
        self.num_classes = int(num_classes)
        # channels_last where it measured faster (the record's layout: models.backbone.prefers_channels_last), on the
        # CPU as on CUDA; an explicit channels_last wins and is what the record then says
        if channels_last is not None:
            self.backbone_record = replace(self.backbone_record, channels_last=bool(channels_last))
        self.channels_last = bool(self.backbone_record.channels_last)
        self._stages = family(self.backbone_record.source).stages(self.backbone)
        self.freeze_backbone_stages = 0
        self.grad_checkpointing = False
        self.set_frozen_stages(freeze_backbone_stages)
        self.set_grad_checkpointing(grad_checkpointing)
        head_cfg = {k: v for k, v in self.head.config.items() if k not in ("name", "input_dim", "num_classes")}
        self.config: dict[str, Any] = {
            "name": E2E_PREFIX + head_name,
            "input_dim": self.feature_dim,
            "num_classes": self.num_classes,
            "backbone": backbone,
            "weights": weights,
            "freeze_backbone_stages": self.freeze_backbone_stages,
            "grad_checkpointing": self.grad_checkpointing,
            "channels_last": self.channels_last,
            "backbone_record": self.backbone_record.to_dict(),
            **head_cfg,
        }

    # -- options -----------------------------------------------------------------------------------------------

    @property
    def exposes_attention(self) -> bool:  # type: ignore[override]
        """Whether the head does: its maps come from `head(frame_features(...), ..., return_attentions=True)`."""
        return self.head.exposes_attention

    @property
    def num_stages(self) -> int:
        return len(self._stages)

    def frozen_modules(self) -> list[nn.Module]:
        return [m for stage in self._stages[: self.freeze_backbone_stages] for m in stage if isinstance(m, nn.Module)]

    def set_frozen_stages(self, k: int) -> None:
        """Freeze the first k stages: no gradients, and their BatchNorm (and dropout) stays in eval mode while
        training. Parameters the feature never uses stay frozen whatever k is."""
        if not 0 <= k <= self.num_stages:
            raise BadInputError(
                f"--freeze_backbone_stages {k}: {self.backbone_name} has {self.num_stages} stages (0..{self.num_stages})"
            )
        self.freeze_backbone_stages = int(k)
        for i, stage in enumerate(self._stages):
            for entry in stage:
                entry.requires_grad_(i >= k)
        for p in self._unused:
            p.requires_grad_(False)
        self.train(self.training)
        self.set_grad_checkpointing(self.grad_checkpointing)  # frozen stages need no checkpointing
        if hasattr(self, "config"):
            self.config["freeze_backbone_stages"] = self.freeze_backbone_stages

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """Recompute the backbone's activations in backward instead of storing them: the library's own switch for
        timm and Hugging Face models without BatchNorm (timm set_grad_checkpointing, transformers' activation
        checkpointing), else each block of the trainable stages, with BatchNorm's running stats counted once."""
        self.grad_checkpointing = bool(enabled)
        if not (self._library_checkpointing and self.backbone.set_library_checkpointing(self.grad_checkpointing)):
            for i, stage in enumerate(self._stages):
                for module in checkpoint_units(stage):
                    set_stage_checkpointing(module, enabled and i >= self.freeze_backbone_stages)
        if hasattr(self, "config"):
            self.config["grad_checkpointing"] = self.grad_checkpointing

    def train(self, mode: bool = True) -> EndToEndModel:
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def prepare_for_device(self, device: torch.device | str) -> EndToEndModel:
        """`.to(device)`, plus channels_last weights when the model runs channels_last (see __init__)."""
        device = torch.device(device)
        self.to(device)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        return self

    def param_groups(self, *, weight_decay: float, lr: float, backbone_lr: float | None = None) -> list[dict[str, Any]]:
        """AdamW groups: backbone and head at their own learning rates (backbone_lr None = lr), each split by the
        heads' weight-decay rule (models.base.split_weight_decay); frozen parameters and empty groups left out."""
        backbone_lr = lr if backbone_lr is None else backbone_lr
        groups: list[dict[str, Any]] = []
        for part, module, part_lr in (("backbone", self.backbone, backbone_lr), ("head", self.head, lr)):
            for suffix, group in zip(("", "_no_decay"), decay_param_groups(module, weight_decay), strict=True):
                if group["params"]:
                    groups.append({"name": part + suffix, "params": group["params"], "lr": part_lr,
                                   "weight_decay": group["weight_decay"]})
        return groups

    # -- forward -----------------------------------------------------------------------------------------------

    def _to_backbone_input(self, frames: torch.Tensor) -> torch.Tensor:
        channels_last = self.channels_last
        if frames.dtype == torch.uint8:  # stage 2's normalisation, on the device the clips are on
            return normalize_batch(frames, frames.device, self.input_mean, self.input_std, channels_last)
        frames = frames.float()
        return frames.contiguous(memory_format=torch.channels_last) if channels_last else frames

    def frame_features(self, clips: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> (B, T, D) features, the backbone run on the real frames only (padding stays 0)."""
        b, t = clips.shape[:2]
        mask = length_mask(lengths.to(clips.device), t)
        frames = clips[mask] if not bool(mask.all()) else clips.flatten(0, 1)
        feats = self.backbone(self._to_backbone_input(frames)).flatten(1).float()
        if feats.shape[1] != self.feature_dim:
            raise RuntimeError(f"backbone gave {feats.shape[1]} features per frame, expected {self.feature_dim}")
        if frames.shape[0] == b * t:
            return feats.view(b, t, -1)
        out = feats.new_zeros(b, t, feats.shape[1])
        out[mask] = feats
        return out

    def forward(self, clips: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if clips.dim() == 6:  # (B, V, T, 3, H, W): average the logits of the V views
            v = clips.shape[1]
            return average_views(self.forward(clips.flatten(0, 1), lengths.repeat_interleave(v)), v)
        if clips.dim() != 5:
            raise ValueError(f"expected clips (B, T, 3, H, W) or (B, V, T, 3, H, W), got {tuple(clips.shape)}")
        lengths = lengths.to(clips.device)
        return self.head(self.frame_features(clips, lengths), lengths)

    # -- initialisation ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def estimate_feature_stats(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], max_batches: int = 8) -> int:
        """Set the head's standardisation from the features of the first training batches; returns frames seen.

        The heads standardise their input (per-dimension mean/std): CNN features share one dominant direction,
        worst for a randomly initialised backbone, whose features of very different frames have cosine similarity
        near 0.99 until standardised. Estimated once at the start, in
        training mode (BatchNorm on batch statistics, as the training forward sees them) without touching BN
        running stats, then fixed: they travel in the checkpoint, so predict.py standardises exactly as
        training did, and the head learns to follow the backbone as it drifts. Call before wrapping in DDP
        (which then broadcasts rank 0's buffers), never on resume or after load_head (--init_head_from).
        """
        device = next(self.parameters()).device
        was_training = self.training
        self.train(True)
        total = sq = None
        count = 0
        try:
            with bn_stats_frozen([self.backbone]):
                for i, (clips, lengths) in enumerate(batches):
                    if i >= max_batches:
                        break
                    if clips.dim() == 6:
                        lengths = lengths.repeat_interleave(clips.shape[1])
                        clips = clips.flatten(0, 1)
                    clips, lengths = clips.to(device, non_blocking=True), lengths.to(device)
                    feats = self.frame_features(clips, lengths)
                    real = feats[length_mask(lengths, feats.shape[1])].double()
                    total = real.sum(0) if total is None else total + real.sum(0)
                    sq = (real**2).sum(0) if sq is None else sq + (real**2).sum(0)
                    count += real.shape[0]
        finally:
            self.train(was_training)
        if count < 2:
            raise BadInputError("no frames to estimate feature statistics from")
        mean = total / count
        std = ((sq / count - mean**2).clamp_min(0) * count / (count - 1)).sqrt()
        self.head.set_feature_stats(mean.float(), std.float())
        return count

    def load_head(self, head: HeadWeights) -> None:
        """Start from a head trained on frozen embeddings (the two-step recipe, main.py --init_head_from), refusing
        one of another kind, feature size, class count or layer shape. The feature standardisation comes with the
        head's weights."""
        problems = []
        if head.name != self.head_name:
            problems.append(f"head {head.name!r} (this model's head is {self.head_name!r})")
        if head.config.get("input_dim") != self.feature_dim:
            problems.append(f"input_dim {head.config.get('input_dim')} ({self.backbone_name} gives {self.feature_dim})")
        if head.config.get("num_classes") != self.num_classes:
            problems.append(f"num_classes {head.config.get('num_classes')} (this run has {self.num_classes})")
        own = self.head.state_dict()
        if not problems:
            missing = sorted(set(own) - set(head.state))
            unexpected = sorted(set(head.state) - set(own))
            wrong = sorted(k for k in set(own) & set(head.state) if own[k].shape != head.state[k].shape)
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", wrong)):
                if keys:
                    problems.append(f"{len(keys)} {what} weight(s), e.g. {keys[0]} (other layer sizes or counts?)")
        if problems:
            raise BadInputError(f"--init_head_from {head.path} does not fit: " + "; ".join(problems))
        if head.backbone is not None and head.backbone != self.backbone_record.backbone:
            log.warning("--init_head_from: the head was trained on %s features, the backbone here is %s",
                        head.backbone, self.backbone_record.backbone)
        self.head.load_state_dict(head.state)
        log.info("head initialised from %s", head.path)


class HeadWeights(Protocol):
    """A trained head as `EndToEndModel.load_head` takes it (checkpoint.read_head_checkpoint reads one)."""

    path: str  # where it came from, for messages
    name: str  # the head's model name (bert, bilstm, ...)
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    backbone: str | None  # the backbone whose features it was trained on, when recorded


def head_of_e2e(config: dict[str, Any], state: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(head name, head config, head weights) inside an end-to-end model's config and state_dict."""
    name = str(config["name"]).removeprefix(E2E_PREFIX)
    head_config = {k: v for k, v in config.items() if k not in _E2E_KEYS}
    head_state = {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}
    return name, head_config, head_state


def build_e2e_model(
    name: str,
    num_classes: int,
    input_dim: int | None = None,
    backbone: str = "resnet18",
    weights: str = "none",
    **config: Any,
) -> EndToEndModel:
    """Build `e2e_<head>`; `build_e2e_model(**model.config)` rebuilds a model (pass weights="none" to skip
    loading pretrained backbone weights that the checkpoint's state overwrites anyway)."""
    model = EndToEndModel(head_name_of(name), num_classes, backbone=backbone, weights=weights, **config)
    if input_dim is not None and int(input_dim) != model.feature_dim:
        raise BadInputError(f"{name}: input_dim {input_dim} but backbone {backbone} gives {model.feature_dim}")
    return model


def load_e2e_model(model_config: dict[str, Any], model_state: dict[str, torch.Tensor]) -> EndToEndModel:
    """Rebuild a trained end-to-end model from a checkpoint (predict.py, test mode): no weight download."""
    config = dict(model_config)
    config["weights"] = "none"  # every backbone weight is in model_state
    config["grad_checkpointing"] = False
    config.pop("pretrained", None)  # nor look for the head's pretrained transformer directory again
    try:
        model = build_e2e_model(**config)
        model.load_state_dict(model_state)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise BadInputError(f"cannot rebuild model {config.get('name')!r} from the checkpoint: {exc}") from exc
    for key in ("weights", "pretrained"):
        if key in model_config:
            model.config[key] = model_config[key]
    return model

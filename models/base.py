"""What every model shares: the contract main.py and predict.py rely on, the one weight-decay rule, and the heads'
feature standardisation, padding mask and config to rebuild from."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean (B, T) mask, True on real frames and False on padding."""
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


def split_weight_decay(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decayed, exempt) trainable parameters: weight decay on weight matrices only; biases, norm scales,
    embeddings and the [CLS] vector are exempt (decaying them only pulls them to zero)."""
    decay, exempt = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        lowered = name.lower()
        if param.ndim <= 1 or "embed" in lowered or "norm" in lowered or "cls" in lowered:
            exempt.append(param)
        else:
            decay.append(param)
    return decay, exempt


def decay_param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups, [decayed, exempt], by `split_weight_decay`."""
    decay, exempt = split_weight_decay(module)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]


@dataclasses.dataclass
class HeadConfig:
    """A head's hyper-parameters: one dataclass per head holds its only defaults, and `validate` its own rules.

    `from_flags(**flags)` takes what main.py or a checkpoint's `model_config` passes: keys that are not fields of
    this head (another head's flags, `input_dim`, `name`) are ignored, None means "the default"."""

    dropout: float = 0.1

    @classmethod
    def from_flags(cls, **flags: Any) -> HeadConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        config = cls(**{k: v for k, v in flags.items() if k in names and v is not None})
        config.validate()
        return config

    def validate(self) -> None:
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class VideoModel(nn.Module):
    """Base of every model main.py trains: `forward(inputs, lengths) -> logits (B, num_classes)`, a `config` that
    `build_model`/`build_e2e_model` rebuild it from, and what it offers, declared here rather than probed:

    - `supports_grad_checkpointing`: `set_grad_checkpointing(True)` trades compute for memory;
    - `exposes_attention`: `forward(..., return_attentions=True)` also returns per-layer attention maps whose
      token 0 is [CLS] (predict.py's --attention_plot);
    - `order_aware`: whether the output can depend on the order of the frames (False: the probes' shuffle and
      reverse leave it unchanged by construction). The class attribute is the head's default config's; a head
      whose `positions` setting decides it (attnpool, bert, roberta) sets its own on the instance, so read it
      from the model;
    - `has_positions`: it takes `positions=` (position encodings that `--positions` chooses or removes);
    - `uses_times`: `forward(..., times=)` needs each frame's timestamp in seconds, (B, T) (`--positions time`;
      set on the instance like `order_aware`); the loops pass a batch's "times" only to such a model;
    - `groups_by_length`: its cost grows with a batch's padded width, so `--group_by_length` is on by default;
    - `min_frames`: the fewest frames it can classify (predict.py's sliding windows skip shorter ones);
    - `param_groups(weight_decay, lr, backbone_lr)`: its AdamW groups (by default the weight-decay rule above);
    - `prepare_for_device(device)`: `.to(device)` plus any layout it wants there.
    """

    supports_grad_checkpointing: ClassVar[bool] = False
    exposes_attention: ClassVar[bool] = False
    order_aware: bool = True
    has_positions: ClassVar[bool] = False
    uses_times: bool = False
    groups_by_length: ClassVar[bool] = False
    min_frames: ClassVar[int] = 1

    config: dict[str, Any]
    num_classes: int
    input_dim: int

    def param_groups(self, *, weight_decay: float, lr: float, backbone_lr: float | None = None) -> list[dict[str, Any]]:
        return decay_param_groups(self, weight_decay)

    def set_grad_checkpointing(self, enabled: bool) -> None:
        if enabled:
            raise ValueError(f"{type(self).__name__} does not support gradient checkpointing")

    def prepare_for_device(self, device: torch.device | str) -> VideoModel:
        return self.to(device)


class VideoHead(VideoModel):
    """Base of every head over embeddings: `forward(feats (B,T,D), lengths (B,)) -> logits (B, num_classes)`.

    A head declares its hyper-parameters as `Config` (a HeadConfig subclass) and its capabilities as the class
    attributes above; `models.register_head` makes it a `--model` choice and `e2e_<name>` with it.

    Per-dimension mean and std of the training split are buffers, so they travel in the
    checkpoint and predict.py standardises exactly as training did. Features of randomly
    initialised or ImageNet CNNs share one dominant direction; standardising spreads them out.
    """

    Config: ClassVar[type[HeadConfig]] = HeadConfig

    def __init__(self, input_dim: int, num_classes: int, **config: Any) -> None:
        super().__init__()
        self.input_dim = int(input_dim)
        self.num_classes = int(num_classes)
        self.config = {"input_dim": self.input_dim, "num_classes": self.num_classes, **config}
        self.register_buffer("feature_mean", torch.zeros(self.input_dim))
        self.register_buffer("feature_std", torch.ones(self.input_dim))

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor, eps: float = 1e-5) -> None:
        self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.feature_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(eps))

    def standardize(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Standardise real frames; padding rows become exact zeros whatever they held."""
        x = (feats.float() - self.feature_mean) / self.feature_std
        mask = length_mask(lengths, x.shape[1]).unsqueeze(-1)
        return x * mask

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

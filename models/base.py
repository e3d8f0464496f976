"""What every head shares: feature standardisation in front, a padding mask, and a config to rebuild from."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean (B, T) mask, True on real frames and False on padding."""
    steps = torch.arange(max_len, device=lengths.device)
    return steps.unsqueeze(0) < lengths.unsqueeze(1)


class VideoHead(nn.Module):
    """Base of every head: `forward(feats (B,T,D), lengths (B,)) -> logits (B, num_classes)`.

    Per-dimension mean and std of the training split are buffers, so they travel in the
    checkpoint and predict.py standardises exactly as training did. Features of randomly
    initialised or ImageNet CNNs share one dominant direction; standardising spreads them out.
    """

    def __init__(self, input_dim: int, num_classes: int, **config: Any) -> None:
        super().__init__()
        self.input_dim = int(input_dim)
        self.num_classes = int(num_classes)
        self.config: dict[str, Any] = {"input_dim": self.input_dim, "num_classes": self.num_classes, **config}
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

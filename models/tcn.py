"""A temporal convolutional network: a stack of dilated 1-D convolutions over the frame sequence (dilation 1, 2,
4, ...: the receptive field doubles per block), residual, then a mean over the true frames.

Padding never leaks in: padded steps are zeroed before every convolution (so they read as the convolution's own
zero padding, whatever the batch's width) and the pooling averages the real frames only, so a padded batch gives
each video the logits it gets alone. Order-aware: a convolution's kernel is not symmetric in time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from models.base import HeadConfig, VideoHead, length_mask


@dataclass
class TCNConfig(HeadConfig):
    hidden_size: int = 256
    num_layers: int = 4  # blocks; block i has dilation 2 ** i
    kernel_size: int = 3
    dropout: float = 0.1

    def validate(self) -> None:
        super().validate()
        if self.kernel_size < 2 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3 (a centred kernel), got {self.kernel_size}")
        if self.num_layers < 1 or self.hidden_size < 1:
            raise ValueError(f"num_layers and hidden_size must be >= 1, got {self.num_layers}, {self.hidden_size}")


class _Block(nn.Module):
    def __init__(self, width: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel, dilation=dilation, padding=dilation * (kernel // 2))
        # normalised per time step over the channels: statistics over time would count the padding
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.conv(x * mask).transpose(1, 2)).transpose(1, 2)
        return (x + self.dropout(torch.relu(y))) * mask


class TCNHead(VideoHead):
    Config = TCNConfig
    groups_by_length: ClassVar[bool] = True

    def __init__(self, input_dim: int, num_classes: int, **flags: object) -> None:
        cfg = TCNConfig.from_flags(**flags)
        super().__init__(input_dim, num_classes, **cfg.to_dict())
        width = int(cfg.hidden_size)
        self.projection = nn.Conv1d(input_dim, width, 1)
        self.blocks = nn.ModuleList(_Block(width, int(cfg.kernel_size), 2 ** i, float(cfg.dropout))
                                    for i in range(int(cfg.num_layers)))
        self.dropout = nn.Dropout(float(cfg.dropout))
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.standardize(feats, lengths).transpose(1, 2)  # (B, D, T)
        true_lengths = lengths.to(x.device).clamp(min=1, max=x.shape[2])
        mask = length_mask(true_lengths, x.shape[2]).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        x = self.projection(x) * mask
        for block in self.blocks:
            x = block(x, mask)
        pooled = x.sum(2) / true_lengths.unsqueeze(1).to(x.dtype)
        return self.classifier(self.dropout(pooled))

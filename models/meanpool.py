"""The order-blind baseline: a masked mean over time, then a linear classifier."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from models.base import HeadConfig, VideoHead, length_mask


@dataclass
class MeanPoolConfig(HeadConfig):
    dropout: float = 0.1


class MeanPoolHead(VideoHead):
    Config = MeanPoolConfig
    order_aware: ClassVar[bool] = False  # a mean does not depend on the order of its terms

    def __init__(self, input_dim: int, num_classes: int, **flags: object) -> None:
        cfg = MeanPoolConfig.from_flags(**flags)
        super().__init__(input_dim, num_classes, **cfg.to_dict())
        self.dropout = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(input_dim, num_classes)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.standardize(feats, lengths)
        mask = length_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
        pooled = (x * mask).sum(1) / lengths.clamp_min(1).unsqueeze(1).to(x.dtype)
        return self.classifier(self.dropout(pooled))

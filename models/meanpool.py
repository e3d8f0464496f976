"""The order-blind baseline: a masked mean over time, then a linear classifier."""

from __future__ import annotations

import torch
from torch import nn

from models.base import VideoHead, length_mask


class MeanPoolHead(VideoHead):
    def __init__(self, input_dim: int, num_classes: int, dropout: float = 0.1, **_: object) -> None:
        super().__init__(input_dim, num_classes, dropout=dropout)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(input_dim, num_classes)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.standardize(feats, lengths)
        mask = length_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
        pooled = (x * mask).sum(1) / lengths.clamp_min(1).unsqueeze(1).to(x.dtype)
        return self.classifier(self.dropout(pooled))

"""Attention pooling: a learned query attends over the frames, with no positions, then a linear classifier.

The ablation between `meanpool` and `bert`: it weights frames by their content, as attention does, but cannot see
their order (no position information anywhere, and a weighted sum does not depend on the order of its terms). A
gap between `attnpool` and `meanpool` is what content weighting buys; a gap between `bert` and `attnpool` is what
order (and depth) buys.

`num_layers` > 1 puts `num_layers - 1` self-attention blocks (pre-norm transformer encoder layers, padding masked)
before the query: the deep attentive probe of V-JEPA 2, frames exchanging information before they are pooled. It is
still order-blind by construction: with no position anywhere, self-attention is permutation-equivariant and the
pooled query permutation-invariant. `num_layers` 1 is the single query pooler, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from models.base import HeadConfig, VideoHead, length_mask


@dataclass
class AttnPoolConfig(HeadConfig):
    hidden_size: int = 256
    num_heads: int = 4
    num_layers: int = 1  # attention layers in all: the pooler plus num_layers - 1 self-attention blocks
    dropout: float = 0.1

    def validate(self) -> None:
        super().validate()
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 (the query pooler), got {self.num_layers}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}: each "
                             "attention head takes an equal share of the width")


class AttnPoolHead(VideoHead):
    Config = AttnPoolConfig
    order_aware: ClassVar[bool] = False  # no positions, and a weighted sum does not depend on the order of its terms

    def __init__(self, input_dim: int, num_classes: int, **flags: object) -> None:
        cfg = AttnPoolConfig.from_flags(**flags)
        hidden_size, num_heads, dropout = int(cfg.hidden_size), int(cfg.num_heads), float(cfg.dropout)
        super().__init__(input_dim, num_classes, **cfg.to_dict())
        self.projection = nn.Linear(input_dim, hidden_size)
        self.query = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.attention = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_classes)
        # created last: a one-layer pooler draws its initial weights exactly as before the blocks existed
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(hidden_size, num_heads, dim_feedforward=4 * hidden_size, dropout=dropout,
                                       batch_first=True, norm_first=True)
            for _ in range(int(cfg.num_layers) - 1))

    def pool(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (B, hidden), attention weights (B, heads, T)) over the real frames. A zero-length video
        attends to its one (zeroed) padding row rather than to nothing, which would be NaN."""
        x = self.projection(self.standardize(feats, lengths))
        true_lengths = lengths.to(x.device).clamp(min=1, max=x.shape[1])
        padding = ~length_mask(true_lengths, x.shape[1])
        for block in self.blocks:  # no positions: each block is permutation-equivariant over the real frames
            x = block(x, src_key_padding_mask=padding) * (~padding).unsqueeze(-1).to(x.dtype)
        query = self.query.to(x.dtype).expand(x.shape[0], 1, -1)
        pooled, weights = self.attention(query, x, x, key_padding_mask=padding, need_weights=True,
                                         average_attn_weights=False)
        return pooled[:, 0], weights[:, :, 0]

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        pooled, _ = self.pool(feats, lengths)
        return self.classifier(self.dropout(pooled))

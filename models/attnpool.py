"""Attention pooling: a learned query attends over the frames, with no positions, then a linear classifier.

The ablation between `meanpool` and `bert`: it weights frames by their content, as attention does, but cannot see
their order (no position information anywhere, and a weighted sum does not depend on the order of its terms). A
gap between `attnpool` and `meanpool` is what content weighting buys; a gap between `bert` and `attnpool` is what
order (and depth) buys.

`num_layers` > 1 puts `num_layers - 1` self-attention blocks (pre-norm transformer encoder layers, padding masked)
before the query: the deep attentive probe of V-JEPA 2, frames exchanging information before they are pooled. It is
still order-blind by construction: with no position anywhere, self-attention is permutation-equivariant and the
pooled query permutation-invariant. `num_layers` 1 is the single query pooler, as before.

`positions` (deep attnpool only; models/positions.py) gives the blocks the frames' order, and the head becomes
order-aware (its `order_aware` says so): `learned` adds a trained table (initialised with the sinusoidal code, at
the projected frames' scale, so order is visible from the first step; a video longer than `max_positions` is
subsampled uniformly, with a warning), `sinusoidal` the fixed code, `time` the code of each frame's timestamp
(`times=`, seconds), and `rotary` rotates the blocks' queries and keys (RoPE, in this file's own attention, since
nn.MultiheadAttention cannot be given rotated queries and keys). The default, `none`, keeps it order-blind. The
single query pooler gets no position in any case: positions act through the blocks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from models.base import HeadConfig, VideoHead, length_mask
from models.positions import POSITIONS, apply_rotary, check_times, sinusoidal_code, time_code, uniform_frame_index

logger = logging.getLogger(__name__)


@dataclass
class AttnPoolConfig(HeadConfig):
    hidden_size: int = 256
    num_heads: int = 4
    num_layers: int = 1  # attention layers in all: the pooler plus num_layers - 1 self-attention blocks
    dropout: float = 0.1
    positions: str = "none"  # of the self-attention blocks; none keeps the head order-blind
    max_positions: int = 512  # rows of the learned table

    def validate(self) -> None:
        super().validate()
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1 (the query pooler), got {self.num_layers}")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}; choose from {', '.join(POSITIONS)}")
        if self.positions != "none" and self.num_layers < 2:
            raise ValueError(f"positions {self.positions!r} act through the self-attention blocks, and num_layers 1 "
                             "has none (the single query pooler takes no position): use --num_layers 2 or more")
        if self.positions == "rotary" and (self.hidden_size // max(self.num_heads, 1)) % 2:
            raise ValueError(f"rotary positions need an even width per attention head, got hidden_size "
                             f"{self.hidden_size} / {self.num_heads} heads")
        if self.max_positions < 1:
            raise ValueError(f"max_positions must be >= 1, got {self.max_positions}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}: each "
                             "attention head takes an equal share of the width")


class RotaryEncoderLayer(nn.Module):
    """A pre-norm transformer encoder layer (as nn.TransformerEncoderLayer(norm_first=True, activation relu)) whose
    queries and keys are rotated by their frame index (RoPE) before the scores are taken."""

    def __init__(self, width: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)
        self.linear1, self.linear2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.dropout = nn.Dropout(dropout)
        self.attn_dropout = float(dropout)

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.in_proj(self.norm1(x)).view(batch, length, 3, self.num_heads, -1).unbind(2)
        steps = torch.arange(length, device=x.device, dtype=torch.float32)
        q, k = apply_rotary(q, steps), apply_rotary(k, steps)
        allowed = (~src_key_padding_mask)[:, None, None, :]  # (B, 1, 1, L): keys that are real frames
        attended = nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=allowed,
            dropout_p=self.attn_dropout if self.training else 0.0)
        x = x + self.dropout(self.out_proj(attended.transpose(1, 2).reshape(batch, length, width)))
        return x + self.dropout(self.linear2(self.dropout(torch.relu(self.linear1(self.norm2(x))))))


class AttnPoolHead(VideoHead):
    Config = AttnPoolConfig
    order_aware: ClassVar[bool] = False  # by default: no positions, and a weighted sum does not depend on the order
    has_positions: ClassVar[bool] = True  # of its self-attention blocks (num_layers > 1)

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
        self.positions = str(cfg.positions)
        self.order_aware = self.positions != "none"
        self.uses_times = self.positions == "time"
        if self.positions == "rotary":
            self.blocks = nn.ModuleList(RotaryEncoderLayer(hidden_size, num_heads, dropout)
                                        for _ in range(int(cfg.num_layers) - 1))
        else:
            self.blocks = nn.ModuleList(
                nn.TransformerEncoderLayer(hidden_size, num_heads, dim_feedforward=4 * hidden_size, dropout=dropout,
                                           batch_first=True, norm_first=True)
                for _ in range(int(cfg.num_layers) - 1))
        self.max_frames = int(cfg.max_positions) if self.positions == "learned" else None
        if self.positions == "learned":  # the sinusoidal code, trained from there (the module docstring)
            self.position_table = nn.Parameter(sinusoidal_code(torch.arange(self.max_frames), hidden_size))

    def _add_positions(self, x: torch.Tensor, times: torch.Tensor | None) -> torch.Tensor:
        """The frames' positions added to the projected frames (learned, sinusoidal, time); rotary acts inside the
        blocks and none adds nothing."""
        if self.positions == "learned":
            return x + self.position_table[: x.shape[1]].to(x.dtype)
        if self.positions == "sinusoidal":
            return x + sinusoidal_code(torch.arange(x.shape[1], device=x.device), x.shape[2]).to(x.dtype)
        if self.positions == "time":
            return x + time_code(times, x.shape[2]).to(x.dtype)
        return x

    def pool(self, feats: torch.Tensor, lengths: torch.Tensor,
             times: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (B, hidden), attention weights (B, heads, T)) over the real frames. A zero-length video
        attends to its one (zeroed) padding row rather than to nothing, which would be NaN."""
        if self.uses_times:
            times = check_times(times, feats, type(self).__name__)
        lengths = lengths.to(feats.device)
        if self.max_frames is not None and feats.shape[1] > self.max_frames:
            if bool((lengths > self.max_frames).any()):
                logger.warning("a video of %d frames is longer than the %d learned positions: subsampling it "
                               "uniformly to %d frames", int(lengths.max()), self.max_frames, self.max_frames)
            index, lengths = uniform_frame_index(lengths, feats.shape[1], self.max_frames)
            feats = torch.gather(feats, 1, index.unsqueeze(-1).expand(-1, -1, feats.shape[2]))
        x = self.projection(self.standardize(feats, lengths))
        true_lengths = lengths.clamp(min=1, max=x.shape[1])
        padding = ~length_mask(true_lengths, x.shape[1])
        x = self._add_positions(x, times) * (~padding).unsqueeze(-1).to(x.dtype)
        for block in self.blocks:  # without positions each block is permutation-equivariant over the real frames
            x = block(x, src_key_padding_mask=padding) * (~padding).unsqueeze(-1).to(x.dtype)
        query = self.query.to(x.dtype).expand(x.shape[0], 1, -1)
        pooled, weights = self.attention(query, x, x, key_padding_mask=padding, need_weights=True,
                                         average_attn_weights=False)
        return pooled[:, 0], weights[:, :, 0]

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        pooled, _ = self.pool(feats, lengths, times)
        return self.classifier(self.dropout(pooled))

"""A bidirectional LSTM over the true frames of each video (packed sequences, so padding is never read)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.base import HeadConfig, VideoHead, length_mask

POOLINGS = ("last", "mean")


@dataclass
class BiLSTMConfig(HeadConfig):
    hidden_size: int = 512
    num_layers: int = 1
    dropout: float = 0.1
    pooling: str = "last"

    def validate(self) -> None:
        super().validate()
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {self.pooling!r}; choose from {', '.join(POOLINGS)}")


class BiLSTMHead(VideoHead):
    """BiLSTM, then a linear classifier on a pooled (B, 2 * hidden_size) summary.

    `pooling="last"` (default) concatenates the last layer's final forward state (after each video's
    true last frame, thanks to packing) and final backward state (after its first frame): each has read
    the whole video in one direction, so together they keep the order information the LSTM built up,
    at no extra cost. `pooling="mean"` averages the outputs over the real frames instead, which can be
    steadier on very long videos where the final states forget the beginning.
    """

    Config = BiLSTMConfig
    groups_by_length: ClassVar[bool] = True

    def __init__(self, input_dim: int, num_classes: int, **flags: object) -> None:
        cfg = BiLSTMConfig.from_flags(**flags)
        hidden_size, num_layers, dropout, pooling = (int(cfg.hidden_size), int(cfg.num_layers), float(cfg.dropout),
                                                     cfg.pooling)
        super().__init__(input_dim, num_classes, **cfg.to_dict())
        self.pooling = pooling
        # nn.LSTM applies its dropout between stacked layers only, and warns when there is a single layer.
        self.lstm = nn.LSTM(
            input_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * hidden_size, num_classes)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.standardize(feats, lengths)
        # pack_padded_sequence refuses empty sequences; a zero-length video reads one (zeroed) padding row.
        true_lengths = lengths.clamp(min=1, max=x.shape[1])
        packed = pack_padded_sequence(x, true_lengths.cpu(), batch_first=True, enforce_sorted=False)
        # oneDNN's CPU LSTM has no bf16/fp16 kernel for every shape ("could not create a primitive descriptor" when
        # all lengths are equal), so on the CPU the recurrence runs in fp32 outside autocast; CUDA's cuDNN has both.
        with torch.autocast("cpu", enabled=False) if x.device.type == "cpu" else contextlib.nullcontext():
            out, (h_n, _) = self.lstm(packed)
        if self.pooling == "last":
            # h_n: (num_layers * 2, B, H), already restored to the batch's original order.
            pooled = torch.cat([h_n[-2], h_n[-1]], dim=1)
        else:
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
            mask = length_mask(true_lengths, x.shape[1]).unsqueeze(-1).to(out.dtype)
            pooled = (out * mask).sum(1) / true_lengths.unsqueeze(1).to(out.dtype)
        return self.classifier(self.dropout(pooled))

"""A bidirectional GRU over the true frames of each video (packed sequences): the cheaper recurrent check beside
the BiLSTM (three gates instead of four, no cell state), read out from the final forward and backward states."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from models.base import HeadConfig, VideoHead


@dataclass
class GRUConfig(HeadConfig):
    hidden_size: int = 512
    num_layers: int = 1
    dropout: float = 0.1


class GRUHead(VideoHead):
    Config = GRUConfig
    groups_by_length: ClassVar[bool] = True

    def __init__(self, input_dim: int, num_classes: int, **flags: object) -> None:
        cfg = GRUConfig.from_flags(**flags)
        super().__init__(input_dim, num_classes, **cfg.to_dict())
        # nn.GRU applies its dropout between stacked layers only (and warns with one layer)
        self.gru = nn.GRU(input_dim, int(cfg.hidden_size), num_layers=int(cfg.num_layers), batch_first=True,
                          bidirectional=True, dropout=float(cfg.dropout) if cfg.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(float(cfg.dropout))
        self.classifier = nn.Linear(2 * int(cfg.hidden_size), num_classes)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.standardize(feats, lengths)
        true_lengths = lengths.clamp(min=1, max=x.shape[1])  # a zero-length video reads one zeroed row
        packed = pack_padded_sequence(x, true_lengths.cpu(), batch_first=True, enforce_sorted=False)
        # as for the LSTM: oneDNN's CPU GRU lacks low-precision kernels for some shapes, so fp32 on the CPU
        with torch.autocast("cpu", enabled=False) if x.device.type == "cpu" else contextlib.nullcontext():
            _, h_n = self.gru(packed)
        pooled = torch.cat([h_n[-2], h_n[-1]], dim=1)  # last layer, forward after the last frame, backward after the first
        return self.classifier(self.dropout(pooled.to(self.classifier.weight.dtype)))

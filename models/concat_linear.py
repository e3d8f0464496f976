"""The cheapest order-aware probe: each video's frames resampled uniformly to a fixed count T, concatenated into
one T*D vector, and one linear layer (DINOv2's linear probe on concatenated frames for SSv2).

The resampling picks frame floor((t + 0.5) * L / T) for t < T from the L real frames (nearest, in order; a video
shorter than T repeats frames), so padding is never read. Which weight meets which frame depends on its position:
order-aware by construction."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.base import HeadConfig, VideoHead


@dataclass
class ConcatLinearConfig(HeadConfig):
    num_frames: int = 8  # T
    dropout: float = 0.1

    def validate(self) -> None:
        super().validate()
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")


def uniform_positions(lengths: torch.Tensor, count: int) -> torch.Tensor:
    """(B, count) frame index per slot: the centre of each of `count` equal spans of the true length."""
    true = lengths.clamp(min=1).to(torch.float64).unsqueeze(1)
    slots = (torch.arange(count, device=lengths.device, dtype=torch.float64) + 0.5).unsqueeze(0)
    return torch.minimum(torch.floor(slots * true / count), true - 1).long()


class ConcatLinearHead(VideoHead):
    Config = ConcatLinearConfig

    def __init__(self, input_dim: int, num_classes: int, **flags: object) -> None:
        cfg = ConcatLinearConfig.from_flags(**flags)
        super().__init__(input_dim, num_classes, **cfg.to_dict())
        self.num_frames = int(cfg.num_frames)
        self.dropout = nn.Dropout(float(cfg.dropout))
        self.classifier = nn.Linear(self.num_frames * input_dim, num_classes)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.standardize(feats, lengths)
        index = uniform_positions(lengths.to(x.device), self.num_frames)  # (B, T)
        picked = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # (B, T, D)
        return self.classifier(self.dropout(picked.flatten(1)))

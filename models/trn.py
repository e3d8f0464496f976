"""Multi-scale temporal relations (TRN, Zhou et al., arXiv:1711.08496): each video's frames resampled to a fixed
count T of segments, then for every scale k = 2..T an MLP g_k reads ordered k-frame subsets (the frames of a
subset concatenated in time order), its outputs averaged over the subsets of that scale and summed over the
scales, then classified.

Subsets: at scale k there are C(T, k) ordered k-frame subsets; TRN uses a few of them per scale. The head keeps at
most `subsets_per_scale` per scale, a fixed sample drawn from `subset_seed` (all of them where there are no more),
so the same config always builds the same relations and a checkpoint rebuilds them without storing them.

Padding never enters: the resampling (models.concat_linear.uniform_positions) picks frame floor((t + 0.5) L / T)
of the L real frames, so a padded batch gives each video the logits it gets alone. Order-aware by construction:
a subset's frames meet g_k's weights in time order, so swapping two frames changes what each weight reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch
from torch import nn

from models.base import HeadConfig, VideoHead
from models.concat_linear import uniform_positions


@dataclass
class TRNConfig(HeadConfig):
    num_frames: int = 8  # T: segments each video is resampled to; scales 2..T
    hidden_size: int = 128  # frame projection width and each g_k's width
    subsets_per_scale: int = 3  # ordered k-frame subsets kept per scale (TRN's own choice is 3)
    subset_seed: int = 0  # draws which subsets are kept where a scale has more than subsets_per_scale
    dropout: float = 0.1

    def validate(self) -> None:
        super().validate()
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 (the smallest relation is between 2 frames), got "
                             f"{self.num_frames}")
        if self.hidden_size < 1 or self.subsets_per_scale < 1:
            raise ValueError(f"hidden_size and subsets_per_scale must be >= 1, got {self.hidden_size}, "
                             f"{self.subsets_per_scale}")


def relation_subsets(num_frames: int, scale: int, count: int, seed: int) -> np.ndarray:
    """(S, scale) sorted segment indices: all C(num_frames, scale) subsets when there are at most `count`, else
    `count` distinct ones drawn from `seed` (and the scale, so each scale has its own draw), in sorted order."""
    total = math.comb(num_frames, scale)
    if total <= count:
        return np.asarray(list(combinations(range(num_frames), scale)), dtype=np.int64).reshape(total, scale)
    rng = np.random.default_rng([seed, num_frames, scale])
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < count:  # count < total, so this ends; rejection is cheap since C(T, k) > count
        chosen.add(tuple(sorted(int(i) for i in rng.choice(num_frames, size=scale, replace=False))))
    return np.asarray(sorted(chosen), dtype=np.int64)


class TRNHead(VideoHead):
    Config = TRNConfig

    def __init__(self, input_dim: int, num_classes: int, **flags: object) -> None:
        cfg = TRNConfig.from_flags(**flags)
        super().__init__(input_dim, num_classes, **cfg.to_dict())
        self.num_frames, width = int(cfg.num_frames), int(cfg.hidden_size)
        self.scales = tuple(range(2, self.num_frames + 1))
        self.projection = nn.Linear(input_dim, width)
        self.relations = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Linear(k * width, width), nn.ReLU(), nn.Linear(width, width))
            for k in self.scales)
        for k in self.scales:  # a constant of the config, rebuilt with it: not in the state dict
            subsets = relation_subsets(self.num_frames, k, int(cfg.subsets_per_scale), int(cfg.subset_seed))
            self.register_buffer(f"subsets_{k}", torch.from_numpy(subsets), persistent=False)
        self.dropout = nn.Dropout(float(cfg.dropout))
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = self.standardize(feats, lengths)
        index = uniform_positions(lengths.to(x.device), self.num_frames)  # (B, T): real frames only
        picked = torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))  # (B, T, D)
        segments = self.dropout(self.projection(picked))  # (B, T, width)
        total = segments.new_zeros(segments.shape[0], segments.shape[2])
        for k, relation in zip(self.scales, self.relations, strict=True):
            subsets = getattr(self, f"subsets_{k}")  # (S, k)
            ordered = segments[:, subsets]  # (B, S, k, width), each subset's frames in time order
            total = total + relation(ordered.flatten(2)).mean(1)
        return self.classifier(self.dropout(torch.relu(total)))

"""Where a frame sits in time, for the heads that attend (bert, roberta, deep attnpool): `--positions`.

- `learned`: a trained table indexed by the frame's position (the encoder's own for bert/roberta);
- `sinusoidal`: the fixed sin/cos code of the position (Vaswani et al.), never trained;
- `rotary`: RoPE (Su et al., arXiv:2104.09864): queries and keys rotated by an angle proportional to their position,
  so attention scores depend on the positions' difference only; no table is added to the tokens;
- `time`: the sinusoidal code of the frame's real timestamp in seconds (stage 1 samples frame k at k / fps, so a
  video at half the frame rate keeps its true time where an index would stretch it), instead of its index;
- `none`: nothing, which makes attention a set model (order-blind by construction).

A sinusoidal code has an RMS of 1/sqrt(2) per entry whatever its width; the heads scale it to the scale at which
their tokens enter (models/transformer.py's module docstring says why that ratio decides how soon order is used).
The time code is the index code at `seconds * time_scale`: with the default 4 steps per second, one second apart
is what four positions apart is in the index code, and frames 0.25 s apart (4 fps) still differ in every channel
pair of the fastest frequency.
"""

from __future__ import annotations

import math

import torch
from torch import nn

POSITIONS = ("learned", "sinusoidal", "rotary", "time", "none")
TIME_SCALE = 4.0  # steps of the sinusoidal code per second of video


def sinusoidal_code(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """(..., dim) float32 code of float `positions` (...): sin in the even channels, cos in the odd ones, at
    frequencies base ** (-2i / dim). An odd `dim` leaves the last channel zero."""
    half = dim // 2
    freqs = base ** (-torch.arange(half, device=positions.device, dtype=torch.float64) * 2.0 / dim)
    angles = positions.to(torch.float64).unsqueeze(-1) * freqs
    code = torch.zeros(*positions.shape, dim, device=positions.device, dtype=torch.float64)
    code[..., 0 : 2 * half : 2] = torch.sin(angles)
    code[..., 1 : 2 * half : 2] = torch.cos(angles)
    return code.float()


def time_code(times: torch.Tensor, dim: int, time_scale: float = TIME_SCALE) -> torch.Tensor:
    """(B, L, dim) code of each frame's timestamp in seconds (B, L): the sinusoidal code at `times * time_scale`."""
    return sinusoidal_code(times.to(torch.float64) * float(time_scale), dim)


CODE_RMS = 1.0 / math.sqrt(2.0)  # of every sinusoidal code (sin^2 + cos^2 = 1 per channel pair)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """RoPE on `x` (B, L, heads, head_dim) at float `positions` (L,) or (B, L): channel pair (j, j + head_dim/2)
    rotated by positions * base ** (-2j / head_dim) (the rotate-half layout of GPT-NeoX and Hugging Face's Llama)."""
    head_dim = x.shape[-1]
    if head_dim % 2:
        raise ValueError(f"rotary positions need an even width per attention head, got {head_dim}")
    freqs = base ** (-torch.arange(head_dim // 2, device=x.device, dtype=torch.float32) * 2.0 / head_dim)
    angles = positions.to(device=x.device, dtype=torch.float32).unsqueeze(-1) * freqs  # (..., L, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)
    if angles.dim() == 2:  # (L, head_dim): the same positions for every video
        angles = angles.unsqueeze(0)
    cos, sin = angles.cos().unsqueeze(2).to(x.dtype), angles.sin().unsqueeze(2).to(x.dtype)  # (B|1, L, 1, hd)
    return x * cos + rotate_half(x) * sin


class RotaryLinear(nn.Linear):
    """A query or key projection whose output is rotated by its token's index (0, 1, ... along dim 1), per
    attention head: RoPE inside any attention implementation (eager, sdpa, flash), since the scores are taken from
    what this layer returns. A subclass of nn.Linear with the same parameters, so state dicts keep their keys."""

    def __init__(self, in_features: int, out_features: int, num_heads: int, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if out_features % num_heads:
            raise ValueError(f"width {out_features} does not split into {num_heads} attention heads")
        self.num_heads = int(num_heads)

    @classmethod
    def replacing(cls, linear: nn.Linear, num_heads: int) -> RotaryLinear:
        new = cls(linear.in_features, linear.out_features, num_heads, bias=linear.bias is not None)
        new.to(device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(linear.weight)
            if linear.bias is not None:
                new.bias.copy_(linear.bias)
        new.weight.requires_grad_(linear.weight.requires_grad)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        batch, length = out.shape[:2]
        heads = out.view(batch, length, self.num_heads, -1)
        steps = torch.arange(length, device=out.device, dtype=torch.float32)
        return apply_rotary(heads, steps).reshape(batch, length, -1)


def uniform_frame_index(lengths: torch.Tensor, width: int, max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which frames to keep so that no video has more than `max_frames`.

    Returns `(index (B, min(width, max_frames)) long, new_lengths (B,))`. A video that fits keeps
    `0, 1, 2, ...` (entries past its length point at padding); a longer one keeps `max_frames`
    frames spread uniformly from its first to its last real frame, in order.
    """
    new_width = min(width, max_frames)
    index = torch.arange(new_width, device=lengths.device).unsqueeze(0).repeat(lengths.shape[0], 1)
    too_long = lengths > max_frames
    if too_long.any():
        steps = torch.linspace(0.0, 1.0, max_frames, device=lengths.device, dtype=torch.float64)
        last = (lengths[too_long] - 1).to(torch.float64).unsqueeze(1)
        index[too_long] = (steps.unsqueeze(0) * last).round().long()
    return index, lengths.clamp(max=max_frames)


def check_times(times: torch.Tensor | None, feats: torch.Tensor, head: str) -> torch.Tensor:
    """`times` (B, T) for a head with `positions="time"`, or a clear error when the caller did not pass them."""
    if times is None:
        raise ValueError(f"{head} with positions 'time' needs each frame's timestamp (times=, seconds), "
                         "which the embeddings' data loader adds from the split's fps")
    if tuple(times.shape) != tuple(feats.shape[:2]):
        raise ValueError(f"times has shape {list(times.shape)}, expected (batch, frames) = {list(feats.shape[:2])}")
    return times.to(feats.device)

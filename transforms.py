"""Frame to model input, the same for every route: JPEG decoding with one corrupt-frame policy, resize and crop,
normalisation, and the train-time clip augmentation.

Stage 2 (`prepare_data.py`), the end-to-end clip route (`clip_dataset.py`) and `predict.py` call these functions,
so a frame reaches a backbone as the same pixels whichever route it takes:

    stored JPEG --decode_jpeg/read_frame--> HxWx3 uint8 --resize_frame(ResizeSpec)--> SxSx3 --to_chw-->
        uint8 (3, S, S) --normalize_batch(mean, std) on the device--> float (B, 3, S, S)

The ResizeSpec (size, crop or squash, crop fraction, interpolation, rounding convention) and the mean/std are the
backbone record's (models/backbone.py), read from the model's own configuration: timm's eval transform and the
Hugging Face image processors, reproduced with OpenCV. An int stands for a torchvision backbone's spec.

Frames stay uint8 until `normalize_batch`, so DataLoader workers ship 4x fewer bytes and the arithmetic runs on the
device. A frame file that is empty, not a JPEG or truncated is a `FrameError`, never libjpeg's grey-filled guess:
stage 2 leaves such a frame out (and counts it), a clip takes the nearest readable frame instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
import torch

RESIZE_MODES = ("crop", "squash")


class FrameError(Exception):
    """One frame file that cannot be used (missing, empty, truncated, not an image)."""


# ----------------------------------------------------------------------------------------------- decoding


def decode_jpeg(data: bytes | np.ndarray, rgb: bool = True) -> np.ndarray:
    """JPEG bytes -> HxWx3 uint8, RGB (or BGR, as OpenCV gives it), refusing empty, non-JPEG and truncated data."""
    buf = np.frombuffer(data, np.uint8)
    if not len(buf):
        raise FrameError("empty file")
    if buf[:2].tobytes() != b"\xff\xd8":
        raise FrameError("not a JPEG (no start-of-image marker)")
    # libjpeg fills a truncated image with grey and only warns; the end-of-image marker tells them apart.
    if b"\xff\xd9" not in buf[-32:].tobytes():
        raise FrameError("truncated JPEG (no end-of-image marker)")
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise FrameError(f"cannot be decoded ({exc})") from exc
    if img is None:
        raise FrameError("cannot be decoded as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if rgb else img


def read_frame(path: str, rgb: bool = True) -> np.ndarray:
    """One stored frame file, decoded by `decode_jpeg`; a missing or unreadable file is a FrameError too."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise FrameError(f"unreadable ({exc.strerror})") from exc
    return decode_jpeg(data, rgb)


# ----------------------------------------------------------------------------------------------- eval / predict

# Interpolation names (timm's pretrained configs, Hugging Face's PIL `resample` codes mapped to these) -> OpenCV.
# OpenCV's cubic uses a = -0.75 where PIL uses a = -0.5, and neither OpenCV's linear nor its cubic antialias when
# shrinking while PIL and torchvision's antialiased tensor resize do: so a shrink by 2x or more uses INTER_AREA
# whatever the name. Measured against timm's own eval transform on real frames (README, "Backbones"), the pixels
# then differ by 0.5-0.9 grey levels on average.
INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
    "area": cv2.INTER_AREA,
}
# How each library rounds the resized long side and the centre-crop offset. One pixel of shift moves every edge,
# so these matter more than the interpolation kernel: rounding as ActionBERT did instead of as timm does puts the
# same frame 3-11 grey levels away from timm's on average, against 0.5-0.9 when rounding as timm does.
#   actionbert   : round(long side), floor(offset): torchvision-named backbones, byte-identical to earlier runs
#   timm         : torchvision's Resize + CenterCrop (int(long side), round(offset)), what timm's eval transform uses
#   transformers : Hugging Face image processors (int(long side), floor(offset))
CONVENTIONS = {"actionbert": (round, math.floor), "timm": (int, round), "transformers": (int, math.floor)}


@dataclass(frozen=True)
class ResizeSpec:
    """How a frame becomes a backbone's S x S input: what a backbone record says about geometry.

    crop:   shorter side to floor(size / crop_pct), then the centre size x size (timm's eval transform; crop_pct 1
            keeps the whole shorter side);
    squash: both sides to floor(size / crop_pct), then the centre crop (timm's `squash`; with crop_pct 1 straight to
            size x size, the original code's behaviour, which distorts the aspect ratio).
    """

    size: int
    mode: str = "crop"
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    convention: str = "actionbert"

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {tuple(CONVENTIONS)}, got {self.convention!r}")
        if not 0 < self.crop_pct <= 1 or self.size < 1:
            raise ValueError(f"need size >= 1 and 0 < crop_pct <= 1, got {self.size}, {self.crop_pct}")

    @property
    def scale_size(self) -> int:
        """The side the frame is resized to before the centre crop (timm: floor(size / crop_pct))."""
        return max(self.size, math.floor(self.size / self.crop_pct + 1e-6))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_resize_spec(spec: ResizeSpec | int, resize: str = "crop") -> ResizeSpec:
    """A ResizeSpec as given, or an image size with a resize mode (the torchvision backbones' preprocessing)."""
    return spec if isinstance(spec, ResizeSpec) else ResizeSpec(int(spec), resize)


def _interpolation(spec: ResizeSpec, old: tuple[int, int], new: tuple[int, int]) -> int:
    return cv2.INTER_AREA if new[0] * 2 <= old[0] or new[1] * 2 <= old[1] else INTERPOLATIONS[spec.interpolation]


def resize_frame(img: np.ndarray, spec: ResizeSpec | int, resize: str = "crop") -> np.ndarray:
    """Resize and centre-crop an HxWx3 frame to S x S as `spec` says (an int: ResizeSpec(int, resize)): the
    evaluation and predict transform. Every OpenCV resize works per channel, so RGB and BGR give the same pixels."""
    spec = as_resize_spec(spec, resize)
    h, w = img.shape[:2]
    size, scale_size = spec.size, spec.scale_size
    round_long, round_offset = CONVENTIONS[spec.convention]
    if spec.mode == "squash":
        new_w, new_h = scale_size, scale_size
    elif spec.convention == "actionbert":
        scale = scale_size / min(h, w)
        new_w, new_h = max(scale_size, round(w * scale)), max(scale_size, round(h * scale))
    elif h <= w:
        new_w, new_h = max(scale_size, round_long(scale_size * w / h)), scale_size
    else:
        new_w, new_h = scale_size, max(scale_size, round_long(scale_size * h / w))
    if (new_w, new_h) != (w, h):
        img = cv2.resize(img, (new_w, new_h), interpolation=_interpolation(spec, (w, h), (new_w, new_h)))
    if (new_w, new_h) != (size, size):
        top, left = int(round_offset((new_h - size) / 2)), int(round_offset((new_w - size) / 2))
        img = img[top : top + size, left : left + size]
    return img


def to_chw(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> contiguous uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def preprocess_frame(rgb: np.ndarray, spec: ResizeSpec | int, resize: str = "crop") -> torch.Tensor:
    """RGB uint8 HxWx3 -> uint8 (3, S, S): a decoded frame as a backbone's input, before normalisation."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 HxWx3 frame, got {rgb.dtype} {rgb.shape}")
    return to_chw(resize_frame(rgb, spec, resize))


def load_frame(path: str, spec: ResizeSpec | int, resize: str = "crop") -> torch.Tensor:
    """Frame file -> uint8 (3, S, S) RGB, as stage 2's workers feed the backbone: `preprocess_frame` of the file."""
    return preprocess_frame(read_frame(path), spec, resize)


def normalize_batch(
    x_uint8: torch.Tensor,
    device: torch.device | str,
    mean: Sequence[float],
    std: Sequence[float],
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float32 `(x / 255 - mean) / std` on `device`, with the backbone's per-channel mean
    and std. The copy moves uint8 (4x less traffic) and the arithmetic runs on the device; non_blocking only
    helps (and is only safe) from pinned memory."""
    device = torch.device(device)
    x = x_uint8.to(device, non_blocking=device.type == "cuda" and x_uint8.is_pinned())
    mean_t = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255.0
    std_t = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255.0
    x = (x.float() - mean_t) / std_t
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


# ----------------------------------------------------------------------------------------------- clips


def sample_crop(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.25, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """Random resized crop box (top, left, h, w): area fraction in `scale`, aspect ratio log-uniform in `ratio`.

    Same algorithm as torchvision's RandomResizedCrop.get_params (10 tries, then the largest centred box with
    the ratio clamped), with a seeded NumPy generator so one draw serves a whole clip.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_resize_flip(
    frame: np.ndarray, box: tuple[int, int, int, int], spec: ResizeSpec | int, flip: bool
) -> np.ndarray:
    """Crop `box` from an HxWx3 frame, resize to S x S, optionally mirror left-right: the training transform of one
    frame of a clip, with the box and flip drawn once per clip (motion between frames is kept). Any shrink uses
    INTER_AREA, an enlargement the backbone's own interpolation (`spec`; an int is bilinear)."""
    spec = as_resize_spec(spec)
    top, left, h, w = box
    out = frame[top : top + h, left : left + w]
    size = spec.size
    shrink = size < w or size < h
    interp = cv2.INTER_AREA if shrink else INTERPOLATIONS[spec.interpolation]
    out = cv2.resize(out, (size, size), interpolation=interp)
    return np.ascontiguousarray(out[:, ::-1]) if flip else out


def clip_tensor(
    frames: Mapping[int, np.ndarray] | Sequence[np.ndarray],
    indices: np.ndarray,
    transform: Callable[[np.ndarray], np.ndarray],
) -> torch.Tensor:
    """uint8 (V, T, 3, S, S) from the frames at `indices` (V, T), each distinct frame transformed to S x S x 3 once
    (a short video repeats frames). `frames` maps a frame index to its HxWx3 image: all of a video's frames, or only
    the sampled ones."""
    done: dict[int, Any] = {}
    for k in indices.ravel():
        if int(k) not in done:
            done[int(k)] = transform(frames[int(k)])
    first = next(iter(done.values()))
    clip = np.stack([done[int(k)] for k in indices.ravel()]).reshape(*indices.shape, *first.shape)
    return torch.from_numpy(clip).permute(0, 1, 4, 2, 3).contiguous()

"""Frame to model input, the same for every route: JPEG decoding with one corrupt-frame policy, resize and crop,
normalisation, and the train-time clip augmentation.

Stage 2 (`prepare_data.py`), the end-to-end clip route (`clip_dataset.py`) and `predict.py` call these functions,
so a frame reaches a backbone as the same pixels whichever route it takes:

    stored JPEG --decode_jpeg/read_frame--> HxWx3 uint8 --resize_frame--> SxSx3 --to_chw--> uint8 (3, S, S)
        --normalize_batch(mean, std) on the device--> float (B, 3, S, S)

Frames stay uint8 until `normalize_batch`, so DataLoader workers ship 4x fewer bytes and the arithmetic runs on the
device. A frame file that is empty, not a JPEG or truncated is a `FrameError`, never libjpeg's grey-filled guess:
stage 2 leaves such a frame out (and counts it), a clip takes the nearest readable frame instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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


def resize_frame(img: np.ndarray, image_size: int, resize: str = "crop") -> np.ndarray:
    """Resize (and centre-crop) an HxWx3 frame to image_size x image_size: the evaluation and predict transform.

    crop: shorter side to image_size, then the centre square (keeps the aspect ratio);
    squash: straight to SxS (the original code's behaviour, distorts the aspect ratio).
    INTER_AREA for strong downscaling (no aliasing), INTER_LINEAR otherwise (5x cheaper, same result near 1:1).
    Every OpenCV resize works per channel, so RGB and BGR give the same pixels.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    h, w = img.shape[:2]
    if resize == "squash":
        new_w, new_h = image_size, image_size
    else:
        scale = image_size / min(h, w)
        new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    if (new_w, new_h) != (w, h):
        interp = cv2.INTER_AREA if new_w * 2 <= w or new_h * 2 <= h else cv2.INTER_LINEAR
        img = cv2.resize(img, (new_w, new_h), interpolation=interp)
    if resize == "crop":
        top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
        img = img[top : top + image_size, left : left + image_size]
    return img


def to_chw(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> contiguous uint8 tensor (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def preprocess_frame(rgb: np.ndarray, image_size: int, resize: str = "crop") -> torch.Tensor:
    """RGB uint8 HxWx3 -> uint8 (3, S, S): a decoded frame as a backbone's input, before normalisation."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB uint8 HxWx3 frame, got {rgb.dtype} {rgb.shape}")
    return to_chw(resize_frame(rgb, image_size, resize))


def load_frame(path: str, image_size: int, resize: str = "crop") -> torch.Tensor:
    """Frame file -> uint8 (3, S, S) RGB, as stage 2's workers feed the backbone: `preprocess_frame` of the file."""
    return preprocess_frame(read_frame(path), image_size, resize)


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


def _resize_exact(img: np.ndarray, width: int, height: int) -> np.ndarray:
    shrink = width < img.shape[1] or height < img.shape[0]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def crop_resize_flip(frame: np.ndarray, box: tuple[int, int, int, int], size: int, flip: bool) -> np.ndarray:
    """Crop `box` from an HxWx3 frame, resize to size x size, optionally mirror left-right: the training
    transform of one frame of a clip, with the box and flip drawn once per clip (motion between frames is kept)."""
    top, left, h, w = box
    out = _resize_exact(frame[top : top + h, left : left + w], size, size)
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

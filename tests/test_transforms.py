"""transforms.py: frame decoding with its corrupt-frame policy, resize and crop, normalisation, clip augmentation."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from models.backbone import IMAGENET_MEAN, IMAGENET_STD
from transforms import (
    FrameError,
    clip_tensor,
    decode_jpeg,
    load_frame,
    normalize_batch,
    preprocess_frame,
    read_frame,
    sample_crop,
)


def _jpeg(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


@pytest.fixture()
def good_frame(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    path = tmp_path / "frame_000001.jpg"
    path.write_bytes(_jpeg(img))
    return path


def test_decode_rejects_bad_files(tmp_path, good_frame):
    assert read_frame(str(good_frame)).ndim == 3
    cases = {"empty.jpg": b"", "text.jpg": b"hello", "cut.jpg": good_frame.read_bytes()[:200]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FrameError):
            read_frame(str(tmp_path / name))
    with pytest.raises(FrameError, match="unreadable"):
        read_frame(str(tmp_path / "missing.jpg"))  # a gap in a frames folder is a missing frame


def test_truncated_jpeg_is_an_error_not_a_grey_fill(good_frame, tmp_path):
    cut = good_frame.read_bytes()[: len(good_frame.read_bytes()) * 2 // 3]
    (tmp_path / "cut.jpg").write_bytes(cut)
    assert cv2.imread(str(tmp_path / "cut.jpg")) is not None  # OpenCV's file reader gives libjpeg's grey fill
    with pytest.raises(FrameError, match="truncated JPEG"):
        decode_jpeg(cut)
    with pytest.raises(FrameError, match="truncated JPEG"):
        read_frame(str(tmp_path / "cut.jpg"))


def test_rgb_and_bgr_are_the_same_pixels(good_frame):
    bgr = read_frame(str(good_frame), rgb=False)
    np.testing.assert_array_equal(read_frame(str(good_frame)), bgr[:, :, ::-1])
    np.testing.assert_array_equal(bgr, cv2.imread(str(good_frame)))


def test_worker_decoding_matches_shared_preprocessing(good_frame):
    """Stage 2's workers (load_frame) give preprocess_frame of the frame as OpenCV reads the file, whichever of RGB
    or BGR is resized: the pixels predict.py and the clip route compute."""
    rgb = cv2.cvtColor(cv2.imread(str(good_frame)), cv2.COLOR_BGR2RGB)
    bgr = cv2.imread(str(good_frame))
    for mode in ("crop", "squash"):
        assert torch.equal(load_frame(str(good_frame), 64, mode), preprocess_frame(rgb, 64, mode))
        assert torch.equal(load_frame(str(good_frame), 64, mode), preprocess_frame(bgr, 64, mode).flip(0))


def test_preprocess_crop_keeps_the_centre_and_squash_keeps_everything():
    # 60x120 frame: left quarter red, right quarter blue, middle half green
    frame = np.zeros((60, 120, 3), dtype=np.uint8)
    frame[:, :30, 0] = 255
    frame[:, 30:90, 1] = 255
    frame[:, 90:, 2] = 255
    crop = preprocess_frame(frame, 32, "crop")
    squash = preprocess_frame(frame, 32, "squash")
    assert crop.shape == squash.shape == (3, 32, 32) and crop.dtype == torch.uint8
    assert crop[1].min() == 255 and crop[0].max() == 0 and crop[2].max() == 0  # only the green centre
    assert squash[0, :, 0].min() == 255 and squash[2, :, -1].min() == 255  # both sides survive
    tall = preprocess_frame(np.zeros((200, 50, 3), dtype=np.uint8), 64, "crop")
    assert tall.shape == (3, 64, 64)
    with pytest.raises(ValueError):
        preprocess_frame(frame[:, :, 0], 32)


def test_normalize_batch_imagenet_stats_and_channels_last():
    x = torch.zeros((2, 3, 8, 8), dtype=torch.uint8)
    x[:, :, :4] = 255
    y = normalize_batch(x, "cpu", IMAGENET_MEAN, IMAGENET_STD, channels_last=True)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
    for c in range(3):
        assert torch.allclose(y[:, c, 0], torch.tensor((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))
        assert torch.allclose(y[:, c, -1], torch.tensor(-IMAGENET_MEAN[c] / IMAGENET_STD[c]))


def test_normalize_batch_takes_any_backbone_stats():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    y = normalize_batch(x, "cpu", (0.5, 0.5, 0.5), (0.5, 0.25, 0.125))
    assert y[0, :, 0, 0].tolist() == [1.0, 2.0, 4.0]


def test_crop_box_inside_image_with_scale():
    for s in range(200):
        top, left, h, w = sample_crop(48, 80, np.random.default_rng(s), scale=(0.3, 0.6))
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 80
    areas = [np.prod(sample_crop(48, 80, np.random.default_rng(s), scale=(0.3, 0.6))[2:]) / (48 * 80) for s in range(50)]
    assert 0.2 < min(areas) and max(areas) < 0.7


def test_clip_tensor_transforms_each_frame_once_in_index_order():
    frames = {k: np.full((4, 4, 3), 10 * k, np.uint8) for k in (0, 2, 5)}
    calls = []

    def transform(img: np.ndarray) -> np.ndarray:
        calls.append(int(img[0, 0, 0]))
        return img[:2, :2]

    clip = clip_tensor(frames, np.array([[0, 2, 2, 5], [2, 5, 5, 5]]), transform)
    assert clip.shape == (2, 4, 3, 2, 2) and clip.dtype == torch.uint8
    assert sorted(calls) == [0, 20, 50]
    assert clip[:, :, 0, 0, 0].tolist() == [[0, 20, 20, 50], [20, 50, 50, 50]]

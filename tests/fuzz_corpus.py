"""Damaged videos made at test time from the shared clips: what a user's download folder really holds.

`make_corpus(folder, seed)` writes a few dozen seeded files, each a kind of bad input: headerless cuts from the
middle of files (one pair per container: MP4, AVI, MPEG program stream, Matroska, WebM, QuickTime), truncations at
random offsets, byte flips in the header and in the payload, zero-length and random-bytes files with video
extensions, and valid files with the wrong extension. Generated containers come from the shared clips through
PyAV's encoders, small and short, so a whole corpus decodes in seconds.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np

from tests.conftest import VIDEOS


def encode_clip(path: Path, codec: str, fmt: str | None = None, size: tuple[int, int] = (176, 144),
                frames: int = 60, rate: int = 25, source: str = "carphone_pristine.mp4",
                options: dict[str, str] | None = None) -> Path:
    """Re-encode the first `frames` frames of a shared clip with `codec` into `path` (container from the suffix,
    or `fmt`); e.g. MPEG-2 in an MPEG program stream (`.mpg`), the format of many camera and TV recordings."""
    w, h = size
    with av.open(str(VIDEOS / source)) as src, av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for n, frame in enumerate(src.decode(video=0)):
            if n >= frames:
                break
            rgb = frame.to_ndarray(format="rgb24", width=w, height=h)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def sources(folder: Path) -> dict[str, bytes]:
    """{container suffix: the bytes of a whole, valid file}: a shared clip (bikes.mp4, some of whose cuts FFmpeg
    takes for a raw stream with a 0x0 frame size) and five generated ones. The AVI is a short MPEG-4 re-encoding
    of tree.avi rather than its 30 s of Cinepak: a dozen corpus files are copies of it, and each would cost a
    whole decode in every test that reads the corpus."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {
        ".avi": encode_clip(folder / "src.avi", "mpeg4", size=(160, 120), frames=90, source="tree.avi"),
        ".mpg": encode_clip(folder / "src.mpg", "mpeg2video", fmt="mpeg"),
        ".mkv": encode_clip(folder / "src.mkv", "libx264", options={"preset": "ultrafast"}),
        ".webm": encode_clip(folder / "src.webm", "libvpx", size=(88, 72)),
        ".mov": encode_clip(folder / "src.mov", "mpeg4", size=(88, 72)),
    }
    out = {".mp4": (VIDEOS / "bikes.mp4").read_bytes()}
    out.update({suffix: path.read_bytes() for suffix, path in made.items()})
    return out


def find_cut(data: bytes, accept: Callable[[av.container.InputContainer], bool], suffix: str, folder: Path,
             seed: int = 0, length: int = 2000, tries: int = 400) -> bytes:
    """A headerless piece of `data` (seeded offsets, `length` bytes) for which FFmpeg's answer on opening it
    passes `accept`; the search makes a test independent of the exact bytes an encoder version writes."""
    rng = random.Random(seed)
    probe = folder / f"probe{suffix}"
    for _ in range(tries):
        start = rng.randrange(len(data) // 8, len(data) - length)
        piece = data[start : start + length]
        probe.write_bytes(piece)
        try:
            with av.open(str(probe), metadata_errors="ignore") as c:
                if accept(c):
                    return piece
        except (av.FFmpegError, UnicodeDecodeError, ValueError):
            continue
    raise AssertionError(f"no cut of the {suffix} source gives the wanted FFmpeg answer in {tries} tries")


def no_codec_context(c: av.container.InputContainer) -> bool:
    return bool(c.streams.video) and c.streams.video[0].codec_context is None


def zero_dimensions(c: av.container.InputContainer) -> bool:
    if not c.streams.video or c.streams.video[0].codec_context is None:
        return False
    cc = c.streams.video[0].codec_context
    return cc.width == 0 or cc.height == 0


def _flip(data: bytes, rng: random.Random, lo: int, hi: int, count: int) -> bytes:
    buf = bytearray(data)
    for _ in range(count):
        i = rng.randrange(lo, min(hi, len(buf)))
        buf[i] ^= rng.randrange(1, 256)
    return bytes(buf)


def make_corpus(folder: Path, seed: int = 0) -> list[Path]:
    """Write the damaged files under `folder/Bad/` and return them (38 files, all with video extensions)."""
    rng = random.Random(seed)
    src = sources(folder / ".sources")
    bad = folder / "Bad"
    bad.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {}
    for suffix, data in sorted(src.items()):
        n = len(data)
        for k in range(2):  # headerless cuts from the middle
            start = rng.randrange(n // 4, n // 2)
            files[f"cut{k}{suffix}"] = data[start : start + rng.randrange(n // 8, n // 3)]
    src_dir = folder / ".sources"
    files["cut_nocodec.mpg"] = find_cut(src[".mpg"], no_codec_context, ".mpg", src_dir, seed)
    files["cut_zerodim.mp4"] = find_cut(src[".mp4"], zero_dimensions, ".mp4", src_dir, seed, length=20000)
    names = sorted(src)
    for k in range(6):  # truncations at random offsets
        suffix = rng.choice(names)
        files[f"trunc{k}{suffix}"] = src[suffix][: rng.randrange(1, len(src[suffix]))]
    for k in range(5):  # byte flips in the header, then in the payload
        suffix = rng.choice(names)
        files[f"fliphead{k}{suffix}"] = _flip(src[suffix], rng, 0, 4096, 8)
        suffix = rng.choice(names)
        files[f"flipbody{k}{suffix}"] = _flip(src[suffix], rng, len(src[suffix]) // 4, len(src[suffix]), 64)
    files["zero.mp4"] = b""
    files["zero.avi"] = b""
    np_rng = np.random.default_rng(seed)
    files["random.mkv"] = np_rng.integers(0, 256, 1024, dtype=np.uint8).tobytes()
    files["random.mp4"] = np_rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    files["random.mpg"] = np_rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    files["wrongext_mp4.avi"] = src[".mp4"]  # valid files under another container's extension
    files["wrongext_avi.mkv"] = src[".avi"]
    files["wrongext_mpg.mp4"] = src[".mpg"]
    paths = []
    for name, data in sorted(files.items()):
        path = bad / name
        path.write_bytes(data)
        paths.append(path)
    return paths

"""Write a small synthetic action dataset in the UCF-101 layout, made so that temporal order matters.

Most classes come in pairs that show the same frames in opposite order (a disc growing against shrinking, a colour
changing red to blue against blue to red, a bar rotating clockwise against anticlockwise, a star appearing against
disappearing): a head that pools frames without order cannot tell the two apart, a sequence model can. A few more
classes differ by appearance alone, which every head should get. Each class has several groups (a group shares its
background colour, texture and object colour) and several clips per group; the test split holds whole groups, as in
UCF-101, so a model cannot score by remembering a group's look.

The reversed class of a pair replays its forward class's clips backwards: group g, clip c of ShrinkingDisc has the
look, position, sizes and speed curve of group g, clip c of GrowingDisc, in reverse order (only the pixel noise is
drawn anew). So within a pair nothing but order tells the classes apart, in training as in testing: a head cannot
fit the pair by remembering backgrounds, and an order-blind head is at chance on it.

The states along a clip change a lot (size, colour, angle, opacity from start to end) and the change is monotonic
over most of the clip, because the demo samples frames at 1 fps (5-10 frames per clip: clips last whole seconds plus
one frame, so both end states are sampled) and embeds them with a randomly initialised resnet18, which only separates
frames that differ grossly. Group-to-group variation is kept small next to that change, for the same reason.

Output (all seeded: the same command writes byte-identical files with the same OpenCV build, whatever --workers):
    DIR/videos/<Class>/v_<Class>_g<NN>_c<MM>.avi   MJPG in AVI
    DIR/splits/classInd.txt, trainlist01.txt, testlist01.txt   official UCF-101 format, CRLF line endings
    DIR/demo_classes.json   {"order_pairs": [[A, B], ...], "appearance": [...], "classes": [...], ...}
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from utils import BadInputError, atomic_write_json, atomic_write_text, run_cli, setup_logging

log = logging.getLogger("actionbert.demo_data")

# (forward class, reversed class, kind): the reversed class shows the forward class's states in opposite order.
ORDER_PAIRS: tuple[tuple[str, str, str], ...] = (
    ("GrowingDisc", "ShrinkingDisc", "disc_size"),
    ("RedToBlue", "BlueToRed", "colour"),
    ("RotatingClockwise", "RotatingAnticlockwise", "rotate"),
    ("Appearing", "Disappearing", "fade"),
)
# (class, kind): static objects, no monotonic change; they differ from each other by appearance only.
APPEARANCE_CLASSES: tuple[tuple[str, str], ...] = (
    ("PlainSquare", "plain_square"),
    ("StripedSquare", "striped_square"),
    ("Triangle", "triangle"),
    ("Ring", "ring"),
)
# Object colour of each kind (RGB), jittered per group. Both classes of a pair share it, and all appearance classes
# share one, so colour never tells a pair apart and the appearance classes differ by shape and pattern only. The
# group-to-group variation is kept small next to the change along a clip: with a random CNN, a big change of
# background would otherwise swamp the order signal across groups.
KIND_COLOURS: dict[str, tuple[int, int, int]] = {
    "disc_size": (250, 215, 40),
    "rotate": (235, 235, 235),
    "fade": (230, 60, 230),
}
SHAPE_COLOUR = (60, 220, 80)
STRIPE_COLOUR = (250, 140, 30)
RED = (230, 30, 30)
BLUE = (30, 60, 240)
COLOUR_JITTER = 20.0
SPLIT_ID = 1
EOL = "\r\n"  # the official split files use CRLF


@dataclass(frozen=True)
class ClassSpec:
    name: str
    kind: str
    reverse: bool = False  # True: the frames of its pair's forward class, played backwards
    pair: str | None = None  # the other class of an order pair

    @property
    def source(self) -> str:
        """Whose looks and clips this class draws: a reversed class replays its forward class's clips backwards."""
        return self.pair if self.reverse and self.pair else self.name


@dataclass(frozen=True)
class VideoPlan:
    class_name: str
    group: int  # 1-based, as in UCF-101
    clip: int  # 1-based
    split: str  # "train" or "test"

    @property
    def file_name(self) -> str:
        return video_file_name(self.class_name, self.group, self.clip)

    @property
    def rel_path(self) -> str:
        return f"{self.class_name}/{self.file_name}"


@dataclass
class GroupLook:
    """What the clips of one group share: background, its fixed texture, object colours."""

    background: np.ndarray  # (H, W, 3) float32 RGB, colour plus a smooth texture
    colour: tuple[int, int, int]
    second_colour: tuple[int, int, int]  # stripes; the colour pair's end colour
    first_colour: tuple[int, int, int]  # the colour pair's start colour
    stripe_period: float
    stripe_angle: float


@dataclass
class ClipParams:
    num_frames: int
    progress: np.ndarray  # (num_frames,) in [0, 1]: how far along its change each frame is
    centre: tuple[float, float]
    noise_sigma: float
    jitter: float  # per-frame position jitter in pixels (static classes)
    extra: dict[str, float] = field(default_factory=dict)


def all_class_specs() -> dict[str, ClassSpec]:
    specs: dict[str, ClassSpec] = {}
    for fwd, rev, kind in ORDER_PAIRS:
        specs[fwd] = ClassSpec(fwd, kind, reverse=False, pair=rev)
        specs[rev] = ClassSpec(rev, kind, reverse=True, pair=fwd)
    for name, kind in APPEARANCE_CLASSES:
        specs[name] = ClassSpec(name, kind)
    return specs


def video_file_name(class_name: str, group: int, clip: int) -> str:
    return f"v_{class_name}_g{group:02d}_c{clip:02d}.avi"


def select_classes(names: Sequence[str] | None) -> list[ClassSpec]:
    """The requested classes (all by default) in classInd order: sorted by name, like UCF-101's."""
    specs = all_class_specs()
    if not names:
        names = list(specs)
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise BadInputError(f"unknown demo class(es) {', '.join(unknown)}; choose from {', '.join(sorted(specs))}")
    return [specs[n] for n in sorted(set(names))]


def plan_videos(classes: Sequence[ClassSpec], groups: int, clips: int, test_groups: int) -> list[VideoPlan]:
    """Every video to write, in official list order; the last `test_groups` groups of each class are the test set."""
    if groups < 2:
        raise BadInputError(f"--groups must be at least 2 (one for training, one for testing), got {groups}")
    if clips < 1:
        raise BadInputError(f"--clips must be at least 1, got {clips}")
    if not 1 <= test_groups < groups:
        raise BadInputError(f"--test_groups must be between 1 and --groups - 1 = {groups - 1}, got {test_groups}")
    first_test = groups - test_groups + 1
    return [
        VideoPlan(spec.name, g, c, "test" if g >= first_test else "train")
        for spec in classes
        for g in range(1, groups + 1)
        for c in range(1, clips + 1)
    ]


def split_file_texts(classes: Sequence[ClassSpec], plan: Sequence[VideoPlan]) -> dict[str, str]:
    """classInd.txt, trainlistNN.txt and testlistNN.txt exactly as UCF-101 writes them (CRLF, 1-based ids)."""
    ids = {spec.name: i for i, spec in enumerate(classes, start=1)}
    class_ind = "".join(f"{i} {name}{EOL}" for name, i in ids.items())
    train = "".join(f"{v.rel_path} {ids[v.class_name]}{EOL}" for v in plan if v.split == "train")
    test = "".join(f"{v.rel_path}{EOL}" for v in plan if v.split == "test")
    return {"classInd.txt": class_ind, f"trainlist{SPLIT_ID:02d}.txt": train, f"testlist{SPLIT_ID:02d}.txt": test}


def _rng(seed: int, *keys: str | int) -> np.random.Generator:
    """An independent stream per (seed, keys); class names enter by CRC so a class subset draws the same videos."""
    words = [seed & 0xFFFFFFFF] + [zlib.crc32(k.encode()) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(words)


def make_group_look(seed: int, spec: ClassSpec, group: int, size: tuple[int, int]) -> GroupLook:
    width, height = size
    rng = _rng(seed, "look", spec.source, group)
    base = rng.uniform(35, 75) + rng.uniform(-8, 8, size=3)  # dark grey with a tint
    # A smooth texture fixed for the group: coarse random grid, upsampled.
    coarse = rng.normal(0.0, 1.0, size=(5, 5, 3)).astype(np.float32)
    texture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    texture *= rng.uniform(3, 8)
    background = np.clip(base[None, None, :] + texture, 0, 255).astype(np.float32)
    colour = _jitter_colour(rng, KIND_COLOURS.get(spec.kind, SHAPE_COLOUR))
    first, second = _jitter_colour(rng, RED), _jitter_colour(rng, BLUE)
    return GroupLook(
        background=background,
        colour=colour,
        second_colour=second if spec.kind == "colour" else _jitter_colour(rng, STRIPE_COLOUR),
        first_colour=first,
        stripe_period=float(rng.uniform(0.09, 0.14) * min(size)),
        stripe_angle=float(rng.uniform(0, math.pi)),
    )


def _jitter_colour(rng: np.random.Generator, rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    jitter = rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3)
    return tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(rgb, jitter, strict=True))  # type: ignore[return-value]


def progress_profile(num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Monotonic 0 -> 1 over most of the clip, with short holds at either end and a random speed curve."""
    hold_start, hold_end = rng.uniform(0.0, 0.12, size=2)
    gamma = math.exp(rng.uniform(-0.5, 0.5))
    t = np.linspace(0.0, 1.0, num_frames)
    span = 1.0 - hold_start - hold_end
    x = np.clip((t - hold_start) / span, 0.0, 1.0)
    return x**gamma


def clip_frame_count(seconds: int, fps: float) -> int:
    """Whole seconds plus one frame: the last frame sits at t = seconds, so 1 fps sampling (t = 0, 1, ..., seconds)
    sees both the first and the last state, and a pair's two classes show the same sampled states."""
    return int(round(seconds * fps)) + 1


def make_clip_params(
    seed: int, spec: ClassSpec, group: int, clip: int, fps: float, size: tuple[int, int], seconds: tuple[float, float]
) -> ClipParams:
    rng = _rng(seed, "clip", spec.source, group, clip)
    width, height = size
    num_frames = clip_frame_count(int(rng.integers(math.ceil(seconds[0]), math.floor(seconds[1]) + 1)), fps)
    progress = progress_profile(num_frames, rng)
    if spec.reverse:
        progress = progress[::-1].copy()
    centre = (width / 2 + rng.uniform(-0.08, 0.08) * width, height / 2 + rng.uniform(-0.08, 0.08) * height)
    s = min(size)
    extra = {
        "r0": rng.uniform(0.05, 0.09) * s,  # disc radius at the start / end
        "r1": rng.uniform(0.40, 0.46) * s,
        # Bar angle (degrees, clockwise on screen): from about horizontal to about vertical, the largest change of
        # orientation a symmetric bar can show.
        "angle0": rng.uniform(-10, 10),
        "sweep": rng.uniform(80, 100),
        "side": rng.uniform(0.42, 0.56) * s,  # static objects / hexagon size
        "tilt": rng.uniform(-15, 15),
    }
    return ClipParams(
        num_frames=num_frames,
        progress=progress,
        centre=centre,
        noise_sigma=float(rng.uniform(2.0, 6.0)),
        jitter=float(rng.uniform(0.5, 2.0)),
        extra=extra,
    )


SHIFT = 4  # cv2 fixed-point bits: sub-pixel coordinates give smooth growth and rotation
_ONE = 1 << SHIFT


def _pts(points: np.ndarray) -> np.ndarray:
    return np.round(points * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _polygon(centre: tuple[float, float], radius: float, sides: int, angle_deg: float, star: bool = False) -> np.ndarray:
    n = sides * 2 if star else sides
    angles = np.deg2rad(angle_deg) + np.arange(n) * 2 * math.pi / n - math.pi / 2
    radii = np.where(np.arange(n) % 2 == 1, radius * 0.45, radius) if star else np.full(n, radius)
    return np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], axis=1)


def _fill(mask: np.ndarray, points: np.ndarray) -> None:
    cv2.fillPoly(mask, [_pts(points)], 255, cv2.LINE_AA, SHIFT)


def _blend(canvas: np.ndarray, mask: np.ndarray, colour: Sequence[float], alpha: float = 1.0) -> None:
    """Paint `colour` over `canvas` with coverage mask/255 * alpha, touching only the mask's bounding box."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0 or alpha <= 0.0:
        return
    region = canvas[y : y + h, x : x + w]
    a = mask[y : y + h, x : x + w].astype(np.float32)[..., None] * np.float32(alpha / 255.0)
    region -= a * (region - np.asarray(colour, dtype=np.float32))


def _stripes(size: tuple[int, int], period: float, angle: float) -> np.ndarray:
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
    return (np.sin(2 * math.pi * phase) > 0).astype(np.float32)


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean noise of std `sigma`: a sum of two uniform bytes (triangular), ten times cheaper than normal()."""
    n = int(np.prod(shape))
    pair = np.frombuffer(rng.bytes(2 * n), dtype=np.uint8).reshape(2, n)
    tri = pair[0].astype(np.float32) + pair[1].astype(np.float32) - np.float32(255.0)
    return (tri * np.float32(sigma / (255.0 * math.sqrt(2.0 / 12.0)))).reshape(shape)


def render_frame(
    spec: ClassSpec, look: GroupLook, params: ClipParams, p: float, rng: np.random.Generator
) -> np.ndarray:
    """One RGB uint8 frame of `spec` at progress p (0 = start state of the forward class, 1 = its end state)."""
    height, width = look.background.shape[:2]
    canvas = look.background.copy()
    mask = np.zeros((height, width), np.uint8)
    cx, cy = params.centre
    e = params.extra
    kind = spec.kind
    if kind in {"plain_square", "striped_square", "triangle", "ring"}:
        cx += rng.uniform(-params.jitter, params.jitter)
        cy += rng.uniform(-params.jitter, params.jitter)
    centre = (cx, cy)
    if kind == "disc_size":
        radius = e["r0"] + (e["r1"] - e["r0"]) * p
        cv2.circle(mask, _pts(np.array(centre)).ravel().tolist(), int(round(radius * _ONE)), 255, -1, cv2.LINE_AA, SHIFT)
        _blend(canvas, mask, look.colour)
    elif kind == "colour":
        _fill(mask, _polygon(centre, e["side"] * 0.8, 6, e["tilt"]))
        colour = (1.0 - p) * np.asarray(look.first_colour, np.float32) + p * np.asarray(look.second_colour, np.float32)
        _blend(canvas, mask, colour)
    elif kind == "rotate":
        angle = e["angle0"] + e["sweep"] * p
        length, thick = 0.86 * min(width, height), 0.16 * min(width, height)
        box = cv2.boxPoints((centre, (length, thick), angle))
        _fill(mask, box)
        _blend(canvas, mask, look.colour)
    elif kind == "fade":
        radius = e["side"] * (0.45 + 0.55 * p)
        _fill(mask, _polygon(centre, radius, 5, e["tilt"], star=True))
        _blend(canvas, mask, look.colour, alpha=float(p))
    elif kind in {"plain_square", "striped_square"}:
        _fill(mask, cv2.boxPoints((centre, (e["side"], e["side"]), e["tilt"])))
        if kind == "plain_square":
            _blend(canvas, mask, look.colour)
        else:
            stripes = _stripes((width, height), look.stripe_period, look.stripe_angle)
            _blend(canvas, (mask * stripes).astype(np.uint8), look.colour)
            _blend(canvas, (mask * (1.0 - stripes)).astype(np.uint8), look.second_colour)
    elif kind == "triangle":
        _fill(mask, _polygon(centre, e["side"] * 0.7, 3, e["tilt"]))
        _blend(canvas, mask, look.colour)
    elif kind == "ring":
        r = int(round(e["side"] * 0.62 * _ONE))
        thick = max(2, int(round(e["side"] * 0.18)))
        cv2.circle(mask, _pts(np.array(centre)).ravel().tolist(), r, 255, thick, cv2.LINE_AA, SHIFT)
        _blend(canvas, mask, look.colour)
    else:  # pragma: no cover - ClassSpec kinds are fixed above
        raise ValueError(f"unknown kind {kind}")
    canvas += _noise(rng, canvas.shape, params.noise_sigma)
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_clip(
    spec: ClassSpec,
    group: int,
    clip: int,
    seed: int,
    fps: float,
    size: tuple[int, int],
    seconds: tuple[float, float],
) -> Iterator[np.ndarray]:
    """The RGB frames of one video, fully determined by (seed, class, group, clip) and the video settings."""
    look = make_group_look(seed, spec, group, size)
    params = make_clip_params(seed, spec, group, clip, fps, size, seconds)
    rng = _rng(seed, "noise", spec.name, group, clip)
    for p in params.progress:
        yield render_frame(spec, look, params, float(p), rng)


def write_avi(path: Path, frames: Iterator[np.ndarray], fps: float, size: tuple[int, int]) -> int:
    """Encode RGB frames as MJPG in AVI (a deterministic encoder OpenCV's headless wheel always has); returns count."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), size)
    if not writer.isOpened():
        raise BadInputError(f"OpenCV cannot write MJPG video {path}")
    count = 0
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            count += 1
    finally:
        writer.release()
    return count


def _write_video(job: tuple) -> int:
    """Render and encode one planned video (a process-pool task: every video depends only on its own seeds)."""
    spec, video, seed, fps, size, seconds, video_dir, tmp_dir = job
    tmp = tmp_dir / video.file_name
    count = write_avi(tmp, render_clip(spec, video.group, video.clip, seed, fps, size, seconds), fps, size)
    tmp.replace(video_dir / video.rel_path)
    return count


def parse_size(text: str) -> tuple[int, int]:
    """'112' (square) or 'WxH' -> (width, height)."""
    try:
        parts = [int(x) for x in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or WxH, got {text!r}") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 32 or max(parts) > 1024:
        raise argparse.ArgumentTypeError(f"size must be N or WxH with sides in 32..1024, got {text!r}")
    return parts[0], parts[1]


def class_summary(classes: Sequence[ClassSpec]) -> dict:
    """The machine-readable description the demo's report reads: which classes are order pairs."""
    names = {spec.name for spec in classes}
    return {
        "classes": [spec.name for spec in classes],
        "order_pairs": [[fwd, rev] for fwd, rev, _ in ORDER_PAIRS if fwd in names and rev in names],
        "appearance": [name for name, _ in APPEARANCE_CLASSES if name in names],
        "kinds": {spec.name: spec.kind for spec in classes},
    }


def _check_no_stale_videos(video_dir: Path, plan: Sequence[VideoPlan]) -> None:
    """Refuse to mix with videos this run would not write (stage 1 would pick them up as data)."""
    if not video_dir.is_dir():
        return
    wanted = {Path(v.rel_path) for v in plan}
    stale = [p for p in video_dir.rglob("*") if p.is_file() and p.relative_to(video_dir) not in wanted]
    if stale:
        raise BadInputError(
            f"{video_dir} holds {len(stale)} file(s) this run would not write (e.g. {stale[0]}); "
            "use an empty output folder or remove it first"
        )


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=True)
    parser.add_argument("-o", "--out_dir", required=True, help="output folder (videos/, splits/, demo_classes.json)")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes byte-identical files")
    parser.add_argument(
        "--groups",
        type=int,
        default=12,
        help="groups per class (a group shares its look); the default leaves ~21 training clips per class, enough "
        "for the demo's transformers to learn order rather than remember clips",
    )
    parser.add_argument("--clips", type=int, default=3, help="clips per group")
    parser.add_argument(
        "--test_groups", type=int, default=None, help="last groups of each class in testlist01 (default: groups // 3)"
    )
    parser.add_argument("--size", type=parse_size, default=(112, 112), help="frame size, N or WxH (default 112)")
    parser.add_argument(
        "--fps", type=float, default=4.0, help="frame rate of the written videos (default 4: the demo samples 1 fps)"
    )
    parser.add_argument("--min_seconds", type=float, default=4.0, help="shortest clip (clips last whole seconds)")
    parser.add_argument("--max_seconds", type=float, default=9.0, help="longest clip (clips last whole seconds)")
    parser.add_argument(
        "--classes", nargs="+", default=None, help=f"subset of classes (default all: {' '.join(all_class_specs())})"
    )
    parser.add_argument(
        "--workers", type=int, default=min(2, os.cpu_count() or 1), help="encoding processes (output does not depend on it)"
    )
    parser.add_argument("--verbose", action="store_true")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Reject settings that cannot make a usable dataset, with a message naming the flag."""
    if not 1.0 <= args.fps <= 60.0:
        raise BadInputError(f"--fps must be in 1..60, got {args.fps}")
    if not 1 <= math.ceil(args.min_seconds) <= math.floor(args.max_seconds):
        raise BadInputError(
            f"--min_seconds {args.min_seconds} .. --max_seconds {args.max_seconds} must hold a whole number >= 1 "
            "(clips last whole seconds)"
        )
    if args.groups < 2:
        raise BadInputError(f"--groups must be at least 2 (one for training, one for testing), got {args.groups}")
    if args.workers < 1:
        raise BadInputError(f"--workers must be at least 1, got {args.workers}")


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    check_args(args)
    classes = select_classes(args.classes)
    test_groups = args.test_groups if args.test_groups is not None else max(1, args.groups // 3)
    plan = plan_videos(classes, args.groups, args.clips, test_groups)
    out = Path(args.out_dir)
    video_dir = out / "videos"
    _check_no_stale_videos(video_dir, plan)
    specs = {spec.name: spec for spec in classes}
    seconds = (args.min_seconds, args.max_seconds)
    out.mkdir(parents=True, exist_ok=True)
    for spec in classes:
        (video_dir / spec.name).mkdir(parents=True, exist_ok=True)
    # Videos are encoded under a temporary folder and renamed into place, so a killed run never leaves half a file.
    tmp_dir = Path(tempfile.mkdtemp(prefix=".tmp_videos_", dir=out))
    jobs = [(specs[v.class_name], v, args.seed, args.fps, args.size, seconds, video_dir, tmp_dir) for v in plan]
    workers = max(1, min(args.workers, len(jobs)))
    try:
        if workers == 1:
            for job in tqdm(jobs, desc="demo videos", unit="video"):
                _write_video(job)
        else:
            with ProcessPoolExecutor(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
                for _ in tqdm(pool.map(_write_video, jobs, chunksize=4), total=len(jobs), desc="demo videos", unit="video"):
                    pass
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    for name, text in split_file_texts(classes, plan).items():
        atomic_write_text(out / "splits" / name, text)
    summary = class_summary(classes)
    summary.update(
        {
            "seed": args.seed,
            "groups": args.groups,
            "clips": args.clips,
            "test_groups": test_groups,
            "fps": args.fps,
            "size": list(args.size),
            "seconds": list(seconds),
            "split_id": SPLIT_ID,
        }
    )
    atomic_write_json(out / "demo_classes.json", summary)
    n_test = sum(v.split == "test" for v in plan)
    log.info(
        "wrote %d videos (%d classes, %d train, %d test) to %s; splits in %s",
        len(plan),
        len(classes),
        len(plan) - n_test,
        n_test,
        video_dir,
        out / "splits",
    )
    return 0


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())

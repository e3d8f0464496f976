"""Small helpers every stage shares: logging, atomic writes, output locks, file-name limits, seeding, device
choice, clean CLI errors."""

from __future__ import annotations

import argparse
import csv
import errno
import fcntl
import hashlib
import io
import json
import logging
import math
import os
import random
import secrets
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("actionbert")


class BadInputError(Exception):
    """An error caused by the user's input: shown as one clear line, never as a traceback."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )


def error_line(exc: BaseException) -> str:
    """An error's message as the user should see it. A DataLoader worker's exception arrives re-raised with the
    worker's whole traceback in its message ("Caught X in DataLoader worker ... Original Traceback ..."): only
    its last line, the original message, is kept."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    head, sep, message = last.partition(": ")
    return message if sep and head.endswith(type(exc).__name__) else last


def run_cli(main: Callable[[Any], int | None], args: Any) -> None:
    """Run a script's main(args) and turn BadInputError into `error: ...` with exit code 2."""
    try:
        code = main(args)
    except BadInputError as exc:
        log.error("%s", error_line(exc))
        print(f"error: {error_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(code or 0))


# ----- command-line values: checked by argparse itself, so a bad one is `prog: error: argument -bs/--batch_size: ...`
# with the usage line and exit code 2, before any work starts.


def int_at_least(low: int) -> Callable[[str], int]:
    """argparse `type=` for an integer >= `low` (1 for sizes and counts, 0 for worker counts and intervals)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    parse.__name__ = f"int >= {low}"
    return parse


def float_in(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """argparse `type=` for a finite float in [low, high] (`low_open`/`high_open` exclude an end); NaN and
    infinities are refused whatever the range."""
    if math.isinf(high):
        what = f"a finite number {'>' if low_open else '>='} {low:g}"
    else:
        what = f"a finite number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        ok = ok and (value < high if high_open else value <= high)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
positive_float = float_in(0.0, low_open=True)
nonnegative_float = float_in(0.0)
probability = float_in(0.0, 1.0, high_open=True)  # dropout-like: 1 would drop everything


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# Longest file name (bytes) of ext4, XFS, Btrfs, tmpfs, NTFS and APFS; stage 1 keeps every name it makes within it.
NAME_MAX = 255


def fit_name(name: str, limit: int = NAME_MAX) -> str:
    """`name` itself when its UTF-8 form fits in `limit` bytes, else its longest prefix that fits with room for
    `~` and 8 hex digits of its SHA-256: deterministic (a rerun makes the same name) and distinct for names that
    share the prefix. The prefix is cut between characters, never inside one."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= limit:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:8]
    head = raw[: limit - len(digest) - 1].decode("utf-8", "ignore")  # drops a character cut in two
    return f"{head}~{digest}"


def _create_new(folder: Path, stem: str) -> tuple[int, Path]:
    """Create a new, empty file `.<stem>.<random>.tmp` in `folder`; mode 0666 less the umask, as open() makes
    files (tempfile.mkstemp would make it 0600, unreadable to colleagues on a shared cluster)."""
    prefix = "." + fit_name(stem, 64)
    while True:
        tmp = folder / f"{prefix}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:
            continue


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write to a temporary name in the same folder, then rename: a reader, or a rerun after a kill, never sees
    half a file. The temporary name is short whatever the file's name (file-system limits) and the file gets the
    user's umask. `durable` also fsyncs file and folder, so the file survives a power cut; stage 1 turns it off
    for its per-video records, where an fsync would make ext4 flush that video's frames too and stall the worker."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_new(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), durable)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1, durable: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", durable)


class OutputLock:
    """A lock on an output folder, so two runs never write the same outputs at once.

    `fcntl.flock` on a lock file in the folder that holds the holder's pid: the kernel releases it when the
    holder exits in any way (kill -9 included), so a stale lock is impossible and a crashed run needs no cleanup.
    A second run is refused at once with a BadInputError naming the holder. Not for NFS before v4 (no flock).

    `shared=True` takes it shared: any number of shared holders at once (stage 1's --shard runs, each on its own
    videos), none beside an exclusive one (a whole run or the merge). Shared holders write no pid."""

    def __init__(self, folder: str | os.PathLike, name: str = ".lock", what: str = "output folder",
                 shared: bool = False) -> None:
        self.path = Path(folder) / name
        self.what = what
        self.shared = shared
        self.fd: int | None = None

    def acquire(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown: shard runs hold it shared"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BadInputError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
            raise BadInputError(
                f"{self.path.parent} is in use by another run (pid {holder}, holding {self.path}); wait for it to "
                f"finish or stop it: two runs writing one {self.what} would corrupt it"
            ) from None
        if not self.shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            if not self.shared:
                os.ftruncate(self.fd, 0)  # an idle lock file is empty: outputs of two runs compare byte for byte
            os.close(self.fd)  # closing drops the flock; the file stays (unlinking it would race a new holder)
            self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_writable_dir(path: str | os.PathLike, flag: str) -> Path:
    """Refuse, before any work, an output folder that is a file, lies under a file, or cannot be written.
    Nothing is created; the first missing ancestor's parent must be a writable folder."""
    path = Path(path)
    probe = path
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is a file" if probe == path else f"lies under {probe}, which is a file"
        raise BadInputError(f"{flag} {path} {where}, not a folder")
    if probe.is_symlink() and not probe.exists():
        raise BadInputError(f"{flag} {path}: {probe} is a broken symbolic link")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BadInputError(f"{flag} {path}: {probe} is not writable")
    return path


def check_writable_file(path: str | os.PathLike, flag: str) -> Path:
    """Refuse, before any work, an output file path that is a folder or whose folder cannot be made or written."""
    path = Path(path)
    if path.is_dir():
        raise BadInputError(f"{flag} {path} is a folder; give a file name")
    check_writable_dir(path.parent if str(path.parent) else Path("."), flag + " folder")
    return path


def atomic_write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]],
                     columns: Sequence[str] | None = None) -> None:
    """Rows of dicts as a CSV with a header (`columns`, default the first row's keys; extra keys are left out)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns if columns is not None else rows[0]), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Load JSON, turning a missing or malformed file into a BadInputError that names it."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{what} {path} is not valid JSON: {exc}") from exc


def first_names(names: Sequence[str], limit: int = 5) -> str:
    """The first `limit` names, comma-separated, and how many more: a message names a few, never thousands."""
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_lines(path: str | os.PathLike, what: str = "file") -> list[str]:
    """Non-blank lines without surrounding whitespace (CRLF endings, a BOM and trailing spaces are common in the
    split and class files people download); an unreadable or non-UTF-8 file is a BadInputError naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise BadInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{what} {path} is not UTF-8 text: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_device(gpu_id: int | None):
    """The CUDA device `gpu_id`, or the CPU with one log line when CUDA is absent or the id is out of range."""
    import torch

    if gpu_id is None or gpu_id < 0:
        log.info("running on the CPU (--gpu_id %s)", gpu_id)
        return torch.device("cpu")
    if not torch.cuda.is_available():
        log.info("no CUDA device available: running on the CPU (--gpu_id %d ignored)", gpu_id)
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if gpu_id >= count:
        log.warning("--gpu_id %d but only %d CUDA device(s): using cuda:0", gpu_id, count)
        gpu_id = 0
    torch.cuda.set_device(gpu_id)
    return torch.device("cuda", gpu_id)


def write_failure_report(path: str | os.PathLike, failures: list[dict[str, Any]]) -> None:
    """Write the list of `{"file", "reason", ...}` entries for inputs a stage had to leave out."""
    atomic_write_json(path, sorted(failures, key=lambda f: str(f.get("file", ""))))


def log_failure_summary(failures: list[dict[str, Any]], report: str | os.PathLike, limit: int = 10) -> None:
    if not failures:
        return
    log.warning("%d input(s) left out, listed in %s:", len(failures), report)
    for item in failures[:limit]:
        log.warning("  %s: %s", item.get("file"), item.get("reason"))
    if len(failures) > limit:
        log.warning("  ... and %d more", len(failures) - limit)

"""Small helpers every stage shares: logging, atomic writes, seeding, device choice, clean CLI errors."""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import tempfile
from collections.abc import Callable
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


def run_cli(main: Callable[[Any], int | None], args: Any) -> None:
    """Run a script's main(args) and turn BadInputError into `error: ...` with exit code 2."""
    try:
        code = main(args)
    except BadInputError as exc:
        log.error("%s", exc)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(code or 0))


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    """Write to a temporary name in the same folder, then rename: a reader, or a rerun after a kill, never sees
    half a file. `durable` also fsyncs file and folder, so the file survives a power cut; stage 1 turns it off for
    its per-video records, where an fsync would make ext4 flush that video's frames too and stall the worker."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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

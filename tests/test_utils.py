"""utils: atomic writes (short temporary names, the user's umask), output locks, file-name limits, flag types."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import ROOT
from utils import (
    NAME_MAX,
    BadInputError,
    OutputLock,
    atomic_write_json,
    atomic_write_text,
    check_writable_dir,
    check_writable_file,
    error_line,
    first_names,
    fit_name,
    float_in,
    positive_int,
    probability,
)


def test_fit_name_keeps_short_names_and_cuts_long_ones_between_characters():
    assert fit_name("clip") == "clip"
    assert fit_name("a" * NAME_MAX) == "a" * NAME_MAX
    for name in ("a" * 300, "動" * 120, "é" * 200):
        cut = fit_name(name, 250)
        assert len(cut.encode()) <= 250 and cut.endswith(f"~{cut[-8:]}") and cut.encode().decode() == cut
        assert fit_name(name, 250) == cut  # deterministic
    assert fit_name("a" * 300 + "x", 250) != fit_name("a" * 300 + "y", 250)  # same prefix, distinct names


@pytest.mark.parametrize("name", ["a" * 250 + ".json", "動" * 80 + ".json"])
def test_atomic_write_with_a_name_at_the_limit(tmp_path, name):
    """Issue 11 item 2: the temporary name was `.<name>.<random>.tmp`, 10+ bytes longer than the name."""
    atomic_write_json(tmp_path / name, {"x": 1})
    assert (tmp_path / name).read_text() == '{\n "x": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_keep_the_umask(tmp_path, umask):
    """Issue 11 item 10: mkstemp made every atomically written file 0600."""
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_text(tmp_path / "a.txt", "y")  # replacing keeps it too
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


HOLD = """
import sys, time
from utils import OutputLock
lock = OutputLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_output_lock_refuses_a_second_holder_and_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BadInputError, match=f"in use by another run \\(pid {holder.pid}"):
            OutputLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no clean-up runs, the kernel drops the lock
        holder.wait()
    with OutputLock(tmp_path) as lock:
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n" and lock.fd is not None
    assert (tmp_path / ".lock").read_text() == ""  # an idle lock file is empty


def test_lock_in_one_process_is_exclusive(tmp_path):
    with OutputLock(tmp_path, what="run folder"), pytest.raises(BadInputError, match="run folder"):
        OutputLock(tmp_path, what="run folder").acquire()


def test_shared_holders_coexist_and_exclude_an_exclusive_one(tmp_path):
    with OutputLock(tmp_path, shared=True), OutputLock(tmp_path, shared=True):
        assert (tmp_path / ".lock").read_text() == ""  # shared holders write no pid
        with pytest.raises(BadInputError, match="shard runs hold it shared"):
            OutputLock(tmp_path).acquire()
    with OutputLock(tmp_path), pytest.raises(BadInputError, match=f"pid {os.getpid()}"):
        OutputLock(tmp_path, shared=True).acquire()


def test_writable_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInputError, match="-o .* is a file"):
        check_writable_dir(tmp_path / "file", "-o")
    with pytest.raises(BadInputError, match="lies under .*file, which is a file"):
        check_writable_dir(tmp_path / "file" / "a" / "b", "-o")
    assert check_writable_dir(tmp_path / "new" / "deeper", "-o") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # nothing is created
    with pytest.raises(BadInputError, match="--json .* is a folder"):
        check_writable_file(tmp_path, "--json")
    with pytest.raises(BadInputError, match="--json folder"):
        check_writable_file(tmp_path / "file" / "x.json", "--json")
    check_writable_file(tmp_path / "new" / "x.json", "--json")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(BadInputError, match="not writable"):
            check_writable_dir(locked / "out", "-o")
    finally:
        locked.chmod(0o755)


def test_flag_types():
    p = argparse.ArgumentParser(exit_on_error=False)
    p.add_argument("-bs", "--batch_size", type=positive_int)
    p.add_argument("--lr", type=float_in(0.0, low_open=True))
    p.add_argument("--dropout", type=probability)
    assert p.parse_args(["-bs", "3", "--lr", "1e-4", "--dropout", "0"]).batch_size == 3
    for argv, words in ((["-bs", "0"], "must be >= 1, got 0"), (["--batch_size", "x"], "expected an integer"),
                        (["--lr", "nan"], "finite number > 0"), (["--lr", "-1"], "finite number > 0"),
                        (["--lr", "inf"], "finite"), (["--dropout", "1"], r"in \[0, 1\)"),
                        (["--dropout", "1.5"], r"in \[0, 1\)")):
        with pytest.raises(argparse.ArgumentError, match=words):
            p.parse_args(argv)


def test_lock_blocks_for_no_time(tmp_path):
    with OutputLock(tmp_path):
        start = time.monotonic()
        with pytest.raises(BadInputError):
            OutputLock(tmp_path).acquire()
        assert time.monotonic() - start < 1


class _Failing(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        raise BadInputError(f"no readable frame in video {i}")


def test_error_from_a_dataloader_worker_is_one_line():
    """A BadInputError raised in a DataLoader worker comes back with the worker's traceback in its message; the
    CLI shows only the original line."""
    loader = torch.utils.data.DataLoader(_Failing(), num_workers=1)
    with pytest.raises(BadInputError) as exc:
        next(iter(loader))
    assert "Traceback" in str(exc.value)
    assert error_line(exc.value) == "no readable frame in video 0"
    assert error_line(BadInputError("plain")) == "plain"


def test_first_names_lists_a_few_and_counts_the_rest():
    assert first_names(["a", "b"]) == "a, b"
    assert first_names([f"v{i}" for i in range(12)], 3) == "v0, v1, v2, ... (9 more)"

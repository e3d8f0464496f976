"""workpool.run_isolated: a task that raises, kills its worker or hangs is that task's outcome, never the run's."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time

import pytest

from workpool import _alive, death_reason, run_isolated


def task(x):
    """Module-level so spawned workers can import it: ("ok", n) -> n * n, other kinds act out a fault."""
    kind, n = x
    if kind == "raise":
        raise ValueError(f"bad {n}")
    if kind == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    if kind == "exit":
        os._exit(7)
    if kind == "slow_exit":  # the reply pipe closes before the process can be reaped, as it may in any exit
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                    os.close(int(fd))
        time.sleep(0.3)
        os._exit(5)
    if kind == "hang":
        time.sleep(3600)
    if kind == "unpicklable":
        return lambda: n
    if kind == "env":
        return os.environ.get("WORKPOOL_TEST_VALUE")
    if kind == "parent":
        return os.getppid()
    if kind == "report_then_hang":  # n is a file: this worker's pid and its parent's, then sleep until killed
        with open(n, "w") as f:
            f.write(f"{os.getpid()} {os.getppid()}\n")
        time.sleep(3600)
    return n * n


def outcomes(tasks, workers=2, timeout=None):
    return {o.index: o for o in run_isolated(task, tasks, workers, timeout)}


@pytest.mark.parametrize("workers", [1, 2])
def test_every_fault_is_its_own_tasks_outcome(workers):
    tasks = [("ok", 1), ("raise", 2), ("segfault", 3), ("ok", 4), ("exit", 5), ("unpicklable", 6), ("ok", 7)]
    got = outcomes(tasks, workers)
    assert sorted(got) == list(range(len(tasks)))
    assert [got[i].result for i in (0, 3, 6)] == [1, 16, 49] and all(got[i].ok for i in (0, 3, 6))
    assert got[1].kind == "error" and got[1].error == "ValueError: bad 2" and "Traceback" in got[1].traceback
    assert got[2].kind == "died" and "SIGSEGV" in got[2].error
    assert got[4].kind == "died" and "exited with code 7" in got[4].error
    assert got[5].kind == "error" and "cannot be sent back" in got[5].error


def test_a_task_past_the_timeout_is_killed_and_the_rest_run():
    start = time.monotonic()
    got = outcomes([("hang", 0), ("ok", 2), ("ok", 3)], workers=1, timeout=2)
    assert time.monotonic() - start < 30
    assert got[0].kind == "timeout" and "2 s" in got[0].error
    assert got[1].result == 4 and got[2].result == 9


def test_closing_early_stops_every_worker():
    before = {p.pid for p in multiprocessing.active_children()}  # other tests' children are not the pool's
    gen = run_isolated(task, [("ok", 1), ("hang", 2), ("hang", 3)], 3)
    first = next(gen)
    assert first.ok
    pool = [p for p in multiprocessing.active_children() if p.pid not in before]
    assert len(pool) == 3
    gen.close()
    for proc in pool:
        proc.join(10)
        assert not proc.is_alive(), f"worker {proc.pid} still alive"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds the pipe through /proc")
def test_a_worker_whose_pipe_closes_before_it_exits_is_named_by_its_exit():
    """Its reply pipe hits EOF a moment before the process can be reaped: the outcome still says how it died
    (a stage-1 worker's os._exit was once reported as "its reply could not be read" in a loaded full suite)."""
    got = outcomes([("slow_exit", 0), ("ok", 3)], workers=1)
    assert got[0].kind == "died" and got[0].error == "its worker process exited with code 5"
    assert got[1].result == 9


def test_death_reason_words():
    assert "SIGKILL" in death_reason(-9) and "out of memory" in death_reason(-9)
    assert death_reason(3) == "its worker process exited with code 3"


def test_workers_see_the_parents_environment_as_it_is_when_they_start(monkeypatch):
    """The fork server keeps the environment it started with; a worker takes the parent's current one (stage 1's
    fault injection and any setting a caller exports between runs depend on it)."""
    list(run_isolated(task, [("ok", 1)], 1))  # the fork server is running now, without the variable
    monkeypatch.setenv("WORKPOOL_TEST_VALUE", "set later")
    got = outcomes([("env", 0)], workers=1)
    assert got[0].result == "set later"


def test_workers_and_their_replacements_are_forks_of_one_server():
    """Workers come from a fork server (which imported the task's module once), not from this process: a
    replacement for a worker that died is forked by the same server, not started as a fresh interpreter."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork server on this platform")
    got = outcomes([("parent", 0), ("segfault", 0), ("parent", 0)], workers=1)
    server = got[0].result
    assert server != os.getpid() and got[1].kind == "died" and got[2].result == server


RUN_THEN_HANG = """
import sys
sys.path[:0] = [{root!r}, {tests!r}]
from test_workpool import task
from workpool import run_isolated
list(run_isolated(task, [("report_then_hang", {report!r})], 1))
"""


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="stops the fork server with SIGSTOP")
def test_a_busy_worker_dies_with_its_run_even_while_the_fork_server_lives(tmp_path):
    """A SIGKILLed run's busy worker dies at once, not when the fork server gets round to exiting: the server is
    held stopped here, and the worker must still go (an orphan that outlived its stage-1 run went on writing into the
    temporary folder that the resumed run was clearing, in a loaded CI run)."""
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    report = tmp_path / "worker.pid"
    script = RUN_THEN_HANG.format(root=str(here.parent), tests=str(here), report=str(report))
    run = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60
    while not (report.exists() and report.read_text().endswith("\n")) and time.monotonic() < deadline:
        assert run.poll() is None, "the run exited before its worker started"
        time.sleep(0.02)
    worker, server = map(int, report.read_text().split())
    stopped = server != run.pid
    try:
        if stopped:
            os.kill(server, signal.SIGSTOP)
        run.kill()
        run.wait()
        deadline = time.monotonic() + 10
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _running(worker), "the worker outlived its run"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker, signal.SIGKILL)
        if stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server, signal.SIGKILL)
                os.kill(server, signal.SIGCONT)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a worker's parent, the fork server, reaps it only once it runs again)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        return _alive(pid)


"""Run one function over many tasks in worker processes, each task isolated from the others.

A task that raises, kills its worker (a segfault in a codec, an out-of-memory kill, `os._exit`) or runs past a
time limit becomes that task's failed `Outcome`, and the run goes on with a fresh worker. Each worker holds one
task at a time, so a dead worker names exactly one task; the parent waits on every worker's result pipe and
process sentinel at once (`multiprocessing.connection.wait`), so nothing can block on a worker that is gone
(`multiprocessing.Pool` hangs in `terminate()` when its workers die; `ProcessPoolExecutor` fails every task in
flight when one worker dies). A worker that does not answer a stop within a second is killed, so shutdown cannot
hang either.

Workers are forked from a fork server (multiprocessing's "forkserver" start method; "spawn" where it is missing):
a clean single-threaded process, not a fork of a parent whose OpenCV or torch thread pools would not survive fork,
that imports the parent's main script and the task function's module once. Each worker is then a fork of it that
pays no interpreter start or imports of its own: spawning every worker cost each one about 0.4 s of CPU (Python's
start and the imports of prepare_ucf101, OpenCV, PyAV, NumPy), on the critical path of a short run, and again for
every replacement of a dead worker. A worker takes the parent's environment as it is when the worker starts (the
server's was fixed when it started), like a spawned one. Workers start with SIGINT ignored (Ctrl-C is the parent's
to report, in one line), and die with the parent the moment it dies, even mid-task: each worker holds the read end of
a pipe whose only write end is the parent's, and a thread in the worker kills it when that pipe hits EOF (the kernel
closes it when the parent dies, by SIGKILL too). Waiting for the fork server to exit first (Linux PR_SET_PDEATHSIG,
which the worker sets as well) took 0.15 s on a quiet machine and longer under load: long enough for a killed stage-1
run's orphan to go on writing into the temporary folder that the resumed run was clearing.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

log = logging.getLogger("actionbert.workpool")

_PR_SET_PDEATHSIG = 1
_STOP_GRACE_S = 1.0


@dataclass(frozen=True)
class Outcome:
    """What became of task `index`: `ok` with its `result`, or `kind` "error" (it raised; `error` is
    "Type: message" and `traceback` the worker's), "died" (its worker died; `error` says how) or "timeout"."""

    index: int
    ok: bool
    result: Any = None
    kind: str = "ok"
    error: str = ""
    traceback: str = ""


def death_reason(exitcode: int | None) -> str:
    """A worker's exit code in words: the signal that killed it (and what that usually means), or the code."""
    if exitcode is None:
        return "its worker process vanished"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {"SIGSEGV": "a crash in native code, e.g. a codec", "SIGKILL": "killed, e.g. out of memory",
                "SIGBUS": "a crash in native code", "SIGABRT": "aborted by native code"}.get(name)
        return f"its worker process died of {name}" + (f" ({hint})" if hint else "")
    return f"its worker process exited with code {exitcode}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but not ours to signal
        return True
    return True


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent (the fork server, or the run's process when spawned) dies;
    elsewhere the idle loop polls the run's pid."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if not _alive(parent_pid):  # the run died before prctl took effect (the server exits with it)
        os._exit(0)


def _watch_lifeline(lifeline: Connection) -> None:
    """Block until the parent's end of the lifeline closes (nothing is ever sent on it), then die at once: no
    finalisation, no half-written file finished after the run that asked for it is gone."""
    with contextlib.suppress(Exception):
        lifeline.recv()
    os.kill(os.getpid(), signal.SIGKILL)


def _worker_main(conn: Connection, lifeline: Connection, fn: Callable[[Any], Any],
                 initializer: Callable[..., None] | None, initargs: tuple, parent_pid: int,
                 environ: dict[str, str]) -> None:
    """Serve tasks one at a time: (index, task) in, (index, ok, result | (error, traceback)) out; None stops."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_lifeline, args=(lifeline,), name="lifeline", daemon=True).start()
    _die_with_parent(parent_pid)
    if os.environ != environ:  # the fork server's environment is the parent's when the server started
        os.environ.clear()
        os.environ.update(environ)
    if initializer is not None:
        initializer(*initargs)
    while True:
        while not conn.poll(1.0):
            if not _alive(parent_pid):
                return
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        index, task = msg
        try:
            reply = (index, True, fn(task))
        except Exception as exc:  # the point of the pool: any error is the task's, never the run's
            reply = (index, False, (f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        try:
            conn.send(reply)
        except (BrokenPipeError, EOFError):
            return
        except Exception as exc:  # an unpicklable result
            conn.send((index, False, (f"result cannot be sent back: {type(exc).__name__}: {exc}", "")))


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: Connection
    lifeline: Connection  # the write end: closing it (or the parent's death) kills the worker
    index: int | None = None  # the task it holds
    started: float = 0.0


def _context(fn: Callable[[Any], Any]) -> multiprocessing.context.BaseContext:
    """The fork server's context, its preload the main script and `fn`'s module (a server already running, e.g.
    started by an earlier pool of this process, keeps its own: the workers then import what it lacks); spawn where
    there is no fork server (Windows)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    module = getattr(fn, "__module__", None)
    ctx.set_forkserver_preload(["__main__"] + ([module] if module and module != "__main__" else []))
    return ctx


class _Pool:
    def __init__(self, fn, workers, initializer, initargs) -> None:
        self.ctx = _context(fn)
        self.fn, self.size, self.initializer, self.initargs = fn, workers, initializer, initargs
        self.workers: list[_Worker] = []

    def start_worker(self) -> _Worker:
        parent, child = self.ctx.Pipe(duplex=True)
        life_r, life_w = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_worker_main, args=(child, life_r, self.fn, self.initializer, self.initargs,
                                                           os.getpid(), dict(os.environ)), daemon=True)
        # SIG_IGN is inherited through exec: a Ctrl-C during the worker's start-up cannot print a traceback.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            proc.start()
        finally:
            signal.signal(signal.SIGINT, old)
        child.close()
        life_r.close()
        worker = _Worker(proc, parent, life_w)
        self.workers.append(worker)
        return worker

    def discard(self, worker: _Worker, kill: bool = False) -> None:
        if kill and worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.conn.close()
        worker.lifeline.close()
        self.workers.remove(worker)

    def shutdown(self) -> None:
        """Stop idle workers politely, kill busy or deaf ones; never blocks for long."""
        for w in self.workers:
            if w.index is None:
                with contextlib.suppress(OSError):
                    w.conn.send(None)
            elif w.process.is_alive():
                w.process.kill()
        deadline = time.monotonic() + _STOP_GRACE_S
        for w in list(self.workers):
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            w.conn.close()
            w.lifeline.close()
        self.workers.clear()


def run_isolated(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    workers: int,
    timeout: float | None = None,
    initializer: Callable[..., None] | None = None,
    initargs: tuple = (),
) -> Iterator[Outcome]:
    """Yield one Outcome per task, in completion order, running `fn(task)` in up to `workers` processes.

    `fn`, `initializer` and the tasks must be picklable (module-level functions, plain data). `timeout` (seconds,
    None or 0 = none) bounds one task's wall time; a worker past it is killed. Closing the generator early (or
    Ctrl-C in the parent) stops every worker."""
    pool = _Pool(fn, max(1, int(workers)), initializer, initargs)
    pending = deque(enumerate(tasks))
    limit = timeout if timeout and timeout > 0 else None
    try:
        while pending or any(w.index is not None for w in pool.workers):
            while pending and (len(pool.workers) < pool.size or any(w.index is None for w in pool.workers)):
                worker = next((w for w in pool.workers if w.index is None), None) or pool.start_worker()
                index, task = pending.popleft()
                try:
                    worker.conn.send((index, task))
                except (BrokenPipeError, OSError):  # died while idle: the task goes to a fresh worker
                    pending.appendleft((index, task))
                    pool.discard(worker, kill=True)
                    continue
                worker.index, worker.started = index, time.monotonic()
            busy = [w for w in pool.workers if w.index is not None]
            wait_s = None
            if limit is not None:
                wait_s = max(0.0, min(w.started + limit for w in busy) - time.monotonic())
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy], wait_s))
            now = time.monotonic()
            for w in busy:
                index = w.index
                if w.conn in ready or (w.process.sentinel in ready and w.conn.poll()):
                    outcome = _receive(w)
                    if outcome is not None:
                        w.index = None
                        yield outcome
                        continue
                    # No whole reply: the worker died (its pipe closes a moment before it can be reaped, so give
                    # it that moment to tell how), or it sent something that cannot be read.
                    w.process.join(_STOP_GRACE_S)
                    alive = w.process.is_alive()
                    pool.discard(w, kill=True)
                    error = "its reply could not be read" if alive else death_reason(w.process.exitcode)
                    yield Outcome(index, False, kind="died", error=error)
                elif w.process.sentinel in ready or not w.process.is_alive():
                    pool.discard(w)
                    yield Outcome(index, False, kind="died", error=death_reason(w.process.exitcode))
                elif limit is not None and now - w.started >= limit:
                    pool.discard(w, kill=True)
                    yield Outcome(index, False, kind="timeout", error=f"took longer than {limit:g} s")
    finally:
        pool.shutdown()


def _receive(worker: _Worker) -> Outcome | None:
    """The worker's reply, or None when the pipe holds no whole reply (the worker died while sending)."""
    try:
        index, ok, payload = worker.conn.recv()
    except Exception:  # EOF, or a torn pickle, which can raise almost anything
        return None
    if ok:
        return Outcome(index, True, payload)
    error, tb = payload
    return Outcome(index, False, kind="error", error=error, traceback=tb)

"""torch.distributed set-up shared by prepare_data.py and main.py (torchrun, NCCL on GPUs, gloo on the CPU).

One rank's failure stops every rank with a message, never a hang: `rank_group()` publishes a failing rank's
message in the job's key-value store (the TCPStore that torchrun's rendezvous made) and leaves without tearing
down the process group (which could wait on peers stuck in a collective); `barrier()` waits on that store, so a
peer waiting there sees the failure at once and stops with `PeerFailedError`, and a peer inside a collective
whose partner left gets the backend's error turned into the same one-line message.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils import BadInputError, OutputLock

log = logging.getLogger("actionbert")

FAILED_KEY = "actionbert/failed"
_ACK_KEY = "actionbert/failed_ack"
_POLL_S = 0.02
_STORE_HOST_WAIT_S = 3.0  # how long rank 0 (the store's host) keeps it up for peers to read a failure


class PeerFailedError(BadInputError):
    """This rank stops because another rank failed: one line naming that rank and its message."""


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info("distributed: rank %d of %d (%s)", rank, world_size, backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank)


def _store() -> dist.Store:
    from torch.distributed.distributed_c10d import _get_default_store  # the store every rank already shares

    return _get_default_store()


def published_failure(timeout_s: float = 1.0) -> str | None:
    """The failure message a rank published, None when none did; raises when the store is unreachable."""
    store = _store()
    store.set_timeout(datetime.timedelta(seconds=timeout_s))
    if not store.check([FAILED_KEY]):
        return None
    return store.get(FAILED_KEY).decode("utf-8", "replace")


def _publish_failure(info: DistInfo, exc: BaseException) -> None:
    """Tell every rank that this one failed (the first failure wins), best effort."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        text = "interrupted"
    with contextlib.suppress(Exception):
        store = _store()  # held: it outlives the process group (rank 0 hosts it)
        store.compare_set(FAILED_KEY, "", f"rank {info.rank} failed: {text}")
        _release_peers()
        if info.rank == 0:  # the store lives in this process: give peers a moment to read it
            deadline = time.monotonic() + _STORE_HOST_WAIT_S
            while time.monotonic() < deadline and store.add(_ACK_KEY, 0) < info.world_size - 1:
                time.sleep(_POLL_S)


def _release_peers() -> None:
    """End this rank's part in the process group so that a peer inside a collective with it fails now instead of
    at the backend's timeout: gloo's pairs close on destroy; NCCL's communicators are aborted where torch offers
    it (else torchrun's agent stops the peers once this process exits)."""
    c10d = dist.distributed_c10d
    if dist.get_backend() == "gloo":
        dist.destroy_process_group()
    elif hasattr(c10d, "_abort_process_group"):
        c10d._abort_process_group()


def _as_peer_failure(info: DistInfo, exc: BaseException) -> PeerFailedError | None:
    """The peer's failure that `exc` comes from, if a peer published one (or the store is gone with its host)."""
    try:
        failure = published_failure()
    except Exception:  # the store went with rank 0: a collective error here is rank 0's doing
        if isinstance(exc, (RuntimeError, dist.DistError)) and info.rank != 0:
            return PeerFailedError(f"stopped: another rank failed or stopped ({type(exc).__name__} in a "
                                   "collective); its own message says why")
        return None
    if failure is None or failure.startswith(f"rank {info.rank} "):
        return None
    with contextlib.suppress(Exception):
        _store().add(_ACK_KEY, 1)
    return PeerFailedError(f"stopped because {failure}")


@contextlib.contextmanager
def rank_group(backend: str | None = None) -> Iterator[DistInfo]:
    """init_distributed() for the block, and one rank's exception stops every rank (see the module docstring).

    A failing rank publishes its message, then re-raises without destroying the process group; a rank whose
    error comes from a peer's failure raises PeerFailedError naming it instead of a backend traceback."""
    info = init_distributed(backend)
    try:
        yield info
    except BaseException as exc:
        if not info.enabled or isinstance(exc, PeerFailedError):
            raise
        peer = _as_peer_failure(info, exc)
        if peer is not None:
            raise peer from None
        _publish_failure(info, exc)
        raise
    cleanup(info)


def main_rank_lock(info: DistInfo, folder: str | os.PathLike, name: str = ".lock",
                   what: str = "output folder") -> contextlib.AbstractContextManager:
    """`utils.OutputLock` on `folder` held by rank 0 for the block (the other ranks run under it): one run per
    output folder, whatever its number of processes. Creates the folder."""
    return OutputLock(folder, name, what) if info.is_main else contextlib.nullcontext()


def barrier(info: DistInfo) -> None:
    """Wait for every rank; a failure published by any rank ends the wait with PeerFailedError.

    Waits on the store rather than in `dist.barrier()`, which would block until the backend's timeout when a
    peer has failed without leaving (NCCL). Each rank counts its own calls in the store, so the n-th barrier of
    every rank meets on one key."""
    if not info.enabled:
        return
    store = _store()
    key = f"actionbert/barrier/{store.add(f'actionbert/barrier_calls/{info.rank}', 1)}"
    store.add(key, 1)
    while store.add(key, 0) < info.world_size:
        if store.check([FAILED_KEY]):
            failure = store.get(FAILED_KEY).decode("utf-8", "replace")
            store.add(_ACK_KEY, 1)
            raise PeerFailedError(f"stopped because {failure}")
        time.sleep(_POLL_S)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over ranks in place (a no-op for one process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj, info: DistInfo) -> list:
    """Gather one picklable object from every rank, in rank order."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

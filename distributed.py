"""torch.distributed set-up shared by prepare_data.py and main.py (torchrun, NCCL on GPUs, gloo on the CPU).

Every device decision of a distributed run is made here, once, so callers never think about it:
- each rank is bound to its own GPU (`LOCAL_RANK`) before the process group exists, so NCCL, object collectives
  and every later CUDA call of the rank use that GPU and never `cuda:0`;
- on GPUs the process group has two backends (`process_group_backend`): NCCL for CUDA tensors (DDP's gradients)
  and gloo for CPU tensors and pickled objects (metric sums, feature statistics, RNG states), which NCCL refuses.
  The callers' CPU tensors therefore go over gloo as they are, with no device copies.

One rank's failure stops every rank with a message, never a hang: `rank_group()` publishes a failing rank's
message in the job's key-value store (the TCPStore that torchrun's rendezvous made) and releases its part of the
process group (`_release_peers`); `barrier()` waits on that store, so a peer waiting there sees the failure at once
and stops with `PeerFailedError`, and a peer inside a collective whose partner left gets the backend's error turned
into the same one-line message.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from utils import BadInputError, OutputLock, resolve_device

log = logging.getLogger("actionbert")

FAILED_KEY = "actionbert/failed"
_ACK_KEY = "actionbert/failed_ack"
_POLL_S = 0.02
_STORE_HOST_WAIT_S = 3.0  # how long rank 0 (the store's host) keeps it up for peers to read a failure


class PeerFailedError(BadInputError):
    """This rank stops because another rank failed: one line naming that rank and its message."""


def process_group_backend(cuda: bool, cuda_backend: str = "nccl") -> str:
    """The backend string of the process group: CPU tensors and objects always have gloo; CUDA tensors get
    `cuda_backend` (NCCL) on GPUs. NCCL alone would refuse every CPU collective the stages run."""
    return f"cpu:gloo,cuda:{cuda_backend}" if cuda else "gloo"


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    # the rank's own device under torchrun (cuda:LOCAL_RANK, or the CPU); unused for a single process
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # in a process group: launched by torchrun (also with one process, so `--nproc_per_node=1` runs the same
    # distributed path, DDP and collectives included, as a multi-GPU job)
    enabled: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def local_cuda_device(local_rank: int) -> torch.device:
    """cuda:LOCAL_RANK, refusing more processes on a node than it has visible GPUs (two ranks sharing a GPU
    deadlock NCCL)."""
    count = torch.cuda.device_count()
    if not 0 <= local_rank < count:
        raise BadInputError(
            f"torchrun started local rank {local_rank} but only {count} CUDA device(s) are visible on this node: "
            f"use --nproc_per_node {count} or fewer (one process per GPU; CUDA_VISIBLE_DEVICES picks which)"
        )
    return torch.device("cuda", local_rank)


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group when launched by torchrun (any WORLD_SIZE) or with WORLD_SIZE > 1 (another
    launcher); otherwise a single process.

    With CUDA, the rank is bound to cuda:LOCAL_RANK first (`set_device`, then `device_id` so NCCL forms its
    communicator on that GPU at once). `backend` overrides `process_group_backend` (tests pass a stand-in)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cpu")
    if cuda:
        device = local_cuda_device(local_rank)
        torch.cuda.set_device(device)
    if backend is None:
        backend = process_group_backend(cuda)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, device_id=device if cuda else None)
    log.info("distributed: rank %d of %d (local rank %d) on %s, backend %s", rank, world_size, local_rank, device,
             backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device, enabled=True)


def rank_device(info: DistInfo, gpu_id: int | None) -> torch.device:
    """The device this process computes on: its own GPU under torchrun (the GPU flag is ignored, since every rank
    would otherwise pick the same one), else `--gpu_id` resolved as utils.resolve_device does."""
    if not info.enabled:
        return resolve_device(gpu_id)
    if info.device.type == "cuda" and info.is_main:
        log.info("torchrun: each rank runs on cuda:LOCAL_RANK (the GPU flag, %s, is ignored)", gpu_id)
    return info.device


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


def group_backends(backend: str) -> set[str]:
    """The backends a process group's backend string names: 'gloo' -> {'gloo'}, and the two-backend group of GPUs
    ('cpu:gloo,cuda:nccl', what `dist.get_backend()` returns for it) -> {'gloo', 'nccl'}."""
    return {part.rpartition(":")[2].strip() for part in backend.lower().split(",")}


def _release_peers() -> None:
    """End this rank's part in the process group so that a peer inside a collective with it fails now instead of
    at the backend's timeout. A gloo-only group is destroyed (its pairs close). A group with NCCL in it, alone or
    beside gloo, is aborted where torch offers it, never destroyed (destroying flushes NCCL's pending work, which
    may wait on the peers): the abort ends the NCCL communicators and drops the group, whose gloo pairs then close
    as on destroy. Without the abort, torchrun's agent stops the peers once this process exits.

    A module that still holds the group (DDP, inside the failing frames) keeps its gloo pairs open until this
    process exits; a peer in a gloo collective then stops at that moment instead."""
    c10d = dist.distributed_c10d
    if group_backends(dist.get_backend()) == {"gloo"}:
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

    A failing rank publishes its message, releases its part of the process group (`_release_peers`: never a
    graceful teardown, which could wait on peers stuck in a collective) and re-raises; a rank whose error comes
    from a peer's failure raises PeerFailedError naming it instead of a backend traceback."""
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
    """Sum a tensor over ranks in place (a no-op for one process). CPU tensors go over gloo, CUDA ones NCCL."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj, info: DistInfo) -> list:
    """Gather one picklable object from every rank, in rank order (over gloo: objects are CPU memory)."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()

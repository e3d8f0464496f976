"""distributed.py: every rank bound to its own GPU before the process group, and collectives that never hand a
CPU tensor to a CUDA-only backend (NCCL refuses them); one rank's failure stops every rank with a message, never a
hang. Proven on the CPU: two gloo processes run the stages' collectives through the GPU path's backend string with
NCCL replaced by a stand-in registered for CUDA only."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import distributed
from distributed import DistInfo, group_backends, init_distributed, process_group_backend, rank_device
from tests.conftest import ROOT
from utils import BadInputError

FAKE_NCCL = "fakenccl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cuda_only_backend(store, rank, size, timeout):
    """A stand-in for NCCL: registered for the CUDA device type only, so torch refuses to give it a CPU tensor
    ("No backend type associated with device type cpu"), exactly as a real NCCL group does."""
    return dist.ProcessGroupGloo(store, rank, size, timeout)


def _rank_worker(rank: int, world: int, port: int, data_dir: str, out_dir: str) -> None:
    """One rank: join through the GPU path's backend string, then run what the stages reduce and gather."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import routes
    from dataset import load_split_info
    from metrics import MetricAccumulator

    if FAKE_NCCL not in dist.Backend.backend_list:
        dist.Backend.register_backend(FAKE_NCCL, _cuda_only_backend, devices=["cuda"])
    info = init_distributed(process_group_backend(cuda=True, cuda_backend=FAKE_NCCL))
    result: dict = {"backend": dist.get_backend_config()}
    try:
        acc = MetricAccumulator(num_classes=3)
        logits = torch.eye(3)[[rank, (rank + 1) % 3]] * 5.0
        acc.update(logits, torch.tensor([rank, rank]), loss_sum=1.0 + rank)
        result["metrics"] = acc.reduce(info).compute()
        mean, std = routes.feature_mean_std(load_split_info(data_dir, "train"), info)
        result["mean"], result["std"] = mean.tolist(), std.tolist()
        result["gathered"] = distributed.all_gather_objects({"rank": rank}, info)
        distributed.barrier(info)
        # the stand-in really refuses CPU tensors: a group of it alone fails where NCCL alone would
        cuda_only = dist.new_group(backend=FAKE_NCCL)
        try:
            dist.all_reduce(torch.ones(1), group=cuda_only)
            result["cuda_only_refused"] = False
        except RuntimeError as exc:
            result["cuda_only_refused"] = "cpu" in str(exc).lower()
    finally:
        distributed.cleanup(info)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump(result, fh)


@pytest.mark.slow
def test_collectives_through_the_gpu_backend_string_never_hand_cpu_tensors_to_nccl(tmp_path):
    from dataset import feature_stats, load_split_info, stats_from_sums
    from tests.synthetic import make_order_task, write_embedding_split

    videos, labels = make_order_task(9, dim=4, seed=0)
    write_embedding_split(tmp_path / "data", "train", videos, labels)
    out = tmp_path / "out"
    out.mkdir()
    mp.start_processes(_rank_worker, args=(2, _free_port(), str(tmp_path / "data"), str(out)), nprocs=2,
                       start_method="spawn")
    results = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    single_mean, single_std = stats_from_sums(*feature_stats(load_split_info(tmp_path / "data", "train")))
    for res in results:
        assert res["backend"] == f"cpu:gloo,cuda:{FAKE_NCCL}"
        assert res["cuda_only_refused"] is True
        m = res["metrics"]
        # rank 0: samples of class 0 predicted 0 and 1; rank 1: class 1 predicted 1 and 2 -> 2 of 4 right
        assert m["count"] == 4 and m["top1"] == pytest.approx(0.5) and m["loss"] == pytest.approx(3.0 / 4)
        np.testing.assert_allclose(res["mean"], single_mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(res["std"], single_std, rtol=1e-5, atol=1e-6)
        assert res["gathered"] == [{"rank": 0}, {"rank": 1}]


def test_gpu_path_uses_gloo_for_cpu_tensors_and_nccl_for_cuda_ones():
    assert process_group_backend(cuda=True) == "cpu:gloo,cuda:nccl"
    assert process_group_backend(cuda=False) == "gloo"


def _fake_cuda(monkeypatch, count: int, calls: list) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", torch.device(d))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group",
                        lambda **kw: calls.append(("init_process_group", kw["backend"], kw.get("device_id"))))


def test_each_rank_is_bound_to_its_local_gpu_before_the_process_group(monkeypatch):
    calls: list = []
    _fake_cuda(monkeypatch, 4, calls)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "6")
    monkeypatch.setenv("LOCAL_RANK", "2")
    info = init_distributed()
    gpu = torch.device("cuda", 2)
    assert calls == [("set_device", gpu), ("init_process_group", "cpu:gloo,cuda:nccl", gpu)]
    assert (info.rank, info.world_size, info.local_rank, info.device, info.enabled) == (6, 8, 2, gpu, True)
    assert rank_device(info, gpu_id=0) == gpu  # the GPU flag never sends every rank to the same device


def test_more_ranks_on_a_node_than_gpus_is_a_clear_error(monkeypatch):
    _fake_cuda(monkeypatch, 2, [])
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(BadInputError, match="local rank 2 but only 2 CUDA device"):
        init_distributed()


def test_torchrun_with_one_process_still_runs_the_distributed_path(monkeypatch):
    calls: list = []
    _fake_cuda(monkeypatch, 1, calls)
    for key, value in (("WORLD_SIZE", "1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("TORCHELASTIC_RUN_ID", "x")):
        monkeypatch.setenv(key, value)
    info = init_distributed()
    assert info.enabled and info.device == torch.device("cuda", 0)
    assert calls[-1] == ("init_process_group", "cpu:gloo,cuda:nccl", torch.device("cuda", 0))


def test_a_single_process_uses_the_gpu_flag(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    info = init_distributed()
    assert info == DistInfo() and not info.enabled
    assert rank_device(info, gpu_id=0) == torch.device("cpu")  # no CUDA in the tests: the CPU, one log line


RANK_SCRIPT = """
import os, sys
import torch
import torch.distributed as dist
from distributed import all_reduce_sum, barrier, rank_group
from utils import BadInputError, run_cli, setup_logging

if os.environ["BACKEND"] != "gloo":  # the GPU path's string, NCCL replaced by a CUDA-only gloo stand-in
    dist.Backend.register_backend("fakenccl", lambda store, rank, size, timeout: dist.ProcessGroupGloo(
        store, rank, size, timeout), devices=["cuda"])

def main(args):
    setup_logging()
    with rank_group(os.environ["BACKEND"]) as info:
        barrier(info)
        if info.rank == int(os.environ["FAIL_RANK"]):
            raise BadInputError(f"bad input seen by rank {info.rank}")
        if os.environ["WAIT_IN"] == "barrier":
            barrier(info)
        else:
            all_reduce_sum(torch.ones(3), info)
        return 0

run_cli(main, None)
"""


@pytest.mark.slow
@pytest.mark.parametrize(("fail_rank", "wait_in", "backend"), [
    (1, "barrier", "gloo"), (0, "collective", "gloo"), (0, "collective", "cpu:gloo,cuda:fakenccl")])
def test_one_failing_rank_stops_every_rank_with_a_message(fail_rank, wait_in, backend):
    """Launched without torchrun, so no agent kills the survivors: they must stop by themselves. Rank 0 (the
    store's host) failing while rank 1 sits inside an all_reduce is the hardest case, also in the two-backend
    group of GPUs (the all_reduce of a CPU tensor runs on its gloo half, which rank 0 must release)."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "FAIL_RANK": str(fail_rank), "WAIT_IN": wait_in, "BACKEND": backend, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT], cwd=ROOT, env={**env, "RANK": str(r),
                              "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=120)[0])  # a hang fails here
    finally:
        for p in procs:
            p.kill()
    for r, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 2, out
        assert "Traceback" not in out and "frame #" not in out, out
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        want = (f"error: bad input seen by rank {r}" if r == fail_rank else
                f"error: stopped because rank {fail_rank} failed: bad input seen by rank {fail_rank}")
        assert errors == [want], out


def test_group_backends_reads_the_two_backend_string():
    """`_release_peers` destroys a gloo-only group and aborts one with NCCL in it: the GPU group's string
    ('cpu:gloo,cuda:nccl', as dist.get_backend() returns it) must count as NCCL."""
    assert group_backends("gloo") == {"gloo"}
    assert group_backends(process_group_backend(cuda=False)) == {"gloo"}
    assert group_backends(process_group_backend(cuda=True)) == {"gloo", "nccl"}
    assert group_backends("nccl") == {"nccl"}

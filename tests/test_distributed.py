"""One rank's failure stops every rank with a message, never a hang (gloo, two processes on the CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT

RANK_SCRIPT = """
import os, sys
import torch
from distributed import all_reduce_sum, barrier, rank_group
from utils import BadInputError, run_cli, setup_logging

def main(args):
    setup_logging()
    with rank_group("gloo") as info:
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(("fail_rank", "wait_in"), [(1, "barrier"), (0, "collective")])
def test_one_failing_rank_stops_every_rank_with_a_message(fail_rank, wait_in):
    """Launched without torchrun, so no agent kills the survivors: they must stop by themselves. Rank 0 (the
    store's host) failing while rank 1 sits inside an all_reduce is the hardest case."""
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "FAIL_RANK": str(fail_rank), "WAIT_IN": wait_in, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
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

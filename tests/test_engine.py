"""engine.py: the learning-rate schedule both routes train with, and which heads get the frames' times."""

from __future__ import annotations

import pytest
import torch

from engine import warmup_cosine
from utils import BadInputError


def test_schedule():
    """The weight-decay groups are models.base's (tests/test_models.py), the precision flags precision.py's."""
    lrs = [warmup_cosine(s, 4, 20) for s in range(21)]
    assert lrs[0] == pytest.approx(0.25) and lrs[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False)) and lrs[20] == pytest.approx(0.0)


def test_times_go_only_to_a_head_that_uses_them_and_their_absence_is_a_clear_error():
    """engine.time_kwargs: a batch's "times" reach a --positions time head (also inside DDP's .module) and no
    other; a time head without them (a split with no fps) is refused with what to do, not a silent index code."""
    from engine import time_kwargs
    from models import build_model

    timed = build_model("attnpool", 4, 2, num_layers=2, positions="time", hidden_size=8, num_heads=2)
    plain = build_model("attnpool", 4, 2, num_layers=2, positions="sinusoidal", hidden_size=8, num_heads=2)
    batch = {"times": torch.zeros(2, 3)}
    assert set(time_kwargs(timed, batch, torch.device("cpu"))) == {"times"}
    wrapped = torch.nn.Module()
    wrapped.module = timed
    assert set(time_kwargs(wrapped, batch, torch.device("cpu"))) == {"times"}
    assert time_kwargs(plain, batch, torch.device("cpu")) == {}
    with pytest.raises(BadInputError, match="no fps recorded"):
        time_kwargs(timed, {}, torch.device("cpu"))

"""engine.py: the learning-rate schedule both routes train with."""

from __future__ import annotations

import pytest

from engine import warmup_cosine


def test_schedule():
    """The weight-decay groups are models.base's (tests/test_models.py), the precision flags precision.py's."""
    lrs = [warmup_cosine(s, 4, 20) for s in range(21)]
    assert lrs[0] == pytest.approx(0.25) and lrs[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False)) and lrs[20] == pytest.approx(0.0)

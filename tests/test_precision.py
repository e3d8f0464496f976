"""precision.py: one vocabulary and one resolution rule for main.py, prepare_data.py and predict.py."""

from __future__ import annotations

import logging

import pytest
import torch

import main
from precision import autocast, precision_from_flags, resolve_precision
from utils import BadInputError

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


def test_training_flags(caplog):
    caplog.set_level(logging.INFO, logger="actionbert")
    assert resolve_precision(precision_from_flags(None, 0), CPU, training=True) == "fp32"
    # fp16 asked without CUDA: fp32, logged
    assert resolve_precision(precision_from_flags(None, 1), CPU, training=True) == "fp32"
    assert "no CUDA device: training in fp32" in caplog.text
    assert resolve_precision(precision_from_flags(None, 1), CUDA, training=True) == "fp16"
    assert resolve_precision(precision_from_flags(None, 3), CPU, training=True) == "bf16"
    assert precision_from_flags("bf16", 0) == "bf16"  # --precision wins over --opt_lvl
    text = main.get_args_parser().format_help()
    assert "0 = fp32, 1 = fp16" in " ".join(text.split())


def test_inference_auto_and_explicit():
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", CUDA) == "fp16"
    assert resolve_precision("fp16", CPU) == "fp16"  # inference runs what was asked
    with pytest.raises(BadInputError):
        resolve_precision("fp8", CPU)


def test_autocast_context():
    x = torch.randn(4, 4)
    with autocast("fp32", CPU):
        assert (x @ x).dtype == torch.float32
    with autocast("bf16", CPU):
        assert (x @ x).dtype == torch.bfloat16

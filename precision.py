"""One precision vocabulary for every stage: fp32, fp16 and bf16 through `torch.amp`, and `auto` for inference.

- `--precision` in prepare_data.py and predict.py: auto (fp16 autocast on CUDA, fp32 on the CPU), fp32, fp16, bf16.
- main.py: `--precision {fp32,fp16,bf16}` or its apex-era alias `--opt_lvl` (0 = fp32, 1 = fp16 with a GradScaler,
  2 and 3 = bf16), resolved by `training_precision`.

`resolve_precision` is the one place that decides what runs where, and `autocast` the one context that applies it.
"""

from __future__ import annotations

import contextlib
import logging

import torch

from utils import BadInputError

log = logging.getLogger("actionbert")

PRECISIONS = ("fp32", "fp16", "bf16")
INFERENCE_PRECISIONS = ("auto", *PRECISIONS)
OPT_LVL_PRECISION = {0: "fp32", 1: "fp16", 2: "bf16", 3: "bf16"}
_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def training_precision(precision: str | None, opt_lvl: int, device: torch.device) -> str:
    """main.py's precision on `device`: --precision when given, else what --opt_lvl stands for.

    --opt_lvl's fp16 (1, the default) without CUDA runs fp32, with a log line: apex-era commands were written for
    GPUs, and CPU fp16 kernels are several times slower than fp32. An explicit --precision fp16 is honoured on the
    CPU too (resolve_precision logs that it is slow): that runs the GPU's exact fp16 step, GradScaler included,
    where there is no GPU."""
    if precision is None:
        precision = OPT_LVL_PRECISION[int(opt_lvl)]
        if precision == "fp16" and device.type != "cuda":
            log.info("--opt_lvl %d (fp16) and no CUDA device: training in fp32 (--precision fp16 runs fp16 on the "
                     "CPU anyway, slowly)", opt_lvl)
            return "fp32"
    return resolve_precision(precision, device, training=True)


def resolve_precision(requested: str, device: torch.device, training: bool = False) -> str:
    """The precision actually used on `device`: fp32, fp16 or bf16.

    auto is fp16 autocast on CUDA and fp32 on the CPU (CPU autocast is slower than fp32 for most CNNs). Training
    in fp16 on the CPU runs as asked, with a log line saying it is slow; bf16 on a GPU without it runs fp16 with a
    GradScaler. Inference runs what was asked.
    """
    if requested not in INFERENCE_PRECISIONS:
        raise BadInputError(f"--precision must be one of {', '.join(INFERENCE_PRECISIONS)}, got {requested!r}")
    cuda = device.type == "cuda"
    if requested == "auto":
        return "fp16" if cuda else "fp32"
    if requested == "fp16" and training and not cuda:
        log.info("--precision fp16 on the CPU: fp16 autocast with a GradScaler, several times slower than fp32")
    if requested == "bf16" and training and cuda and not torch.cuda.is_bf16_supported():
        log.info("this GPU has no bf16 support: using fp16 with a GradScaler")
        return "fp16"
    return requested


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast to fp16/bf16 on `device` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AMP_DTYPES[precision])

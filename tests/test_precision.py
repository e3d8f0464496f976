"""precision.py: one vocabulary and one resolution rule for main.py, prepare_data.py and predict.py; and mixed
precision exercised on the CPU: the exact fp16 step a GPU takes (CPU autocast fp16 + GradScaler("cpu")), bf16
training and evaluation through main.py."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

import engine
import main
from checkpoint import load_checkpoint
from models import build_model
from precision import autocast, resolve_precision, training_precision
from tests.test_main import epoch_records, run_main, train_args, write_data
from utils import BadInputError

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_training_flags(caplog):
    caplog.set_level(logging.INFO, logger="actionbert")
    assert training_precision(None, 0, CPU) == "fp32"
    # --opt_lvl's fp16 without CUDA: fp32, logged
    assert training_precision(None, 1, CPU) == "fp32"
    assert "no CUDA device: training in fp32" in caplog.text
    assert "--precision fp16 runs fp16 on the CPU" in caplog.text
    caplog.clear()
    assert training_precision("fp16", 1, CPU) == "fp16"  # asked explicitly: honoured, slowly, logged
    assert "several times slower" in caplog.text
    assert training_precision(None, 1, CUDA) == "fp16"
    assert training_precision(None, 3, CPU) == "bf16"
    assert training_precision("bf16", 0, CPU) == "bf16"  # --precision wins over --opt_lvl
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


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data"))


def tiny_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(6, 9, 8, generator=g)
    return feats, torch.tensor([9, 4, 7, 1, 9, 3]), torch.tensor([0, 1, 2, 3, 0, 1])


def step(model, precision: str, grad_clip: float, loss_scale: float = 1.0):
    """One main.py training step of `model` in `precision` on the CPU; returns (scaler, logits dtype)."""
    feats, lengths, labels = tiny_batch()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)  # the update is -lr x gradient: gradients compare directly
    opt = engine.Optimization(optimizer=sgd, scheduler=torch.optim.lr_scheduler.LambdaLR(sgd, lambda s: 1.0),
                            scaler=torch.amp.GradScaler("cpu", enabled=precision == "fp16"),
                            criterion=torch.nn.CrossEntropyLoss(), grad_clip=grad_clip)
    with autocast(precision, CPU):
        logits = model(feats, lengths)
    opt.step(opt.criterion(logits.float(), labels) * loss_scale, model.parameters())
    return opt.scaler, logits.dtype


def updates(before, after) -> torch.Tensor:
    return torch.cat([(a.detach() - b.detach()).flatten() for b, a in zip(before.parameters(), after.parameters(),
                                                                          strict=True)])


@pytest.mark.parametrize("grad_clip", [0.0, 1e-3])  # 1e-3: clipping active, so unscale_ must come first
def test_fp16_step_on_the_cpu_matches_fp32(grad_clip):
    torch.manual_seed(0)
    start = build_model("bert", input_dim=8, num_classes=4, hidden_size=16, num_heads=2, dropout=0.0)
    fp32, fp16 = copy.deepcopy(start), copy.deepcopy(start)
    step(fp32, "fp32", grad_clip)
    scaler, dtype = step(fp16, "fp16", grad_clip)
    assert dtype == torch.float16  # the forward really ran in fp16
    assert scaler.get_scale() == 2.0**16  # a finite step keeps the initial scale
    d32, d16 = updates(start, fp32), updates(start, fp16)
    assert d32.norm() > 0
    # the same step within fp16's precision: clipping the scaled gradients instead would shrink it by 2**16
    assert (d16 - d32).norm() / d32.norm() < 2e-2
    if grad_clip:
        assert d16.norm() == pytest.approx(0.1 * grad_clip, rel=2e-2)  # lr x clipped gradient norm


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # the scaler skipped the step
def test_fp16_step_with_an_inf_gradient_is_skipped_and_the_scale_drops():
    torch.manual_seed(0)
    model = build_model("bilstm", input_dim=8, num_classes=4, hidden_size=8)
    before = copy.deepcopy(model)
    scaler, _ = step(model, "fp16", grad_clip=1.0, loss_scale=float("inf"))
    assert scaler.get_scale() == 2.0**15  # backed off by half
    assert updates(before, model).abs().max() == 0  # no parameter moved
    assert scaler.state_dict()["_growth_tracker"] == 0


def test_fp16_training_resumes_with_its_scaler_state(data_dir, tmp_path):
    common = ["--model", "bert", "--hidden_size", 16, "--num_heads", 2, "--epochs", 2, "--precision", "fp16",
              "--dropout", 0.1, "--seed", 1]
    run_main(*train_args(data_dir, tmp_path, "straight", *common))
    run_main(*train_args(data_dir, tmp_path, "resumed", *common, "--stop_after_steps", 6))
    mid = load_checkpoint(tmp_path / "t" / "resumed" / "checkpoints" / "last.pth")
    assert mid["precision"] == "fp16" and mid["scaler"]["scale"] == 2.0**16
    assert mid["scaler"]["_growth_tracker"] == 6  # six finite steps since the last change of scale
    run_main(*train_args(data_dir, tmp_path, "resumed", *common))
    assert epoch_records(tmp_path / "t" / "resumed") == epoch_records(tmp_path / "t" / "straight")
    final = load_checkpoint(tmp_path / "t" / "resumed" / "checkpoints" / "last.pth")
    assert final["scaler"]["_growth_tracker"] == 8  # 6 before the stop + 2 after: the tracker was restored
    straight = load_checkpoint(tmp_path / "t" / "straight" / "checkpoints" / "last.pth")
    for key, value in straight["model_state"].items():
        torch.testing.assert_close(final["model_state"][key], value, rtol=0, atol=0)


def test_bf16_trains_and_evaluates_end_to_end_on_the_cpu(data_dir, tmp_path):
    run_main(*train_args(data_dir, tmp_path, "bf16", "--model", "bert", "--hidden_size", 16, "--num_heads", 2,
                         "--epochs", 2, "--opt_lvl", 2))
    run = tmp_path / "t" / "bf16"
    best = load_checkpoint(run / "checkpoints" / "best.pth")
    assert best["precision"] == "bf16" and not best["scaler"]  # bf16 needs no loss scaling
    records = epoch_records(run)
    assert all(r["val_count"] == 31 and 0 < r["train_loss"] < 10 for r in records)
    run_main("--mode", "test", "--model_ckpt", run / "checkpoints" / "best.pth", "--data_dir", data_dir,
             "--split", "test", "--num_workers", 0, "--precision", "bf16")
    results = json.loads((run / "results_test.json").read_text())
    assert results["precision"] == "bf16" and results["count"] == 23 and 0 < results["loss"] < 10

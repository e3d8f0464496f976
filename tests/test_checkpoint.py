"""checkpoint.py: weights_only round trip with full training state, RNG restore, refusal of wrong checkpoints."""

from __future__ import annotations

import argparse
import os
import random

import numpy as np
import pytest
import torch

from checkpoint import (
    build_checkpoint,
    check_compatible,
    load_checkpoint,
    model_from_checkpoint,
    read_head_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from models import build_model
from utils import BadInputError


def _trained_state(tmp_path):
    model = build_model("meanpool", input_dim=6, num_classes=3, dropout=0.2)
    model.set_feature_stats(torch.arange(6.0), torch.full((6,), 2.0))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    model(torch.randn(2, 4, 6), torch.tensor([4, 2])).sum().backward()
    opt.step()
    sched.step()
    ckpt = build_checkpoint(
        model, ["a", "b", "c"], {"backbone": "resnet18", "weights": "none", "fps": 1.0, "image_size": 64},
        optimizer=opt.state_dict(), scheduler=sched.state_dict(), scaler=scaler.state_dict(), epoch=2,
        batch_in_epoch=0, global_step=10, best_metric=0.5, best_epoch=1, history=[{"epoch": 1, "val_top1": 0.5}],
        rng=[rng_state()], args={"model": "meanpool", "lr": 1e-3, "pretrained": None},
    )
    path = tmp_path / "ckpt.pth"
    save_checkpoint(ckpt, path)
    return model, path


def test_round_trip_loads_with_weights_only_and_rebuilds_the_model(tmp_path):
    model, path = _trained_state(tmp_path)
    raw = torch.load(path, map_location="cpu", weights_only=True)  # the exact call predict.py relies on
    assert raw["model_name"] == "meanpool" and raw["class_names"] == ["a", "b", "c"]
    assert raw["data_info"]["backbone"] == "resnet18" and raw["feature_dim"] == 6 and raw["num_classes"] == 3
    assert raw["optimizer"]["state"] and raw["scaler"]["scale"] > 0 and raw["global_step"] == 10
    rebuilt = model_from_checkpoint(load_checkpoint(path))
    assert not rebuilt.training
    torch.testing.assert_close(rebuilt.feature_std, torch.full((6,), 2.0))
    model.eval()
    x, n = torch.randn(3, 5, 6), torch.tensor([5, 3, 1])
    torch.testing.assert_close(rebuilt(x, n), model(x, n), rtol=0, atol=0)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


def test_rng_state_restores_every_generator():
    state = rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(7), np.random.rand(7), random.random()
    set_rng_state(state)
    got = (torch.rand(3), np.random.rand(3), random.random())
    torch.testing.assert_close(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_refuses_other_model_class_count_and_feature_dim(tmp_path):
    _, path = _trained_state(tmp_path)
    ckpt = load_checkpoint(path)
    check_compatible(ckpt, path, "meanpool", 3, 6, ["a", "b", "c"])
    with pytest.raises(BadInputError, match="model 'meanpool', not 'bilstm'"):
        check_compatible(ckpt, path, model_name="bilstm")
    with pytest.raises(BadInputError, match="3 classes but the data has 101"):
        check_compatible(ckpt, path, num_classes=101)
    with pytest.raises(BadInputError, match="6-dim"):
        check_compatible(ckpt, path, feature_dim=512)
    with pytest.raises(BadInputError, match="class names"):
        check_compatible(ckpt, path, class_names=["c", "b", "a"])


def test_missing_and_foreign_files_get_clear_errors(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(BadInputError, match="junk.pth"):
        load_checkpoint(tmp_path / "junk.pth")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "other.pth")
    with pytest.raises(BadInputError, match="not an ActionBERT checkpoint"):
        load_checkpoint(tmp_path / "other.pth")

    # a pickled arbitrary object: weights_only must refuse it rather than run its reconstruction
    torch.save({"x": argparse.Namespace(a=1)}, tmp_path / "evil.pth")
    with pytest.raises(BadInputError, match="evil.pth"):
        load_checkpoint(tmp_path / "evil.pth")


@pytest.mark.parametrize("content", [os.urandom(5000), b"", b"PK\x03\x04 a broken zip"])
def test_unreadable_checkpoint_never_suggests_weights_only_false(tmp_path, content):
    """Issue 11 item 11: random bytes were reported with PyTorch's advice to retry with weights_only=False, which
    a user must never follow for an untrusted file."""
    path = tmp_path / "bad.pth"
    path.write_bytes(content)
    with pytest.raises(BadInputError) as exc:
        load_checkpoint(path)
    assert "is not a valid ActionBERT checkpoint" in str(exc.value) and str(path) in str(exc.value)
    assert "weights_only" not in str(exc.value) and "\n" not in str(exc.value)


def test_non_finite_weights_are_refused_on_load_and_never_saved(tmp_path):
    """Issue 11 item 4: best.pth was saved with NaN in every tensor and predict.py printed nan probabilities."""
    model = build_model("meanpool", input_dim=6, num_classes=3)
    ckpt = build_checkpoint(model, ["a", "b", "c"], {})
    save_checkpoint(ckpt, tmp_path / "good.pth")
    ckpt["model_state"]["feature_mean"] = torch.full((6,), float("nan"))
    with pytest.raises(BadInputError, match="not saving .*bad.pth: 1 weight tensor.*feature_mean"):
        save_checkpoint(ckpt, tmp_path / "bad.pth")
    assert not (tmp_path / "bad.pth").exists()
    torch.save(ckpt, tmp_path / "nan.pth")  # as a diverged run wrote them before
    with pytest.raises(BadInputError, match=r"not finite \(NaN/inf\) in 1 tensor\(s\): feature_mean.*diverged"):
        load_checkpoint(tmp_path / "nan.pth")
    with pytest.raises(BadInputError, match=r"--init_head_from: .*nan.pth holds weights that are not finite"):
        read_head_checkpoint(tmp_path / "nan.pth")
    assert load_checkpoint(tmp_path / "good.pth")["model_name"] == "meanpool"

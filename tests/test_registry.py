"""The extension point for heads: a head in its own module, registered in one line, trains through main.py (and is
an e2e_ model too); configs hold one set of defaults and their own rules; capabilities are declared on the class."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch

import main
import models
from checkpoint import read_checkpoint
from models.e2e import e2e_model_names
from routes import model_from_checkpoint
from tests.synthetic import make_order_task, write_embedding_split

TOY = '''
"""A toy head: the last real frame, then a linear layer (order-aware: the last frame depends on the order)."""
from dataclasses import dataclass

import torch
from torch import nn

from models.base import HeadConfig, VideoHead


@dataclass
class ToyConfig(HeadConfig):
    scale: float = 2.0


class ToyHead(VideoHead):
    Config = ToyConfig

    def __init__(self, input_dim, num_classes, **flags):
        cfg = ToyConfig.from_flags(**flags)
        super().__init__(input_dim, num_classes, **cfg.to_dict())
        self.scale = cfg.scale
        self.classifier = nn.Linear(input_dim, num_classes)

    def forward(self, feats, lengths):
        x = self.standardize(feats, lengths)
        last = x[torch.arange(x.shape[0]), (lengths.to(x.device) - 1).clamp_min(0)]
        return self.classifier(self.scale * last)
'''


@pytest.fixture
def toy_head(tmp_path, monkeypatch):
    (tmp_path / "toymod.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))  # the registration ends with the test
    models.register_head("toy", "toymod:ToyHead")
    yield "toy"
    sys.modules.pop("toymod", None)


def test_a_head_in_its_own_file_trains_through_main_py_and_rebuilds(toy_head, tmp_path, one_thread):
    for split, n, seed in (("train", 32, 0), ("val", 16, 1)):
        videos, labels = make_order_task(n, num_pairs=1, dim=8, seed=seed)
        write_embedding_split(tmp_path / "data", split, videos, labels)
    assert "toy" in models.head_names() and "e2e_toy" in e2e_model_names()
    args = main.get_args_parser().parse_args([
        "--mode", "train", "--model", "toy", "--data_dir", str(tmp_path / "data"), "--expt_dir", str(tmp_path),
        "--expt_name", "x", "--run_name", "toy", "--epochs", "1", "--batch_size", "8", "--num_workers", "0"])
    assert main.main(args) == 0
    ckpt = read_checkpoint(tmp_path / "x" / "toy" / "checkpoints" / "last.pth")
    assert ckpt.model_name == "toy" and ckpt.model.config["scale"] == 2.0
    model = model_from_checkpoint(ckpt)
    assert type(model).__name__ == "ToyHead" and model(torch.zeros(2, 3, 8), torch.tensor([3, 1])).shape == (2, 2)


def test_register_head_refuses_bad_names_and_targets(monkeypatch):
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))
    for name, target in (("e2e_x", "m:C"), ("two words", "m:C"), ("x", "no_colon"), ("bert", "other:Head")):
        with pytest.raises(ValueError):
            models.register_head(name, target)
    models.register_head("notahead", "models.base:HeadConfig")
    with pytest.raises(TypeError, match="is not a models.base.VideoHead"):
        models.head_class("notahead")


def test_configs_hold_the_only_defaults_and_their_own_rules():
    assert models.head_config("bilstm").hidden_size == 512 and models.build_model("bilstm", 8, 3).config[
        "hidden_size"] == 512
    assert models.head_config("bert", hidden_size=None).hidden_size == 256  # None: the default
    assert models.head_config("meanpool", hidden_size=64).to_dict() == {"dropout": 0.1}  # other heads' flags ignored
    with pytest.raises(ValueError, match="not divisible"):
        models.head_config("attnpool", hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown pooling"):
        models.head_config("bilstm", pooling="max")
    with pytest.raises(ValueError, match="dropout"):
        models.head_config("meanpool", dropout=1.5)
    models.head_config("bert", pretrained="some/dir", hidden_size=30, num_heads=4)  # the encoder's own sizes rule


def test_capabilities_are_declared_on_the_classes():
    caps = {n: (models.head_class(n).order_aware, models.head_class(n).has_positions,
                models.head_class(n).groups_by_length, models.head_class(n).exposes_attention)
            for n in models.MODEL_NAMES}
    assert caps == {"meanpool": (False, False, False, False), "attnpool": (False, True, False, False),
                    "bilstm": (True, False, True, False), "bert": (True, True, True, True),
                    "roberta": (True, True, True, True), "gru": (True, False, True, False),
                    "tcn": (True, False, True, False), "concat_linear": (True, False, False, False),
                    "trn": (True, False, False, False)}


def test_trn_trains_through_main_py_rebuilds_and_is_an_e2e_model_too(tmp_path, one_thread):
    """The built-in trn head: a short run of main.py on synthetic order pairs, its checkpoint rebuilds the same
    relations (same logits), and e2e_trn exists through the registry."""
    from models.e2e import build_e2e_model

    for split, n, seed in (("train", 32, 0), ("val", 16, 1)):
        videos, labels = make_order_task(n, num_pairs=1, dim=8, seed=seed)
        write_embedding_split(tmp_path / "data", split, videos, labels)
    args = main.get_args_parser().parse_args([
        "--mode", "train", "--model", "trn", "--data_dir", str(tmp_path / "data"), "--expt_dir", str(tmp_path),
        "--expt_name", "x", "--run_name", "trn", "--epochs", "1", "--batch_size", "8", "--num_workers", "0",
        "--hidden_size", "16", "--num_frames", "4", "--subsets_per_scale", "2"])
    assert main.main(args) == 0
    ckpt = read_checkpoint(tmp_path / "x" / "trn" / "checkpoints" / "last.pth")
    assert ckpt.model_name == "trn" and ckpt.model.config["num_frames"] == 4
    assert ckpt.model.config["subsets_per_scale"] == 2
    model = model_from_checkpoint(ckpt).eval()
    again = models.build_model(**ckpt.model.config).eval()
    again.load_state_dict(model.state_dict())
    x, lengths = torch.randn(2, 5, 8), torch.tensor([5, 3])
    with torch.no_grad():
        torch.testing.assert_close(again(x, lengths), model(x, lengths))
    assert "e2e_trn" in e2e_model_names()
    e2e = build_e2e_model("e2e_trn", num_classes=2, backbone="resnet18", weights="none", hidden_size=8,
                          num_frames=3).eval()
    with torch.no_grad():
        assert e2e(torch.randint(0, 256, (1, 3, 3, 32, 32), dtype=torch.uint8), torch.tensor([3])).shape == (1, 2)

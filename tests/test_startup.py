"""Start-up: the commands load heavy libraries only when a run uses them (issue 22). Checked in a fresh interpreter
by what sys.modules holds after the import, not by timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Libraries that only some runs need: HF heads (transformers), timm backbones, plots (matplotlib), scipy, and the
# experiment trackers. Each one costs from a fraction of a second to seconds at import.
OPTIONAL = ["transformers", "timm", "matplotlib", "scipy", "mlflow", "wandb"]


def loaded_after(code: str) -> list[str]:
    """The modules of OPTIONAL + torch that running `code` in a fresh interpreter leaves in sys.modules."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {OPTIONAL + ['torch']!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["main", "predict", "prepare_ucf101", "prepare_data", "compare_runs"])
def test_commands_import_no_optional_library(module):
    assert set(loaded_after(f"import {module}")).isdisjoint(OPTIONAL)


@pytest.mark.parametrize("module", ["main", "predict", "prepare_data"])
def test_building_the_parser_imports_no_optional_library(module):
    """--help builds every option's help text, the head and backbone lists included."""
    assert set(loaded_after(f"import {module}; {module}.get_args_parser().format_help()")).isdisjoint(OPTIONAL)


def test_the_head_registry_lists_the_hf_heads_without_transformers():
    loaded = loaded_after("import models; names = models.head_names(); assert 'bert' in names, names")
    assert "transformers" not in loaded


def test_stage_1_and_its_decode_workers_do_not_import_torch():
    """Stage 1's workers are forked from a server that imports prepare_ucf101 and its task function's module: torch
    there would cost every run ~2 s and gain nothing."""
    assert "torch" not in loaded_after("import prepare_ucf101, workpool, video")


def test_resolving_the_default_backbone_does_not_import_torchvision():
    """Stage 2 resolves its backbone before its decode workers start; torchvision (~1.5 s) loads later, when the
    model is built, while the workers decode. An unknown bare name is still refused with the torchvision list."""
    code = ("import sys; from models.backbone import parse_backbone, resolve_backbone\n"
            "assert parse_backbone('resnet18') == ('torchvision', 'resnet18')\n"
            "resolve_backbone('resnet18', 'none', 'pooled', None, None, seed=0)\n"
            "assert 'torchvision' not in sys.modules, 'torchvision imported'\n"
            "from utils import BadInputError\n"
            "try:\n    parse_backbone('resnet1800')\nexcept BadInputError as exc:\n    assert 'resnet18' in str(exc)\n"
            "else:\n    raise AssertionError('unknown name accepted')")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

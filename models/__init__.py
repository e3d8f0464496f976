"""Heads over per-frame embeddings. `build_model(name, input_dim, num_classes, **config)` builds any of them.

Every head maps `(feats (B, T, D), lengths (B,))` to logits `(B, num_classes)` and keeps its
constructor arguments in `.config`, so `build_model(**checkpoint["model_config"])` rebuilds it.
"""

from __future__ import annotations

import importlib
from typing import Any

from models.base import VideoHead

# name -> (module, class); imported lazily so that `transformers` loads only when a transformer is used.
_REGISTRY: dict[str, tuple[str, str]] = {
    "meanpool": ("models.meanpool", "MeanPoolHead"),
    "attnpool": ("models.attnpool", "AttnPoolHead"),
    "bilstm": ("models.bilstm", "BiLSTMHead"),
    "bert": ("models.transformer", "BertHead"),
    "roberta": ("models.transformer", "RobertaHead"),
}

MODEL_NAMES = tuple(_REGISTRY)
# Heads whose position information `positions="none"` removes (the others have none, or model order by design).
POSITION_MODELS = ("bert", "roberta")


def build_model(name: str, input_dim: int, num_classes: int, **config: Any) -> VideoHead:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    module_name, class_name = _REGISTRY[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    model = cls(input_dim=input_dim, num_classes=num_classes, **config)
    model.config["name"] = name
    return model

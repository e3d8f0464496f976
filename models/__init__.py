"""Heads over per-frame embeddings, behind one registry. `build_model(name, input_dim, num_classes, **config)`
builds any of them.

Every head maps `(feats (B, T, D), lengths (B,))` to logits `(B, num_classes)`, declares its hyper-parameters as a
`Config` dataclass (models.base.HeadConfig: the only defaults, its own validation) and its capabilities as class
attributes (models.base.VideoModel), and keeps its constructor arguments in `.config`, so
`build_model(**checkpoint["model_config"])` rebuilds it. A new head is one file and one line in `_REGISTRY` (or a
`register_head` call from your own code); `e2e_<name>` follows (models/e2e.py).
"""

from __future__ import annotations

import importlib
from typing import Any

from models.base import HeadConfig, VideoHead

# name -> "module:Class"; imported lazily so that `transformers` loads only when a transformer is used.
_REGISTRY: dict[str, str] = {
    "meanpool": "models.meanpool:MeanPoolHead",
    "attnpool": "models.attnpool:AttnPoolHead",
    "bilstm": "models.bilstm:BiLSTMHead",
    "bert": "models.transformer:BertHead",
    "roberta": "models.transformer:RobertaHead",
    "gru": "models.gru:GRUHead",
    "tcn": "models.tcn:TCNHead",
    "concat_linear": "models.concat_linear:ConcatLinearHead",
    "trn": "models.trn:TRNHead",
}

MODEL_NAMES = tuple(_REGISTRY)  # the built-in heads; `head_names()` includes registered ones


def register_head(name: str, target: str) -> None:
    """Make `target` ("package.module:Class", a VideoHead subclass) the head `name` (and `e2e_<name>`)."""
    if not name.isidentifier() or name.startswith("e2e_"):
        raise ValueError(f"a head name is an identifier not starting with e2e_, got {name!r}")
    if ":" not in target:
        raise ValueError(f"register_head({name!r}, ...) needs 'module:Class', got {target!r}")
    if name in _REGISTRY and _REGISTRY[name] != target:
        raise ValueError(f"head {name!r} is already {_REGISTRY[name]}")
    _REGISTRY[name] = target


def head_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def head_class(name: str) -> type[VideoHead]:
    """The class of head `name`, imported on first use."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(_REGISTRY)}")
    module_name, class_name = _REGISTRY[name].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, VideoHead)):
        raise TypeError(f"head {name!r}: {_REGISTRY[name]} is not a models.base.VideoHead")
    return cls


def head_config(name: str, **flags: Any) -> HeadConfig:
    """Head `name`'s validated config from flags (None: the default; keys it does not take: ignored). Raises
    ValueError with the head's own message."""
    return head_class(name).Config.from_flags(**flags)


def build_model(name: str, input_dim: int, num_classes: int, **config: Any) -> VideoHead:
    model = head_class(name)(input_dim=input_dim, num_classes=num_classes, **config)
    model.config["name"] = name
    return model

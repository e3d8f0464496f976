"""One checkpoint file holds everything predict.py needs and everything an exact resume needs.

Only tensors and plain Python values go in, so `torch.load(weights_only=True)` reads it: no pickled
classes, no code execution from a downloaded file. RNG states are converted to tensors and lists.
"""

from __future__ import annotations

import io
import logging
import os
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import build_model
from models.e2e import head_of_e2e, is_e2e_name, load_e2e_model
from utils import BadInputError, atomic_write_bytes, first_names

log = logging.getLogger("actionbert")

FORMAT_VERSION = 1
KIND = "actionbert-checkpoint"
# What a usable checkpoint must hold (training state keys are optional: a weights-only export is fine).
REQUIRED_KEYS = ("format_version", "model_name", "model_config", "model_state", "class_names", "num_classes",
                 "feature_dim")


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and plain lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])[: torch.cuda.device_count()]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def build_checkpoint(
    model: torch.nn.Module,
    class_names: list[str],
    provenance: dict[str, Any],
    **training_state: Any,
) -> dict[str, Any]:
    """Assemble the checkpoint dict. `training_state` adds optimizer, scheduler, scaler, epoch, ... as given."""
    head = unwrap(model)
    config = dict(head.config)
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "model_name": str(config.get("name")),
        "model_config": config,
        "model_state": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "class_names": list(class_names),
        "num_classes": int(head.num_classes),
        "feature_dim": int(head.input_dim),
        "data_info": dict(provenance),
        **training_state,
    }


def nonfinite_tensors(state: Any) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or inf."""
    if not isinstance(state, dict):
        return []
    return [str(k) for k, v in state.items()
            if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]


def save_checkpoint(ckpt: dict[str, Any], path: str | os.PathLike, *more_paths: str | os.PathLike) -> None:
    """Serialise once, then write each path atomically (temp file + fsync + rename): a kill never leaves half a
    file. `more_paths` get the same bytes (best.pth beside last.pth). Weights that are not finite are refused:
    a diverged state must never replace the last good checkpoint."""
    bad = nonfinite_tensors(ckpt.get("model_state"))
    if bad:
        raise BadInputError(f"not saving {path}: {len(bad)} weight tensor(s) are not finite (NaN/inf): {first_names(bad, 3)};"
                            " the checkpoints already written are the last finite state")
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    for target in (path, *more_paths):
        atomic_write_bytes(target, buf.getvalue())


def _torch_load(path: str | os.PathLike, label: str, map_location: str | torch.device = "cpu") -> Any:
    """torch.load(weights_only=True) of a checkpoint file; a missing or unreadable one is a BadInputError."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{label}checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of files it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise BadInputError(f"{label}checkpoint {path} cannot be read: {exc.strerror or exc}") from None
    except Exception as exc:  # torch's own text would suggest weights_only=False: never for an unknown file
        raise BadInputError(
            f"{label}{path} is not a valid ActionBERT checkpoint: it cannot be read as a file of plain tensors and "
            f"values ({type(exc).__name__}; damaged, cut short, another kind of file, or one holding pickled "
            "objects, which are never loaded)"
        ) from None


def check_finite_weights(state: Any, path: str | os.PathLike, label: str = "") -> None:
    """Refuse weights holding NaN/inf: they come from a run that diverged, and would give NaN predictions."""
    bad = nonfinite_tensors(state)
    if bad:
        raise BadInputError(f"{label}{path} holds weights that are not finite (NaN/inf) in {len(bad)} tensor(s): "
                            f"{first_names(bad, 3)}; it comes from a run that diverged: use an earlier checkpoint")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with weights_only=True and check it is one of ours; every failure is a BadInputError naming the file."""
    ckpt = _torch_load(path, "", map_location)
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise BadInputError(f"{path} is not an ActionBERT checkpoint (missing {', '.join(missing)})")
    check_finite_weights(ckpt["model_state"], path)
    if int(ckpt["format_version"]) > FORMAT_VERSION:
        raise BadInputError(
            f"{path} has checkpoint format {ckpt['format_version']}, newer than this code's {FORMAT_VERSION}"
        )
    return ckpt


@dataclass(frozen=True)
class HeadCheckpoint:
    """The trained head a checkpoint holds: a head's own, or the head of an end-to-end model (`models.e2e.HeadWeights`,
    what `EndToEndModel.load_head` takes)."""

    path: str
    name: str  # the head's model name (bert, bilstm, ...)
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    backbone: str | None  # the backbone whose features it was trained on, when recorded
    class_names: list[str] | None

    @property
    def build_kwargs(self) -> dict[str, Any]:
        """Hyper-parameters of a head that fits these weights: `build_e2e_model("e2e_" + name, ..., **kwargs)`."""
        return {k: v for k, v in self.config.items() if k not in ("name", "input_dim", "num_classes", "pretrained")}


def read_head_checkpoint(path: str | os.PathLike) -> HeadCheckpoint:
    """The head of a checkpoint, for --init_head_from (read once: its classes, hyper-parameters and weights)."""
    ckpt = _torch_load(path, "--init_head_from: ")
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "model_config" not in ckpt:
        raise BadInputError(f"--init_head_from: {path} is not a model checkpoint (no model_state/model_config)")
    config, state = dict(ckpt["model_config"]), dict(ckpt["model_state"])
    check_finite_weights(state, path, "--init_head_from: ")
    name = str(config.get("name", ckpt.get("model_name")))
    backbone = ckpt.get("backbone") or (ckpt.get("data_info") or {}).get("backbone")
    if is_e2e_name(name):
        backbone = config.get("backbone", backbone)
        name, config, state = head_of_e2e({**config, "name": name}, state)
    class_names = ckpt.get("class_names")
    return HeadCheckpoint(
        path=os.fspath(path),
        name=name,
        config=config,
        state=state,
        backbone=backbone if isinstance(backbone, str) else None,
        class_names=[str(c) for c in class_names] if isinstance(class_names, list) else None,
    )


def check_compatible(
    ckpt: dict[str, Any],
    path: str | os.PathLike,
    model_name: str | None = None,
    num_classes: int | None = None,
    feature_dim: int | None = None,
    class_names: list[str] | None = None,
) -> None:
    """Refuse a checkpoint of another model, class count, feature size or class list, saying which and why.

    Arguments left None are not checked (feature_dim is None for end-to-end models: their backbone makes it)."""
    if model_name is not None and ckpt["model_name"] != model_name:
        raise BadInputError(
            f"{path} is a checkpoint of model {ckpt['model_name']!r}, not {model_name!r}; "
            f"pass --model {ckpt['model_name']} or another checkpoint"
        )
    if num_classes is not None and int(ckpt["num_classes"]) != int(num_classes):
        raise BadInputError(
            f"{path} was trained for {ckpt['num_classes']} classes but the data has {num_classes}"
        )
    if feature_dim is not None and int(ckpt["feature_dim"]) != int(feature_dim):
        raise BadInputError(
            f"{path} expects {ckpt['feature_dim']}-dim frame embeddings but the data has {feature_dim}-dim ones "
            "(another backbone?)"
        )
    if class_names is not None and list(ckpt["class_names"]) != list(class_names):
        raise BadInputError(f"{path} was trained on other class names than the data's (same count, another order?)")


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild the head (or end-to-end model) from its config, load its weights (including feature statistics),
    on `device`, in eval mode."""
    config = dict(ckpt["model_config"])
    name = config.pop("name", ckpt["model_name"])
    if is_e2e_name(str(name)):
        model = load_e2e_model(ckpt["model_config"], ckpt["model_state"])  # BadInputError when it does not fit
        return model.prepare_for_device(torch.device(device)).eval()
    # a pretrained transformer's weights are in model_state: do not look for the original directory again
    config.pop("pretrained", None)
    try:
        model = build_model(name, **config)
        model.load_state_dict(ckpt["model_state"])
    except (ValueError, RuntimeError, TypeError) as exc:
        raise BadInputError(f"cannot rebuild model {name!r} from the checkpoint: {exc}") from exc
    model.config["name"] = name
    if "pretrained" in ckpt["model_config"]:
        model.config["pretrained"] = ckpt["model_config"]["pretrained"]
    return model.prepare_for_device(torch.device(device)).eval()

"""One checkpoint file holds everything predict.py needs and everything an exact resume needs.

`read_checkpoint` is the one loader: it turns the file (any format written so far) into typed records, a
`ModelRecord` (name, config, weights), a `DataRecord` (how the inputs were made, with the backbone record), a
`RunSettings` (main.py's arguments, old flag names mapped to today's) and a `TrainingState` (what an exact resume
restores). Readers never merge `args`, `data_info` and `model_config` by hand.

Only tensors and plain Python values go in, so `torch.load(weights_only=True)` reads it: no pickled
classes, no code execution from a downloaded file. RNG states are converted to tensors and lists.
"""

from __future__ import annotations

import io
import logging
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

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
    """The head of a checkpoint, for --init_head_from (read once: its classes, hyper-parameters and weights); the
    checkpoint's route takes it out of a whole model (an e2e model's `head.*`)."""
    from routes import route_for

    ckpt = _torch_load(path, "--init_head_from: ")
    if not isinstance(ckpt, dict) or "model_state" not in ckpt or "model_config" not in ckpt:
        raise BadInputError(f"--init_head_from: {path} is not a model checkpoint (no model_state/model_config)")
    check_finite_weights(ckpt["model_state"], path, "--init_head_from: ")
    model = model_record(ckpt)
    backbone = ckpt.get("backbone") or (ckpt.get("data_info") or {}).get("backbone")  # the oldest files: top level
    name, config, state, own_backbone = route_for(model.name).head_of(model)
    backbone = own_backbone or backbone
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
    ckpt: Checkpoint,
    path: str | os.PathLike,
    model_name: str | None = None,
    num_classes: int | None = None,
    feature_dim: int | None = None,
    class_names: list[str] | None = None,
) -> None:
    """Refuse a checkpoint of another model, class count, feature size or class list, saying which and why.

    Arguments left None are not checked (feature_dim is None for end-to-end models: their backbone makes it)."""
    model = ckpt.model
    if model_name is not None and model.name != model_name:
        raise BadInputError(
            f"{path} is a checkpoint of model {model.name!r}, not {model_name!r}; "
            f"pass --model {model.name} or another checkpoint"
        )
    if num_classes is not None and model.num_classes != int(num_classes):
        raise BadInputError(
            f"{path} was trained for {model.num_classes} classes but the data has {num_classes}"
        )
    if feature_dim is not None and model.feature_dim != int(feature_dim):
        raise BadInputError(
            f"{path} expects {model.feature_dim}-dim frame embeddings but the data has {feature_dim}-dim ones "
            "(another backbone?)"
        )
    if class_names is not None and list(ckpt.data.class_names) != list(class_names):
        raise BadInputError(f"{path} was trained on other class names than the data's (same count, another order?)")


# ----------------------------------------------------------------------------------------------- typed records

# main.py flags renamed since checkpoints first recorded them (old name -> today's). A rename adds one line here, and
# every reader (predict.py, resume, compare_runs.py) keeps reading old checkpoints under the new name.
RENAMED_SETTINGS: dict[str, str] = {}
# main.py arguments that say where a run lives or how it was executed, not what it learned: runs that differ only in
# these (and in --seed) are repeats of one experiment (compare_runs.py groups them).
EXECUTION_SETTINGS = frozenset({
    "mode", "expt_dir", "expt_name", "run_name", "data_dir", "split_json_dir", "frames_dir", "model_ckpt", "resume",
    "split", "gpu_id", "num_workers", "log_interval", "save_interval", "stop_after_epochs", "stop_after_steps",
    "verbose", "strict", "seed", "probes", "logger", "mlflow_uri", "wandb_project", "wandb_mode",
})


@dataclass(frozen=True)
class ModelRecord:
    """The model a checkpoint holds: its name, the config it rebuilds from, and its weights."""

    name: str
    config: dict[str, Any]
    state: dict[str, torch.Tensor]
    num_classes: int
    feature_dim: int


@dataclass(frozen=True)
class DataRecord:
    """How the training inputs were made (stage 2's JSON minus its records, or the clips' provenance) and the class
    list: what predict.py needs to turn a raw video into the same inputs."""

    path: str  # the checkpoint, for messages
    class_names: list[str]
    info: dict[str, Any]
    model_config: dict[str, Any] = field(default_factory=dict)  # an e2e model's config holds its backbone record

    def get(self, key: str, default: Any = None) -> Any:
        return self.info.get(key, default)

    def __contains__(self, key: str) -> bool:
        return key in self.info

    def require(self, key: str) -> Any:
        """`key`, or a BadInputError saying the checkpoint is too old to rebuild the inputs without it."""
        if key not in self.info:
            raise BadInputError(
                f"{self.path}: the checkpoint's data_info lacks {key!r}, which predict.py needs to rebuild the inputs "
                "training saw (a checkpoint from before it was recorded: retrain, or rerun prepare_data.py and "
                "main.py with the current code)"
            )
        return self.info[key]

    def backbone(self) -> Any:
        """The backbone record (`models.backbone.BackboneRecord`): the model config's (e2e), else the data's; one
        from before records existed is rebuilt from its torchvision name, image_size and resize."""
        from models.backbone import record_of
        from transforms import RESIZE_MODES

        source = {**self.info, **self.model_config} if self.model_config.get("backbone_record") else self.info
        if not source.get("backbone_record"):
            self.require("backbone")
            self.require("image_size")
            resize = source.get("resize") or "crop"
            if resize not in RESIZE_MODES:
                raise BadInputError(f"{self.path}: data_info resize {resize!r} is not one of {', '.join(RESIZE_MODES)}")
        return record_of(source, self.path)


@dataclass(frozen=True)
class RunSettings:
    """main.py's arguments as the run recorded them, under today's flag names (`RENAMED_SETTINGS`)."""

    values: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def learned_from(self) -> dict[str, Any]:
        """The settings that change what a run learns (all but `EXECUTION_SETTINGS`)."""
        return {k: v for k, v in self.values.items() if k not in EXECUTION_SETTINGS}


@dataclass
class TrainingState:
    """What an exact resume restores besides the weights (absent from a weights-only export)."""

    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any]
    epoch: int
    global_step: int
    best_metric: float
    batch_in_epoch: int = 0
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    rng: list[dict[str, Any]] = field(default_factory=list)  # one per rank
    train_partial: list[Any] = field(default_factory=list)  # one per rank, of an unfinished epoch


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file as typed records (`read_checkpoint`)."""

    path: str
    model: ModelRecord
    data: DataRecord
    settings: RunSettings
    training: TrainingState | None
    num_params: int | None = None
    precision: str | None = None

    @property
    def model_name(self) -> str:
        return self.model.name


def model_record(ckpt: dict[str, Any]) -> ModelRecord:
    config = dict(ckpt["model_config"])
    return ModelRecord(
        name=str(config.get("name") or ckpt.get("model_name")),
        config=config,
        state=dict(ckpt["model_state"]),
        num_classes=int(ckpt.get("num_classes", config.get("num_classes", 0))),
        feature_dim=int(ckpt.get("feature_dim", config.get("input_dim", 0))),
    )


def records_of(ckpt: dict[str, Any], path: str | os.PathLike) -> Checkpoint:
    """The typed records of a loaded checkpoint dict, whatever format version wrote it."""
    path = os.fspath(path)
    args = {RENAMED_SETTINGS.get(k, k): v for k, v in (ckpt.get("args") or {}).items()}
    info = dict(ckpt.get("data_info") or {})
    model = model_record(ckpt)
    from routes import route_for

    # data_info first, then the flags the run was given, for the input settings its route takes from flags
    for key in route_for(model.name).input_flags:
        if key not in info and args.get(key) is not None:
            info[key] = args[key]
    data = DataRecord(path, [str(c) for c in ckpt["class_names"]], info, model.config)
    training = None
    if "optimizer" in ckpt:
        training = TrainingState(
            optimizer=ckpt["optimizer"],
            scheduler=ckpt["scheduler"],
            scaler=ckpt.get("scaler") or {},
            epoch=int(ckpt["epoch"]),
            global_step=int(ckpt["global_step"]),
            best_metric=float(ckpt["best_metric"]),
            batch_in_epoch=int(ckpt.get("batch_in_epoch", 0)),
            best_epoch=int(ckpt.get("best_epoch", 0)),
            history=list(ckpt.get("history") or []),
            rng=list(ckpt.get("rng") or []),
            train_partial=list(ckpt.get("train_partial") or []),
        )
    params = ckpt.get("num_params")
    return Checkpoint(path, model, data, RunSettings(args), training,
                      None if params is None else int(params), ckpt.get("precision"))


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """The one loader: `load_checkpoint`'s checks, then the typed records."""
    return records_of(load_checkpoint(path, map_location), path)

"""Experiment trackers: where main.py's numbers go besides its own files.

TensorBoard (`tensorboard/` in the run folder) is always written, as before. `--logger mlflow` and
`--logger wandb` add MLflow (a local `mlruns/` folder by default: no server) and Weights & Biases (offline by
default: `wandb sync` uploads later). Each gets the run's hyper-parameters, every scalar main.py logs (per step and
per epoch), the test results and probe drops of `--mode test`, and the figures (curves, confusion matrices).

`Trackers` has SummaryWriter's `add_scalar`/`flush`/`close`, so the training loop logs through it unchanged. The
optional libraries are imported only when asked for; a missing one is refused before any work
(`check_loggers`) with the package to install. A run's tracker ids are kept in `<run>/trackers.json`, so a resumed
run and its later `--mode test` log into the same MLflow run and W&B run instead of starting new ones.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils import BadInputError, atomic_write_text

log = logging.getLogger("actionbert")

LOGGERS = ("tensorboard", "mlflow", "wandb")
# logger -> (module to import, what to install)
_PACKAGES = {"mlflow": ("mlflow", "mlflow-skinny (or mlflow)"), "wandb": ("wandb", "wandb")}
IDS_FILE = "trackers.json"
MLFLOW_PARAM_CHARS = 6000  # MLflow refuses longer parameter values


def check_loggers(names: Sequence[str]) -> None:
    """Refuse, before any work, a logger whose library is not installed."""
    for name in names:
        if name not in LOGGERS:
            raise BadInputError(f"--logger {name}: unknown; choose from {', '.join(LOGGERS)}")
        module, package = _PACKAGES.get(name, (None, None))
        if module and importlib.util.find_spec(module) is None:
            raise BadInputError(f"--logger {name} needs the {module} package, which is not installed: "
                                f"pip install {package}")


def _flat_params(params: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in params.items():
        text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
        out[key] = text if len(text) <= MLFLOW_PARAM_CHARS else text[: MLFLOW_PARAM_CHARS - 3] + "..."
    return out


class _TensorBoard:
    def __init__(self, run_dir: Path, purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step or None)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def log_params(self, params: dict[str, Any]) -> None:
        text = "\n".join(f"    {k}: {v}" for k, v in sorted(_flat_params(params).items()))
        self.writer.add_text("params", text)

    def log_results(self, prefix: str, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def log_figure(self, path: Path, step: int) -> None:
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is not None:
            self.writer.add_image(f"figures/{path.stem}", img[:, :, ::-1].copy(), step, dataformats="HWC")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    """One MLflow run per run folder, reopened by id on resume and in test mode."""

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: str | None) -> None:
        from mlflow.tracking import MlflowClient

        if uri.startswith("file:") or "://" not in uri:
            # MLflow 3 keeps the folder backend only on request; it is what "a local mlruns/, no server" means.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(uri)
        if run_id is None:
            found = self.client.get_experiment_by_name(experiment)
            exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
            run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id, self.uri = run_id, uri

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.client.log_metric(self.run_id, tag, float(value), step=int(step))

    def log_params(self, params: dict[str, Any]) -> None:
        """New parameters are logged; one that a resumed run changed (e.g. --epochs) becomes a tag, since MLflow
        refuses to overwrite a parameter."""
        logged = self.client.get_run(self.run_id).data.params
        for key, value in _flat_params(params).items():
            if key not in logged:
                self.client.log_param(self.run_id, key, value)
            elif logged[key] != value:
                self.client.set_tag(self.run_id, f"changed_on_resume.{key}", value)

    def log_results(self, prefix: str, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, f"{prefix}/{key}", float(value), step=int(step))

    def log_figure(self, path: Path, step: int) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="figures")

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class _Wandb:
    """A W&B run (offline unless --wandb_mode online), resumed by id; each scalar against its own step."""

    def __init__(self, run_dir: Path, project: str, run_name: str, run_id: str | None, mode: str) -> None:
        import wandb

        self._wandb = wandb
        self.run = wandb.init(project=project, name=run_name, dir=str(run_dir), mode=mode,
                              id=run_id, resume="allow")
        self.run_id = self.run.id
        self._axes: set[str] = set()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        axis = f"{tag}_step"
        if tag not in self._axes:
            self.run.define_metric(axis, hidden=True)
            self.run.define_metric(tag, step_metric=axis)
            self._axes.add(tag)
        self.run.log({tag: float(value), axis: int(step)})

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(_flat_params(params), allow_val_change=True)

    def log_results(self, prefix: str, metrics: dict[str, float], step: int) -> None:
        self.run.summary.update({f"{prefix}/{k}": float(v) for k, v in metrics.items()})

    def log_figure(self, path: Path, step: int) -> None:
        self.run.log({f"figures/{path.stem}": self._wandb.Image(str(path))})

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


class Trackers:
    """Every tracker of a run behind one interface (SummaryWriter's add_scalar/flush/close, plus params, results
    and figures). Non-finite values are skipped with one warning: MLflow and W&B reject or misplot them."""

    def __init__(self, backends: dict[str, Any], run_dir: Path) -> None:
        self.backends, self.run_dir = backends, run_dir
        self._warned: set[str] = set()

    def _finite(self, tag: str, value: float) -> bool:
        if math.isfinite(float(value)):
            return True
        if tag not in self._warned:
            log.warning("trackers: %s is %s; not logged", tag, value)
            self._warned.add(tag)
        return False

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self._finite(tag, value):
            for backend in self.backends.values():
                backend.add_scalar(tag, value, step)

    def log_params(self, params: dict[str, Any]) -> None:
        for backend in self.backends.values():
            backend.log_params(params)

    def log_results(self, prefix: str, metrics: dict[str, Any], step: int = 0) -> None:
        """Named numbers without a curve (test results, probe drops), under `prefix/`."""
        numbers = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and self._finite(f"{prefix}/{k}", v)}
        for backend in self.backends.values():
            backend.log_results(prefix, numbers, step)

    def log_figure(self, path: str | os.PathLike, step: int = 0) -> None:
        path = Path(path)
        if path.is_file():
            for backend in self.backends.values():
                backend.log_figure(path, step)

    def flush(self) -> None:
        for backend in self.backends.values():
            backend.flush()

    def close(self) -> None:
        for name, backend in self.backends.items():
            try:
                backend.close()
            except Exception as exc:  # a tracker that fails to close must not hide the run's own result
                log.warning("trackers: closing %s failed: %s", name, exc)
        where = [f"MLflow run {b.run_id} in {b.uri}" if n == "mlflow" else
                 f"W&B run {b.run_id} in {self.run_dir / 'wandb'}" for n, b in self.backends.items()
                 if n in ("mlflow", "wandb")]
        if where:
            log.info("trackers: %s", "; ".join(where))


def open_trackers(names: Sequence[str], run_dir: Path, *, experiment: str, run_name: str,
                  purge_step: int | None = None, mlflow_uri: str | None = None, wandb_project: str | None = None,
                  wandb_mode: str = "offline", tensorboard: bool = True) -> Trackers:
    """The run's trackers, reopening the MLflow/W&B runs recorded in `<run_dir>/trackers.json` (written here).
    TensorBoard is always among them unless `tensorboard=False` (test mode: the curves are training's)."""
    check_loggers(names)
    ids_path = run_dir / IDS_FILE
    ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    backends: dict[str, Any] = {}
    for name in dict.fromkeys(["tensorboard", *names] if tensorboard else [n for n in names if n != "tensorboard"]):
        if name == "tensorboard":
            backends[name] = _TensorBoard(run_dir, purge_step)
        elif name == "mlflow":
            uri = mlflow_uri or ids.get("mlflow", {}).get("uri") or (run_dir.parent / "mlruns").resolve().as_uri()
            known = ids.get("mlflow", {})
            backend = _MLflow(uri, experiment, run_name, known.get("run_id") if known.get("uri") == uri else None)
            ids["mlflow"] = {"uri": uri, "run_id": backend.run_id}
            backends[name] = backend
        elif name == "wandb":
            backend = _Wandb(run_dir, wandb_project or experiment, run_name, ids.get("wandb", {}).get("run_id"),
                             wandb_mode)
            ids["wandb"] = {"run_id": backend.run_id, "mode": wandb_mode}
            backends[name] = backend
    if set(ids) - {"tensorboard"}:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(ids_path, json.dumps(ids, indent=1))
    return Trackers(backends, run_dir)


def add_logger_args(parser: Any) -> None:
    """main.py's tracker flags."""
    parser.add_argument("--logger", nargs="+", default=["tensorboard"], choices=LOGGERS, metavar="LOGGER",
                        help="where metrics go besides the run folder's files: tensorboard (always written), "
                             "mlflow (local mlruns/ beside the run folders unless --mlflow_uri), wandb (offline "
                             "unless --wandb_mode online); mlflow and wandb are optional installs")
    parser.add_argument("--mlflow_uri", default=None,
                        help="MLflow tracking URI (default: file:<expt_dir>/<expt_name>/mlruns, no server)")
    parser.add_argument("--wandb_project", default=None, help="W&B project (default: --expt_name)")
    parser.add_argument("--wandb_mode", default="offline", choices=("offline", "online"),
                        help="W&B mode: offline writes <run>/wandb/ for `wandb sync`; online needs a login")

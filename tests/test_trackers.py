"""trackers.py: TensorBoard, MLflow (local folder) and W&B (offline) get the params, scalars, results and figures;
a reopened run logs into the same tracker runs; a missing library is refused with what to install."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import trackers
from utils import BadInputError


def _figure(path: Path) -> Path:
    import cv2

    cv2.imwrite(str(path), np.full((20, 30, 3), 128, np.uint8))
    return path


def _log_a_run(run_dir: Path, names: list[str], epochs: range) -> trackers.Trackers:
    t = trackers.open_trackers(names, run_dir, experiment="expt", run_name=run_dir.name)
    t.log_params({"lr": 1e-3, "model": "bert", "epochs": epochs.stop})
    for epoch in epochs:
        t.add_scalar("val/top1", 0.1 * epoch, epoch)
        t.add_scalar("train/loss_step", 1.0 / epoch, 10 * epoch)
    t.add_scalar("val/loss", float("nan"), 1)  # skipped with a warning, never sent
    return t


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="needs mlflow (requirements-dev.txt)")
def test_mlflow_gets_params_scalars_results_and_figures_and_a_resumed_run_continues(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "expt" / "bert"
    run_dir.mkdir(parents=True)
    t = _log_a_run(run_dir, ["mlflow"], range(1, 3))
    t.close()
    ids = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert ids["uri"] == (tmp_path / "expt" / "mlruns").resolve().as_uri()  # beside the run folders, no server
    # resumed with more epochs, then tested: the same MLflow run
    t = _log_a_run(run_dir, ["mlflow"], range(3, 5))
    t.log_results("test", {"top1": 0.9, "count": 23, "note": "text is not a number"})
    t.log_figure(_figure(run_dir / "curves.png"))
    t.close()
    assert json.loads((run_dir / "trackers.json").read_text())["mlflow"]["run_id"] == ids["run_id"]
    client = MlflowClient(ids["uri"])
    run = client.get_run(ids["run_id"])
    assert run.data.params["lr"] == "0.001" and run.data.params["epochs"] == "3"
    assert run.data.tags["changed_on_resume.epochs"] == "5"  # MLflow cannot overwrite a param: a tag says it
    history = client.get_metric_history(ids["run_id"], "val/top1")
    assert [(m.step, round(m.value, 3)) for m in history] == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    assert not client.get_metric_history(ids["run_id"], "val/loss")
    assert run.data.metrics["test/top1"] == 0.9 and "test/note" not in run.data.metrics
    assert [a.path for a in client.list_artifacts(ids["run_id"], "figures")] == ["figures/curves.png"]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))  # TensorBoard is written as well


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="needs wandb (requirements-dev.txt)")
def test_wandb_offline_run_is_written_in_the_run_folder_and_resumed_by_id(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "expt" / "gru"
    run_dir.mkdir(parents=True)
    t = _log_a_run(run_dir, ["wandb"], range(1, 3))
    t.log_figure(_figure(run_dir / "confusion_test.png"))
    t.close()
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["run_id"]
    t = _log_a_run(run_dir, ["wandb"], range(3, 4))
    t.close()
    assert json.loads((run_dir / "trackers.json").read_text())["wandb"]["run_id"] == run_id
    offline = sorted((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert offline, list((run_dir / "wandb").iterdir())  # the sessions of one run share its id, for `wandb sync`
    assert list(offline[0].glob("files/media/images/**/confusion_test*.png"))  # the figure went with it
    assert all(list(d.glob("*.wandb")) for d in offline)


def test_a_missing_tracker_library_is_refused_with_what_to_install(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(BadInputError, match=r"--logger mlflow needs the mlflow package.*pip install mlflow-skinny"):
        trackers.check_loggers(["tensorboard", "mlflow"])
    trackers.check_loggers(["tensorboard"])


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="needs mlflow (requirements-dev.txt)")
def test_main_py_logs_training_and_test_into_one_mlflow_run(tmp_path: Path, one_thread) -> None:
    from mlflow.tracking import MlflowClient

    import main
    from tests.synthetic import make_order_task, write_embedding_split

    for split, n, seed in (("train", 32, 0), ("val", 16, 1), ("test", 16, 2)):
        videos, labels = make_order_task(n, num_pairs=1, dim=8, seed=seed)
        write_embedding_split(tmp_path / "data", split, videos, labels)
    common = ["--data_dir", str(tmp_path / "data"), "--expt_dir", str(tmp_path), "--expt_name", "x",
              "--num_workers", "0", "--batch_size", "8", "--logger", "mlflow"]
    assert main.main(main.get_args_parser().parse_args(
        ["--mode", "train", "--model", "meanpool", "--run_name", "m", "--epochs", "2", *common])) == 0
    run_dir = tmp_path / "x" / "m"
    assert main.main(main.get_args_parser().parse_args(
        ["--mode", "test", "--model_ckpt", str(run_dir / "checkpoints" / "best.pth"), "--split", "test",
         "--probes", "shuffle", *common])) == 0
    ids = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    client = MlflowClient(ids["uri"])
    run = client.get_run(ids["run_id"])
    assert run.data.params["model"] == "meanpool" and run.data.params["epochs"] == "2"
    assert [m.step for m in client.get_metric_history(ids["run_id"], "val/top1")] == [1, 2]
    results = json.loads((run_dir / "results_test.json").read_text())
    assert run.data.metrics["test/top1"] == pytest.approx(results["top1"])
    assert run.data.metrics["test_probe_shuffle/top1_drop"] == pytest.approx(0.0)  # meanpool: order-blind
    assert {a.path for a in client.list_artifacts(ids["run_id"], "figures")} == {"figures/curves.png",
                                                                                 "figures/confusion_test.png"}
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1  # test mode adds no TB file

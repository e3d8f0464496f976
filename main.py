"""Stage 3: train a head over frame embeddings, or a CNN jointly with it (e2e_*), resume it exactly, test it,
and scale it with torchrun.

    main.py --mode train --expt_dir D --expt_name E --run_name R --model bert --data_dir DATA
    main.py --mode test --model_ckpt D/E/R/checkpoints/best.pth --data_dir DATA --split test
    main.py --mode train --model e2e_bilstm --split_json_dir PREPARED [--frames_dir PREPARED/frames] ...
    main.py --mode test --model_ckpt D/E/R/checkpoints/best.pth --split_json_dir PREPARED --split test
    torchrun --nproc_per_node=2 main.py --mode train ...

Two data routes feed one training loop (routes.py): stage 2's embeddings or stage 1's frames (e2e_*); the route
builds the splits and the model, and every batch is {"inputs", "lengths", "labels", "indices", "views"}.

Read top to bottom, as torchvision's references/video_classification/train.py: `train(args)` wires the route's
data and model, engine.py's `Optimization` (AdamW, schedule, scaler, loss), loops (`train_one_epoch`, `evaluate`)
and `RunState`, which resume.py's `restore_run_state` takes back from a checkpoint and `save_training_checkpoint`
writes; `test(args)` evaluates a checkpoint and reports.py writes what both modes report.

Every run lives in <expt_dir>/<expt_name>/<run_name>/: checkpoints/{best,last}.pth, train_log.txt,
metrics.jsonl, tensorboard/, curves.png, and test mode's results_<split>.json, per_class_<split>.csv,
predictions_<split>.csv and confusion_<split>.png (with --probes: probes_<split>.json, probes_per_class_<split>.csv).
A split without labels (an official test split, label_idx -1) gets predictions_<split>.csv (true_label and correct
empty) and a results_<split>.json saying labelled: false, without accuracy.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from checkpoint import Checkpoint, check_compatible, read_checkpoint
from direction import FLIP_MODES
from distributed import DistInfo, all_gather_objects, barrier, main_rank_lock, rank_device, rank_group
from engine import (
    Optimization,
    RunState,
    evaluate,
    evaluate_probes,
    make_optimization,
    rank_seed,
    train_one_epoch,
)
from models import MODEL_NAMES, head_class, head_config, head_names
from models.backbone import BACKBONE_HELP, FEATURE_HELP, FEATURES, WEIGHTS_HELP
from models.base import VideoModel
from models.positions import POSITIONS
from precision import PRECISIONS, training_precision
from probes import NONE, PROBE_NAMES
from reports import (
    CurvePlotter,
    add_file_log,
    report_skipped,
    write_epoch_outputs,
    write_probe_outputs,
    write_test_outputs,
    write_unlabelled_outputs,
)
from resume import restore_run_state, resume_checkpoint, save_training_checkpoint, schedule_changes
from routes import (
    EmbeddingRoute,
    TrainData,
    all_model_names,
    check_labelling,
    check_num_cls,
    head_kwargs,
    load_splits,
    make_eval_loader,
    model_from_checkpoint,
    route_for,
    training_data,
)
from trackers import add_logger_args, check_loggers, open_trackers
from transforms import RESIZE_MODES
from utils import (
    BadInputError,
    check_writable_dir,
    float_in,
    int_at_least,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    probability,
    run_cli,
    set_seed,
    setup_logging,
)

log = logging.getLogger("actionbert")


def _run_and_head_args(p: argparse.ArgumentParser) -> None:
    """What to run and on which data, and the head's hyper-parameters."""
    g = p.add_argument_group("run")
    g.add_argument("--mode", choices=("train", "test"), default="train")
    g.add_argument("--expt_dir", default="expts", help="root folder of all experiments")
    g.add_argument("--expt_name", default="default", help="experiment folder under --expt_dir")
    g.add_argument("--run_name", default=None, help="run folder under the experiment (default: the model name; "
                   "test mode: the checkpoint's own run folder)")
    g.add_argument("--data_dir", default=None, help="stage 2 output: <split>.npy + <split>.json (heads over "
                   "embeddings; e2e_* models read --split_json_dir instead)")
    g.add_argument("--model", choices=all_model_names(), default=None, help="head to train, or e2e_<head> for a CNN "
                   "trained jointly with it (test mode: read from the checkpoint; if given it must match)")
    g.add_argument("--model_ckpt", default=None, help="train: resume from this checkpoint; test: the checkpoint "
                   "to evaluate")
    g.add_argument("--resume", default="auto", help="train: 'auto' resumes from the run folder's "
                   "checkpoints/last.pth when it exists, 'none' starts afresh, or a checkpoint path")
    g.add_argument("--split", default="val", help="test mode: the split to evaluate (val or test; a "
                   "split without labels, label_idx -1, gets predictions only)")
    g.add_argument("--probes", nargs="*", choices=PROBE_NAMES, default=[], metavar="PROBE",
                   help="test mode: also evaluate with each video's frames changed, one run per probe: "
                   f"{', '.join(PROBE_NAMES)} (shuffle is seeded by --seed and the video name). Writes "
                   "probes_<split>.json and probes_per_class_<split>.csv")
    g.add_argument("--num_cls", type=positive_int, default=None, help="number of classes; read from the data, a value "
                   "that disagrees with it is an error")
    g.add_argument("--strict", action="store_true", help="refuse data with any bad record instead of leaving "
                   "it out with a warning")
    g.add_argument("--seed", type=int, default=0, help="fixes initialisation, data order and augmentation")

    g = p.add_argument_group("head")
    g.add_argument("--num_layers", type=positive_int, default=1)
    g.add_argument("--hidden_size", type=positive_int, default=None, help="default: the head's own")
    g.add_argument("--num_heads", type=positive_int, default=None, help="attention heads (bert, roberta)")
    g.add_argument("--intermediate_size", type=positive_int, default=None, help="feed-forward size (bert, roberta)")
    g.add_argument("--dropout", type=probability, default=None, help="default: the head's own")
    g.add_argument("--pretrained", default=None, help="bert/roberta: Hugging Face name or local directory")
    g.add_argument("--positions", choices=POSITIONS, default=None, help="bert/roberta (default learned, the "
                   "encoder's own table) and attnpool with --num_layers 2+ (default none): learned, sinusoidal (fixed "
                   "sin/cos), rotary (RoPE in the attention), time (each frame's real timestamp in seconds, from the "
                   "split's fps; embeddings only) or none (an order-blind set model, the ablation that isolates "
                   "attention from order). With --pretrained, learned keeps the pretrained table and the others "
                   "replace it")
    g.add_argument("--kernel_size", type=int_at_least(3), default=None, help="tcn: odd temporal kernel (default 3; "
                   "block i is dilated 2**i, --num_layers blocks)")
    g.add_argument("--num_frames", type=positive_int, default=None, help="concat_linear: frames each video is "
                   "resampled to before they are concatenated (default 8); trn: segments each video is resampled to, "
                   "relations at scales 2..this (default 8)")
    g.add_argument("--subsets_per_scale", type=positive_int, default=None, help="trn: ordered k-frame subsets per "
                   "scale, a fixed seeded sample (default 3)")



def _e2e_args(p: argparse.ArgumentParser) -> None:
    """The e2e route's frames, clips and backbone."""
    g = p.add_argument_group("end-to-end (e2e_* models: the frame backbone trained jointly with the head on stage "
                             "1's frames)")
    g.add_argument("--split_json_dir", default=None, help="stage 1 output: <split>_ucf101.json and classInd.txt")
    g.add_argument("--frames_dir", default=None, help="stage 1's frames/<video_name>/frame_*.jpg (default: "
                   "SPLIT_JSON_DIR/frames)")
    g.add_argument("--backbone", default="resnet18", help=BACKBONE_HELP)
    g.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    g.add_argument("--feature", choices=FEATURES, default="pooled", help=FEATURE_HELP)
    g.add_argument("--hflip", choices=FLIP_MODES, default="auto", help="horizontal flips of training clips: auto flips "
                   "and swaps the labels of mirrored classes (left/right, clockwise/anticlockwise in the class names), "
                   "and does not flip when a direction class has no mirrored partner; on: flip anyway; off: never")
    g.add_argument("--image_size", type=int_at_least(16), default=None, help="frame size fed to the backbone "
                   "(default: the backbone's own, 224 for torchvision; test mode: the checkpoint's)")
    g.add_argument("--resize", choices=RESIZE_MODES, default=None, help="evaluation resize (default: the "
                   "backbone's own; crop: shorter side then centre crop, squash: whole frame)")
    g.add_argument("--freeze_backbone_stages", type=nonnegative_int, default=0, help="freeze the first K backbone "
                   "stages. ResNets: stem, layer1..layer4 (5 freezes the whole CNN); timm/hf ViTs: the patch embedding "
                   "and the first K blocks (blocks + 1 freezes all); timm/hf CNNs: the stem with stage 1, then one "
                   "stage each")
    g.add_argument("--grad_checkpointing", action="store_true", help="recompute backbone activations in "
                   "backward: less memory, ~30%% more compute")
    g.add_argument("--backbone_lr", type=nonnegative_float, default=None, help="peak learning rate of the backbone "
                   "(default: --lr)")
    g.add_argument("--init_head_from", default=None, help="start the head from this checkpoint (a head trained "
                   "by main.py on embeddings of the same classes: the two-step recipe); its hyper-parameters win")



def _sampling_args(p: argparse.ArgumentParser) -> None:
    """Which frames of a video the model sees: one rule (sampling.py) for both routes."""
    g = p.add_argument_group("frame sampling (both routes; test mode and predict.py: the checkpoint's unless given)")
    g.add_argument("--clip_len", "--num_segments", dest="clip_len", type=positive_int, default=None, metavar="T",
                   help="uniform segment sampling (TSN): T equal segments per video, one random frame from each in "
                   "training, the segment centres in evaluation; a video shorter than T repeats frames in order. "
                   "e2e_*: the clip length (default 8). Heads over embeddings: T of the stored frames (default: every "
                   "stored frame, no segments)")
    g.add_argument("--num_clips", type=positive_int, default=None, metavar="K", help="evaluation views per video: view "
                   "k takes position (k + 0.5) / K inside every segment and the K views' logits are averaged, in "
                   "validation, test mode and --probes (default 1; heads over embeddings need --clip_len)")


def _optimisation_args(p: argparse.ArgumentParser) -> None:
    """The optimiser, its schedule, batching and temporal augmentation."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch_size", type=positive_int, default=256, help="global batch, split over torchrun processes")
    g.add_argument("--epochs", type=positive_int, default=300)
    g.add_argument("--lr", type=nonnegative_float, default=1e-4, help="peak AdamW learning rate (finite; 0 keeps "
                   "the weights as they are, e.g. to check an initialisation)")
    g.add_argument("--weight_decay", type=nonnegative_float, default=0.01, help="AdamW decay; never on biases, norms, "
                   "embeddings")
    g.add_argument("--warmup_epochs", type=nonnegative_float, default=1.0, help="linear warm-up, then cosine decay to 0")
    g.add_argument("--warmup_steps", type=nonnegative_int, default=None, help="warm-up in steps; overrides --warmup_epochs")
    g.add_argument("--grad_clip", type=nonnegative_float, default=1.0, help="max gradient norm (0 = off)")
    g.add_argument("--label_smoothing", type=probability, default=0.0)
    g.add_argument("--balanced", action="store_true", help="sample classes equally often (with replacement)")
    g.add_argument("--group_by_length", action=argparse.BooleanOptionalAction, default=None,
                   help="batch videos of similar length together (Hugging Face Trainer's group_by_length: random "
                   "mega-batches sorted by length, cut into batches, batch order shuffled), so padding costs little. "
                   "Default: on for the sequence heads (bilstm, bert, roberta), off for meanpool and e2e_* (fixed "
                   "clip length)")

    g = p.add_argument_group("temporal augmentation (training split only)")
    g.add_argument("--temporal_crop", type=float_in(0.0, 1.0, low_open=True), default=1.0, help="keep a random window of at least this "
                   "fraction of the frames (1 = off)")
    g.add_argument("--temporal_stride", type=positive_int, default=1, help="take every s-th frame, s random in "
                   "1..this (1 = off)")
    g.add_argument("--frame_dropout", type=probability, default=0.0, help="drop each frame with this probability")



def _hardware_and_logging_args(p: argparse.ArgumentParser) -> None:
    """Device, precision, workers, logging and where an invocation stops."""
    g = p.add_argument_group("hardware")
    g.add_argument("--gpu_id", type=int, default=0, help="CUDA device, as in prepare_data.py and predict.py; the "
                   "CPU is used (one log line) without CUDA. Under torchrun each rank uses cuda:LOCAL_RANK")
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="torch.amp precision; overrides --opt_lvl. fp16 uses a GradScaler and runs as asked on the "
                   "CPU too (slowly; logged); bf16 on a GPU without it runs fp16")
    g.add_argument("--opt_lvl", type=int, choices=(0, 1, 2, 3), default=1,
                   help="alias of --precision kept from apex (torch.amp only): 0 = fp32, 1 = fp16 autocast + "
                   "GradScaler, 2 and 3 = bf16. Without CUDA its fp16 runs fp32 (logged)")
    g.add_argument("--num_workers", type=nonnegative_int, default=4)

    g = p.add_argument_group("logging")
    g.add_argument("--log_interval", type=nonnegative_int, default=50, help="steps between TensorBoard scalars")
    g.add_argument("--save_interval", type=nonnegative_int, default=1000, help="steps between last.pth saves inside an "
                   "epoch (0 = only at epoch ends)")
    g.add_argument("--stop_after_epochs", type=positive_int, default=None, help="end this invocation after this many "
                   "epochs (time-limited cluster jobs): rerun the same command to go on exactly where it stopped")
    g.add_argument("--stop_after_steps", type=positive_int, default=None, help="end this invocation at this global step, "
                   "saving last.pth first (also mid-epoch)")
    g.add_argument("--verbose", action="store_true")
    add_logger_args(g)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Train or test a temporal head (" + ", ".join(MODEL_NAMES) + ") over per-frame embeddings, or "
        "a CNN trained jointly with it on frames (e2e_<head>).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for add in (_run_and_head_args, _sampling_args, _e2e_args, _optimisation_args, _hardware_and_logging_args):
        add(p)
    return p


# ----------------------------------------------------------------------------------------------- helpers


def train_run_dir(args: argparse.Namespace) -> Path:
    return Path(args.expt_dir) / args.expt_name / (args.run_name or args.model)


def test_run_dir(args: argparse.Namespace) -> Path:
    """--run_name when given, else the run folder the checkpoint lives in (RUN/checkpoints/x.pth -> RUN)."""
    if args.run_name:
        return Path(args.expt_dir) / args.expt_name / args.run_name
    path = Path(args.model_ckpt).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations argparse cannot check one by one, refused before any work: train mode without --model, a
    transformer whose width does not split into its attention heads (Hugging Face would raise deep inside model
    construction), --group_by_length for an e2e model (its clips all have one length), --positions for a head without
    position embeddings, --probes outside test mode."""
    if args.mode == "train" and args.model is None:
        raise BadInputError("--model is required in train mode (choose from " + ", ".join(all_model_names()) + ")")
    check_loggers(args.logger)  # a missing optional library, before any work
    if args.mode == "train" and args.probes:
        raise BadInputError("--probes evaluates a trained checkpoint: use it with --mode test --model_ckpt F")
    if args.group_by_length and args.model and (route_for(args.model).fixed_length or args.clip_len is not None):
        raise BadInputError(f"--group_by_length groups videos by their number of embeddings; {args.model} trains on "
                            "clips that all have --clip_len frames (leave the flag out)")
    if not args.model:
        return
    head = route_for(args.model).head_name(args.model)
    if args.positions is not None and not head_class(head).has_positions:
        with_positions = [n for n in head_names() if head_class(n).has_positions]
        raise BadInputError(f"--positions applies to {', '.join(with_positions)} (and e2e_ of them), not "
                            f"{args.model}: the other heads have no position embeddings to remove")
    if args.positions == "time" and route_for(args.model).fixed_length:
        raise BadInputError(f"--positions time reads each frame's timestamp from stage 2's embeddings; {args.model} "
                            "trains on clips whose frames carry none (use learned, sinusoidal or rotary)")
    try:  # the head's own rules (models.base.HeadConfig.validate), before any data is read
        head_config(head, **head_kwargs(args))
    except ValueError as exc:
        raise BadInputError(f"--model {args.model}: {exc}") from None


def resolve_group_by_length(args: argparse.Namespace) -> bool:
    """--group_by_length, defaulting to on for the sequence heads over embeddings; written back into `args` so
    the run's log and checkpoints record it (and a resume cannot silently change it). `check_args` has refused it
    for e2e models."""
    if args.group_by_length is None:  # heads whose cost grows with a batch's padded width (their class says so)
        args.group_by_length = (args.model in head_names() and head_class(args.model).groups_by_length
                                and args.clip_len is None)  # segments: every input has --clip_len frames
    return bool(args.group_by_length)


# ----------------------------------------------------------------------------------------------- train


def run_model(route: EmbeddingRoute, args: argparse.Namespace, ckpt: Checkpoint | None, ckpt_path: Path | None,
              data: TrainData, device: torch.device, dist_info: DistInfo) -> VideoModel:
    """The model of this invocation: the resumed checkpoint's, or a fresh one the route builds."""
    set_seed(args.seed)
    if ckpt is not None:
        model = model_from_checkpoint(ckpt, device)
        if model.supports_grad_checkpointing:  # a memory setting, free to change between invocations
            model.set_grad_checkpointing(args.grad_checkpointing)
        log.info("resuming from %s (epoch %d, step %d)", ckpt_path, ckpt.training.epoch, ckpt.training.global_step)
        return model
    return route.build_model(data.train, data.sampler, data.per_rank_batch, device, dist_info)


def run_epoch(epoch: int, model: VideoModel, train_model: torch.nn.Module, data: TrainData, opt: Optimization,
              state: RunState, args: argparse.Namespace, ctx: dict[str, Any]) -> bool:
    """One epoch (or its rest, after a resume): train, and when it is complete, evaluate, record, save and write
    the epoch's outputs. Returns whether --stop_after_steps stopped it."""
    t0 = time.time()
    dist_info, device, precision = ctx["dist_info"], ctx["device"], ctx["precision"]
    data.sampler.set_epoch(epoch)
    data.sampler.set_start(state.batch_in_epoch * data.per_rank_batch)
    num_classes = data.train.num_classes
    train_acc, stopped = train_one_epoch(
        train_model, data.train_loader, opt, state, args, device=device, precision=precision,
        num_classes=num_classes, steps_per_epoch=data.steps_per_epoch, save_partial=ctx["save"],
        names=data.train.names, writer=ctx["writer"], show=dist_info.is_main,
    )
    if state.batch_in_epoch != data.steps_per_epoch:
        return stopped
    train_metrics = train_acc.reduce(dist_info).compute()
    val_acc, _ = evaluate(model, data.val_loader, device, precision, num_classes, show=dist_info.is_main,
                          names=data.val.names)
    val_metrics = val_acc.reduce(dist_info).compute()
    state.epoch, state.batch_in_epoch = epoch + 1, 0
    state.history.append({
        "epoch": state.epoch,
        "step": state.global_step,
        "lr": opt.lr,
        **{f"train_{k}": v for k, v in train_metrics.items() if k != "count"},
        **{f"val_{k}": v for k, v in val_metrics.items()},
        "epoch_time_s": round(time.time() - t0, 3),
    })
    is_best = val_metrics["top1"] > state.best_metric
    if is_best:
        state.best_metric, state.best_epoch = val_metrics["top1"], state.epoch
    ctx["save"](best=is_best)
    log.info("epoch %d/%d: train loss %.4f top1 %.4f | val loss %.4f top1 %.4f top5 %.4f mca %.4f (%d)%s",
             state.epoch, args.epochs, train_metrics["loss"], train_metrics["top1"], val_metrics["loss"],
             val_metrics["top1"], val_metrics["top5"], val_metrics["mean_class_acc"], val_metrics["count"],
             " best" if is_best else "")
    if dist_info.is_main:
        write_epoch_outputs(ctx["run_dir"], state, train_metrics, val_metrics, ctx["writer"], ctx["curves"])
    return stopped


def train(args: argparse.Namespace, dist_info: DistInfo) -> int:
    """Train --model on the train split, evaluating on val after every epoch; resumes the run folder's last.pth.
    `main` holds the run folder locked meanwhile."""
    device = rank_device(dist_info, args.gpu_id)
    precision = training_precision(args.precision, args.opt_lvl, device)
    run_dir = train_run_dir(args)
    ckpt_dir = run_dir / "checkpoints"
    route = route_for(args.model)(args)  # before the log records the arguments (it resolves the route's flags)
    grouping_given = args.group_by_length is not None
    resolve_group_by_length(args)
    handler = add_file_log(run_dir / "train_log.txt", args) if dist_info.is_main else None
    train_data, val_data = load_splits(route, args, dist_info, run_dir)
    log.info("data: %d train / %d val videos, %d classes, %s, %s", len(train_data), len(val_data),
             train_data.num_classes, route.describe(train_data), precision)
    ckpt, ckpt_path = resume_checkpoint(args, run_dir, train_data)
    if ckpt is not None and not grouping_given and args.group_by_length and "group_by_length" not in ckpt.settings:
        log.info("%s is from before --group_by_length: resuming it with the random batches it started with", ckpt_path)
        args.group_by_length = False
    data = training_data(train_data, val_data, args, dist_info, device.type == "cuda")

    model = run_model(route, args, ckpt, ckpt_path, data, device, dist_info)
    num_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("model %s: %s, %d parameters (%d trainable)", args.model, json.dumps(model.config, default=str),
             num_params, trainable)
    train_model: torch.nn.Module = model
    if dist_info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    # optimisation and where the run stands
    opt = make_optimization(model, args, device, precision, data.steps_per_epoch)
    if ckpt is not None:
        state = restore_run_state(ckpt, opt, dist_info, args.seed, data.steps_per_epoch, schedule_changes(ckpt, args))
    else:
        state = RunState()
        set_seed(rank_seed(args.seed, dist_info.rank))
    save = functools.partial(save_training_checkpoint, ckpt_dir, model, data.train, opt, state, dist_info,
                             num_params=num_params, precision=precision, args=vars(args))
    writer, curves = None, CurvePlotter(run_dir / "curves.png")
    if dist_info.is_main:  # TensorBoard, and MLflow / W&B with --logger: SummaryWriter's add_scalar for the loops
        writer = open_trackers(args.logger, run_dir, experiment=args.expt_name, run_name=run_dir.name,
                               purge_step=state.global_step, mlflow_uri=args.mlflow_uri,
                               wandb_project=args.wandb_project, wandb_mode=args.wandb_mode)
        writer.log_params({**vars(args), "num_params": num_params})
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    ctx = {"dist_info": dist_info, "device": device, "precision": precision, "save": save, "writer": writer,
           "curves": curves, "run_dir": run_dir}

    if state.epoch >= args.epochs:
        log.info("already trained for %d of %d epochs; nothing to do", state.epoch, args.epochs)
    end_epoch = args.epochs
    if args.stop_after_epochs is not None:
        end_epoch = min(end_epoch, state.epoch + args.stop_after_epochs)
    for epoch in range(state.epoch, end_epoch):
        if run_epoch(epoch, model, train_model, data, opt, state, args, ctx):
            log.info("stopped at step %d (--stop_after_steps); rerun the same command to resume", state.global_step)
            break
    if dist_info.is_main:
        curves.update(state.history, final=True)
        writer.log_figure(run_dir / "curves.png", state.epoch)
        writer.close()
        log.info("best val top-1 %.4f at epoch %d; checkpoints in %s", max(state.best_metric, 0.0), state.best_epoch,
                 ckpt_dir)
        logging.getLogger().removeHandler(handler)
        handler.close()
    barrier(dist_info)
    return 0


# ----------------------------------------------------------------------------------------------- test


def test(args: argparse.Namespace, dist_info: DistInfo) -> int:
    if not args.model_ckpt:
        raise BadInputError("--mode test needs --model_ckpt (e.g. RUN/checkpoints/best.pth)")
    ckpt = read_checkpoint(args.model_ckpt)
    check_compatible(ckpt, args.model_ckpt, args.model)  # the model first: it decides which data route to read
    run_dir = check_writable_dir(test_run_dir(args), "the report folder (--expt_dir/--expt_name/--run_name)")
    route = route_for(ckpt.model_name)(args, ckpt)
    info = route.load_split(args.split, unlabelled=True)
    labelled = check_labelling(info)  # an official test split without labels is predicted, not scored
    if not labelled and args.probes:
        raise BadInputError(f"--probes measures the accuracy lost without the order; {info.source} is unlabelled "
                            "(label_idx -1): probe a labelled split (--split val)")
    check_num_cls(args.num_cls, info)
    check_compatible(ckpt, args.model_ckpt, None, info.num_classes, info.feature_dim, info.class_names)
    device = rank_device(dist_info, args.gpu_id)
    # evaluate in the precision training runs in on this device (the same flags, the same rule)
    precision = training_precision(args.precision, args.opt_lvl, device)
    model = model_from_checkpoint(ckpt, device)
    loader = make_eval_loader(info, max(1, args.batch_size // dist_info.world_size), args.num_workers, dist_info,
                              device.type == "cuda")
    timing: dict[str, float] = {}
    acc, outputs = evaluate(model, loader, device, precision, info.num_classes, collect=True, names=info.names,
                            show=dist_info.is_main, timing=timing, labelled=labelled)
    acc.reduce(dist_info)
    outputs = [o for part in all_gather_objects(outputs, dist_info) for o in part]
    probe_accs = evaluate_probes(model, info, args, device, precision, dist_info)
    if dist_info.is_main:
        epoch = ckpt.training.epoch if ckpt.training is not None else None
        extra = {"checkpoint": str(args.model_ckpt), "model": ckpt.model_name, "epoch": epoch,
                 "precision": precision, "skipped": len(info.skipped), **route.report_extra(),
                 # the budget beside the accuracy: rank 0's inference rate on this machine, data loading included
                 "infer_frames_per_s": round(timing["frames"] / max(timing["seconds"], 1e-9), 1),
                 "infer_videos_per_s": round(timing["videos"] / max(timing["seconds"], 1e-9), 1)}
        report_skipped(info, run_dir)
        probes = {}
        if not labelled:
            results = write_unlabelled_outputs(run_dir, args.split, info, outputs, extra)
            log.info("%s is unlabelled (label_idx -1 for all %d videos): no accuracy computed; predictions in %s",
                     args.split, results["count"], run_dir / f"predictions_{args.split}.csv")
        else:
            results = write_test_outputs(run_dir, args.split, info, acc, outputs, extra)
            log.info("%s: top1 %.4f top5 %.4f mean class acc %.4f loss %.4f over %d videos; reports in %s",
                     args.split, results["top1"], results["top5"], results["mean_class_acc"], results["loss"],
                     results["count"], run_dir)
        if probe_accs:
            probes = write_probe_outputs(run_dir, args.split, info.class_names, {NONE: acc, **probe_accs},
                                         {**extra, "probe_seed": args.seed})
        log_test_to_trackers(args, run_dir, results, probes, int(epoch or 0))
    barrier(dist_info)
    return 0


def log_test_to_trackers(args: argparse.Namespace, run_dir: Path, results: dict[str, Any],
                         probes: dict[str, dict[str, Any]], epoch: int) -> None:
    """Test results, each probe's metrics and the confusion matrix into the run's MLflow / W&B runs (--logger; the
    ids in the run folder's trackers.json continue training's runs). TensorBoard keeps the curves only."""
    others = [n for n in args.logger if n != "tensorboard"]
    if not others:
        return
    trackers = open_trackers(others, run_dir, experiment=run_dir.parent.name, run_name=run_dir.name,
                             tensorboard=False, mlflow_uri=args.mlflow_uri, wandb_project=args.wandb_project,
                             wandb_mode=args.wandb_mode)
    trackers.log_results(args.split, results, epoch)
    for probe, result in probes.items():
        if probe != NONE:
            trackers.log_results(f"{args.split}_probe_{probe}", result, epoch)
    trackers.log_figure(run_dir / f"confusion_{args.split}.png", epoch)
    trackers.close()


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)  # first, so that init_distributed's line (rank, device, backend) is logged
    check_args(args)
    with rank_group() as dist_info:  # one rank's failure stops every rank, with its message
        if not dist_info.is_main:
            logging.getLogger().setLevel(logging.WARNING)
        if args.mode == "test":
            return test(args, dist_info)
        run_dir = check_writable_dir(train_run_dir(args), "the run folder (--expt_dir/--expt_name/--run_name)")
        # a second run in this folder is refused at once: two would overwrite each other's checkpoints and metrics
        with main_rank_lock(dist_info, run_dir, what="training run folder"):
            return train(args, dist_info)


if __name__ == "__main__":
    run_cli(main, get_args_parser().parse_args())

"""Why a transformer head ignores frame order early in training: a trace of the head on the order task.

Every `--every` steps it prints, on the validation videos: the RMS of the projected frame tokens and of the
position embeddings they are added to (and their ratio: the encoder layer-normalises the sum, so only the ratio
matters), the entropy of the [CLS] attention over the frames in each layer relative to uniform attention (1.0 =
uniform), the gradient norms of the position table and of the projection, and the within-pair accuracy (0.50 =
order not used). The same data as benchmarks/order_task.py, a plain loop with main.py's optimiser pieces
(AdamW, its weight-decay groups, warm-up + cosine schedule, gradient clipping at 1).

    python benchmarks/order_trace.py --variant before --steps 180
    python benchmarks/order_trace.py --variant after --steps 180

Variants: `after` (the head as built today), `before` (no frame LayerNorm: the plain projection), `ln_gain1`
(frame LayerNorm with gain 1), `pos_init` (no frame LayerNorm, positions drawn at the features' scale, std 0.58),
`pos_lr10` (no frame LayerNorm, 10x learning rate for the position table).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from dataset import pad_collate  # noqa: E402
from engine import warmup_cosine  # noqa: E402
from models import build_model  # noqa: E402
from tests.synthetic import make_order_task  # noqa: E402

VARIANTS = ("after", "before", "ln_gain1", "pos_init", "pos_lr10")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=VARIANTS, default="after")
    p.add_argument("--model", choices=("bert", "roberta"), default="bert")
    p.add_argument("--steps", type=int, default=180, help="steps traced")
    p.add_argument("--total_steps", type=int, default=450, help="length of the cosine schedule (15 epochs of 30)")
    p.add_argument("--warmup_steps", type=int, default=30)
    p.add_argument("--every", type=int, default=15)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hidden_size", type=int, default=256)
    return p


def padded(videos: list[np.ndarray], labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The whole split as one batch, padded as main.py's loader pads (dataset.pad_collate): feats, lengths, labels."""
    batch = pad_collate([(v, int(label), i) for i, (v, label) in enumerate(zip(videos, labels, strict=True))])
    return batch["inputs"], batch["lengths"], batch["labels"]


def build(args: argparse.Namespace, dim: int, num_classes: int) -> torch.nn.Module:
    frame_norm = args.variant in ("after", "ln_gain1")
    model = build_model(args.model, dim, num_classes, hidden_size=args.hidden_size, num_layers=2, num_heads=4,
                        frame_norm=frame_norm)
    with torch.no_grad():
        if args.variant == "ln_gain1":
            model.frame_norm.weight.fill_(1.0)
        if args.variant == "pos_init":
            model.encoder.embeddings.position_embeddings.weight.normal_(0.0, 0.58)
    return model




@torch.no_grad()
def trace_row(model: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor, y: torch.Tensor) -> list[float]:
    model.eval()
    short = int(lengths.min())
    tokens = model.frame_tokens(model.standardize(x, lengths))[:, :short]
    table = model.encoder.embeddings.position_embeddings.weight
    positions = table[model.position_offset + 1 : model.position_offset + 1 + short]
    rms_tokens, rms_pos = float(tokens.pow(2).mean().sqrt()), float(positions.pow(2).mean().sqrt())
    logits, attentions = model(x, lengths, return_attentions=True)
    entropies = []
    for att in attentions:
        cls = att[:, :, 0, :].clamp_min(1e-12)  # (B, heads, T+1): [CLS]'s attention
        entropy = -(cls * cls.log()).sum(-1)
        entropies.append(float((entropy / torch.log(lengths.float() + 1).unsqueeze(1)).mean()))
    pair = y // 2
    choice = logits.view(len(y), -1, 2)[torch.arange(len(y)), pair].argmax(1)
    model.train()
    return [rms_tokens, rms_pos, rms_tokens / rms_pos, *entropies, float((choice == y % 2).float().mean())]


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    task = {"num_pairs": 4, "dim": 64, "min_len": 8, "max_len": 24, "noise": 0.3}
    train_videos, train_labels = make_order_task(960, seed=0, **task)
    val_videos, val_labels = make_order_task(240, seed=1, **task)
    x, lengths, y = padded(train_videos, train_labels)
    vx, vlengths, vy = padded(val_videos, val_labels)
    torch.manual_seed(args.seed)
    model = build(args, task["dim"], 2 * task["num_pairs"])
    frames = torch.from_numpy(np.concatenate(train_videos))
    model.set_feature_stats(frames.mean(0), frames.std(0))
    groups = model.param_groups(weight_decay=0.01, lr=args.lr)
    table = model.encoder.embeddings.position_embeddings.weight
    if args.variant == "pos_lr10":
        for group in groups:
            group["params"] = [p for p in group["params"] if p is not table]
        groups.append({"params": [table], "weight_decay": 0.0, "lr": 10 * args.lr})
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, args.warmup_steps, args.total_steps))
    order = torch.Generator().manual_seed(args.seed)
    print(f"{args.model} {args.variant}: step, RMS frame tokens, RMS positions, ratio, [CLS] attention entropy / "
          "uniform per layer, |grad positions|, |grad projection|, within-pair val accuracy")
    grads = (0.0, 0.0)
    model.train()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            row = trace_row(model, vx, vlengths, vy)
            print(f"{step:5d}  {row[0]:.3f} {row[1]:.3f} {row[2]:6.1f}  "
                  + " ".join(f"{e:.3f}" for e in row[3:-1]) + f"  {grads[0]:.2e} {grads[1]:.2e}  {row[-1]:.3f}",
                  flush=True)
        if step == args.steps:
            break
        idx = torch.randperm(len(y), generator=order)[: args.batch_size]
        loss = torch.nn.functional.cross_entropy(model(x[idx], lengths[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = (float(table.grad.norm()), float(model.projection.weight.grad.norm()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))

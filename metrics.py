"""Classification metrics kept as sums (confusion matrix, top-5 hits, loss), so ranks reduce them exactly.

Averaging per-rank means would weight ranks with fewer samples wrongly; summing counts does not.
"""

from __future__ import annotations

import torch

from distributed import DistInfo, all_reduce_sum


class MetricAccumulator:
    """Running confusion matrix, top-k hits and summed loss over any number of batches."""

    def __init__(self, num_classes: int, topk: int = 5) -> None:
        self.num_classes = int(num_classes)
        self.topk = int(topk)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
        self.topk_correct = 0.0
        self.loss_sum = 0.0
        self.count = 0.0

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: float) -> None:
        """Add a batch: `loss_sum` is the summed (not mean) loss of its samples."""
        logits, targets = logits.detach().float().cpu(), targets.detach().cpu()
        pred = logits.argmax(1)
        flat = targets * self.num_classes + pred
        self.confusion += torch.bincount(flat, minlength=self.num_classes**2).view_as(self.confusion).double()
        k = min(self.topk, logits.shape[1])
        self.topk_correct += float((logits.topk(k, 1).indices == targets[:, None]).any(1).sum())
        self.loss_sum += float(loss_sum)
        self.count += float(len(targets))

    def state(self) -> torch.Tensor:
        """Everything as one float64 vector (for all-reduce and for mid-epoch checkpoints)."""
        head = torch.tensor([self.topk_correct, self.loss_sum, self.count], dtype=torch.float64)
        return torch.cat([head, self.confusion.flatten()])

    def load_state(self, state: torch.Tensor) -> None:
        state = state.to(torch.float64)
        self.topk_correct, self.loss_sum, self.count = (float(x) for x in state[:3])
        self.confusion = state[3:].view(self.num_classes, self.num_classes).clone()

    def reduce(self, info: DistInfo) -> MetricAccumulator:
        """Sum over ranks in place; afterwards every rank holds the global numbers."""
        if info.enabled:
            self.load_state(all_reduce_sum(self.state(), info))
        return self

    def compute(self) -> dict[str, float]:
        """loss, top1, top5, mean_class_acc (over classes present) and count."""
        count = max(self.count, 1.0)
        support = self.confusion.sum(1)
        present = support > 0
        per_class = self.confusion.diag()[present] / support[present]
        return {
            "loss": self.loss_sum / count,
            "top1": float(self.confusion.diag().sum()) / count,
            "top5": self.topk_correct / count,
            "mean_class_acc": float(per_class.mean()) if present.any() else 0.0,
            "count": int(self.count),
        }

    def per_class(self, class_names: list[str]) -> list[dict[str, float | int | str]]:
        """Per class: support, correct, accuracy (recall) and precision."""
        rows = []
        support, predicted, diag = self.confusion.sum(1), self.confusion.sum(0), self.confusion.diag()
        for c, name in enumerate(class_names):
            rows.append(
                {
                    "class_idx": c,
                    "class_name": name,
                    "support": int(support[c]),
                    "correct": int(diag[c]),
                    "accuracy": float(diag[c] / support[c]) if support[c] > 0 else float("nan"),
                    "precision": float(diag[c] / predicted[c]) if predicted[c] > 0 else float("nan"),
                }
            )
        return rows

"""Batch order for training and evaluation, for both data routes (embeddings and clips): seeded by (seed, epoch)
alone, sharded over ranks, optionally class-balanced or length-grouped, and resumable in the middle of an epoch.

A key is an index (evaluation) or `(index, epoch)` (training), which `dataset.EmbeddingDataset` and
`clip_dataset.ClipDataset` both take, so augmentation depends on the sample and the epoch, never on workers or ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def length_grouped_batches(
    order: Sequence[int], lengths: np.ndarray, batch_size: int, generator: torch.Generator,
    megabatch_mult: int | None = None,
) -> list[list[int]]:
    """Hugging Face Trainer's `group_by_length`: cut the (already random) `order` into mega-batches of
    `megabatch_mult` batches, sort each by length (longest first), cut it into batches, then shuffle the order of
    the full batches. Batch-mates have similar lengths, so padding to a batch's longest video costs little, while
    which videos meet and the order of batches stay random. A short last batch stays last, so every other batch
    is full (and a global batch over W ranks stays one batch of the plan).

    The default `megabatch_mult` is HF's: min(n // (4 * batch_size), 50), at least 1.
    """
    n = len(order)
    if megabatch_mult is None:
        megabatch_mult = min(n // (4 * batch_size), 50)
    mega = max(1, int(megabatch_mult)) * batch_size
    lengths = np.asarray(lengths)
    full, short = [], []
    for start in range(0, n, mega):
        chunk = np.asarray(order[start : start + mega], dtype=np.int64)
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")].tolist()
        for k in range(0, len(chunk), batch_size):
            (full if k + batch_size <= len(chunk) else short).append(chunk[k : k + batch_size])
    perm = torch.randperm(len(full), generator=generator).tolist()
    return [full[p] for p in perm] + short


class TrainSampler(Sampler):
    """Shuffled (optionally class-balanced, optionally length-grouped) order from (seed, epoch) alone, sharded
    over ranks.

    Every rank draws the same global order and takes positions rank, rank+W, ...; the order is
    padded by repeating its start so that ranks get equal counts, as DistributedSampler does, so a
    global batch of B spread over W ranks holds the same samples as one process with batch B.
    Yields `(index, epoch)` so the dataset can seed the augmentation. `set_start(k)` skips the
    first k of this rank's samples, for resuming in the middle of an epoch.

    With `lengths` (each video's frame count) and `batch_size` (this rank's batch, the DataLoader's), the global
    order is `length_grouped_batches` of global batches of batch_size * num_replicas, so each rank's batch is its
    share of one grouped global batch.
    """

    def __init__(
        self,
        labels: np.ndarray,
        seed: int = 0,
        balanced: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
        lengths: np.ndarray | None = None,
        batch_size: int | None = None,
    ) -> None:
        self.labels = np.asarray(labels)
        self.seed = int(seed)
        self.balanced = balanced
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        if (lengths is None) != (batch_size is None):
            raise ValueError("length grouping needs both lengths and batch_size")
        if lengths is not None and len(lengths) != len(self.labels):
            raise ValueError(f"{len(lengths)} lengths for {len(self.labels)} samples")
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.epoch = 0
        self.start = 0
        self.num_samples = math.ceil(len(self.labels) / self.num_replicas)

    @property
    def group_by_length(self) -> bool:
        return self.lengths is not None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def global_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        n = len(self.labels)
        if self.balanced:
            counts = np.bincount(self.labels)
            weights = torch.as_tensor(1.0 / counts[self.labels], dtype=torch.double)
            order = torch.multinomial(weights, n, replacement=True, generator=g).tolist()
        else:
            order = torch.randperm(n, generator=g).tolist()
        if self.lengths is not None:
            batches = length_grouped_batches(order, self.lengths, self.batch_size * self.num_replicas, g)
            order = [i for batch in batches for i in batch]
        total = self.num_samples * self.num_replicas
        order += order[: total - n]
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.global_order()[self.rank :: self.num_replicas][self.start :]
        return iter([(i, self.epoch) for i in mine])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


class EvalSampler(Sampler):
    """Every sample exactly once, split over ranks without padding (uneven shards are fine: sums are reduced)."""

    def __init__(self, size: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(size))[rank::num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

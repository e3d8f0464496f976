"""Statistics that tell a real gap between two heads from noise: spread over seeds and splits, paired tests.

Two runs tested on the same videos are compared video by video (paired), which is far more sensitive than
comparing two accuracies: both runs meet the same easy and hard videos, so only the videos on which they disagree
carry information about which is better.

- `paired_difference`: top-1 of A minus top-1 of B with a seeded bootstrap 95% interval (the test videos
  resampled with replacement) and the exact McNemar p-value: under "A and B are equally good", each video that
  exactly one of them gets right is equally likely to be A's or B's, so the count of A-only successes among the
  discordant videos is Binomial(n01 + n10, 1/2) (scipy.stats.binomtest, two-sided).
- `grouped_paired_difference`: groups of runs (seeds, official splits) matched unit by unit (same seed and split):
  the mean of the per-unit differences, a two-level bootstrap interval (units resampled, then each unit's videos),
  so seed-to-seed and split-to-split variation widen it, and p = the largest per-unit McNemar p-value when every
  unit's difference has the same sign, else 1 (an intersection-union test: the gap is called real only if it is
  real in every seed and split; valid whatever the correlation between units, conservative by design, and losing
  power as units are added: the weakest unit decides). Beside it, `p_mean`: a one-sample t-test of the per-unit
  differences against 0 (df = units - 1), which asks whether the mean difference over seeds/splits is non-zero
  when the units are taken as independent replicates (it needs at least 2 units, and is weak with 2 or 3).
  The summed discordant counts are reported, but no McNemar test is run on them: the units of a seed group share
  their test videos, so pooling them would count each video once per seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_SAMPLES = 10_000
CONFIDENCE = 0.95


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std (ddof 1; nan for a single value), n) over the finite values."""
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if not len(arr):
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else math.nan, len(arr)


def mcnemar_exact_p(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (A right and B wrong, A wrong and B right)."""
    from scipy.stats import binomtest

    n = int(a_only) + int(b_only)
    if n == 0:
        return 1.0  # the two runs agree on every video: no evidence of any difference
    return float(binomtest(int(a_only), n, 0.5, alternative="two-sided").pvalue)


@dataclass(frozen=True)
class PairedResult:
    """A minus B on the same videos."""

    diff: float  # top-1 of A minus top-1 of B
    ci_low: float
    ci_high: float
    p: float  # exact McNemar for one unit; for groups the intersection-union p over matched units (`p_test`)
    a_only: int  # videos A gets right and B wrong (summed over units for groups)
    b_only: int
    num_videos: int  # per unit (the first unit's count for groups)
    num_units: int = 1
    unit_p: tuple[float, ...] = ()
    unit_diff: tuple[float, ...] = ()
    p_mean: float = math.nan  # groups: t-test of the mean per-unit difference (nan for one unit, or no spread)

    @property
    def p_test(self) -> str:
        """What `p` is, in words fit for a table header or a CSV cell."""
        if self.num_units == 1:
            return "exact McNemar"
        return f"intersection-union of {self.num_units} exact McNemar"


def _bootstrap_means(delta: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of `samples` resamples with replacement of a vector of -1/0/+1. Such a resample is fixed by how many
    of each value it draws, a multinomial, so it is drawn in O(samples) rather than O(samples * videos)."""
    n = len(delta)
    probs = [float((delta > 0).mean()), float((delta < 0).mean())]
    probs.append(max(0.0, 1.0 - probs[0] - probs[1]))
    counts = rng.multinomial(n, probs, size=samples)
    return (counts[:, 0] - counts[:, 1]) / n


def _interval(samples: np.ndarray) -> tuple[float, float]:
    tail = (1.0 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _check_pair(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or not len(a):
        raise ValueError(f"paired outcomes need two equal, non-empty 1-D arrays, got {a.shape} and {b.shape}")
    return a, b


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray, seed: int = 0,
                      samples: int = BOOTSTRAP_SAMPLES) -> PairedResult:
    """A vs B from per-video correctness (True where the run's top-1 is right), aligned on the same videos."""
    a, b = _check_pair(correct_a, correct_b)
    delta = a.astype(np.int8) - b.astype(np.int8)  # +1 A only, -1 B only, 0 agree
    rng = np.random.default_rng(seed)
    low, high = _interval(_bootstrap_means(delta, samples, rng))
    a_only, b_only = int((delta > 0).sum()), int((delta < 0).sum())
    p = mcnemar_exact_p(a_only, b_only)
    return PairedResult(float(delta.mean()), low, high, p, a_only, b_only, len(a), 1, (p,), (float(delta.mean()),))


def grouped_paired_difference(units: Sequence[tuple[np.ndarray, np.ndarray]], seed: int = 0,
                              samples: int = BOOTSTRAP_SAMPLES) -> PairedResult:
    """A vs B over matched units (one (correct_a, correct_b) pair per seed or split; videos may differ by unit)."""
    if not units:
        raise ValueError("no matched units to compare")
    if len(units) == 1:
        return paired_difference(*units[0], seed=seed, samples=samples)
    deltas = [np.subtract(*(x.astype(np.int8) for x in _check_pair(a, b))) for a, b in units]
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(deltas), size=(samples, len(deltas)))  # units drawn for each replicate
    slot_means = np.empty(picked.shape)
    for u, delta in enumerate(deltas):  # then each drawn unit's videos, resampled afresh every time it is drawn
        where = picked == u
        slot_means[where] = _bootstrap_means(delta, int(where.sum()), rng)
    low, high = _interval(slot_means.mean(1))
    unit_diff = tuple(float(d.mean()) for d in deltas)
    unit_p = tuple(mcnemar_exact_p(int((d > 0).sum()), int((d < 0).sum())) for d in deltas)
    same_sign = all(d > 0 for d in unit_diff) or all(d < 0 for d in unit_diff)
    return PairedResult(
        diff=float(np.mean(unit_diff)),
        ci_low=low,
        ci_high=high,
        p=max(unit_p) if same_sign else 1.0,
        a_only=sum(int((d > 0).sum()) for d in deltas),
        b_only=sum(int((d < 0).sum()) for d in deltas),
        num_videos=len(deltas[0]),
        num_units=len(deltas),
        unit_p=unit_p,
        unit_diff=unit_diff,
        p_mean=mean_difference_p(unit_diff),
    )


def mean_difference_p(unit_diff: Sequence[float]) -> float:
    """Two-sided one-sample t-test p of the per-unit differences against 0; nan with fewer than 2 units or when
    every unit has the same difference (the t statistic is undefined: report the units, not a p-value)."""
    from scipy.stats import ttest_1samp

    diffs = np.asarray(unit_diff, dtype=np.float64)
    if len(diffs) < 2 or float(np.ptp(diffs)) == 0.0:
        return math.nan
    return float(ttest_1samp(diffs, 0.0).pvalue)


def format_p(p: float) -> str:
    """p to two significant digits; tiny values in scientific notation; nan (no test possible) as "-"."""
    if p != p:
        return "-"
    if p >= 0.001:
        return f"{p:.2g}" if p < 1 else "1"
    return f"{p:.1e}"

"""The statistics of compare_runs: known answers for the paired tests, spread over seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stats import format_p, grouped_paired_difference, mcnemar_exact_p, mean_std, paired_difference


def outcomes(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = [True] * both + [True] * a_only + [False] * b_only + [False] * neither
    b = [True] * both + [False] * a_only + [True] * b_only + [False] * neither
    return np.array(a), np.array(b)


def test_identical_runs_give_p_one_and_a_zero_interval() -> None:
    a, _ = outcomes(70, 0, 0, 30)
    result = paired_difference(a, a.copy())
    assert result.p == 1.0 and result.diff == 0.0
    assert (result.ci_low, result.ci_high) == (0.0, 0.0)
    assert (result.a_only, result.b_only, result.num_videos) == (0, 0, 100)


@pytest.mark.parametrize(("a_only", "b_only", "expected"), [
    (8, 2, 112 / 1024),  # 2 * (C(10,0) + C(10,1) + C(10,2)) / 2^10
    (0, 6, 2 / 64),  # 2 * (1/2)^6
    (5, 5, 1.0),
    (1, 0, 1.0),  # one discordant video is no evidence
])
def test_mcnemar_exact_known_p(a_only: int, b_only: int, expected: float) -> None:
    assert mcnemar_exact_p(a_only, b_only) == pytest.approx(expected, rel=1e-12)
    a, b = outcomes(40, a_only, b_only, 20)
    result = paired_difference(a, b)
    assert result.p == pytest.approx(expected, rel=1e-12)
    assert result.diff == pytest.approx((a_only - b_only) / len(a))
    # the agreeing videos change the difference's denominator, never the p-value
    assert paired_difference(*outcomes(400, a_only, b_only, 200)).p == pytest.approx(expected, rel=1e-12)


def test_bootstrap_interval_is_seeded_and_covers_the_difference() -> None:
    a, b = outcomes(60, 25, 5, 10)
    first, again = paired_difference(a, b, seed=3), paired_difference(a, b, seed=3)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert first.diff == pytest.approx(0.2) and first.ci_low < first.diff < first.ci_high
    # normal approximation of the paired difference: sd of the per-video delta / sqrt(n)
    delta = a.astype(int) - b.astype(int)
    half_width = 1.96 * delta.std() / math.sqrt(len(delta))
    assert first.ci_high - first.ci_low == pytest.approx(2 * half_width, rel=0.15)
    assert first.ci_low > 0  # 25 vs 5 discordant: a real gap
    with pytest.raises(ValueError, match="equal"):
        paired_difference(a, b[:-1])


def test_grouped_difference_is_real_only_if_it_holds_in_every_unit() -> None:
    strong, weak = outcomes(50, 20, 2, 8), outcomes(50, 12, 4, 14)
    result = grouped_paired_difference([strong, weak])
    assert result.num_units == 2 and result.a_only == 32 and result.b_only == 6
    assert result.p == max(mcnemar_exact_p(20, 2), mcnemar_exact_p(12, 4))  # the weaker unit decides
    assert result.diff == pytest.approx(np.mean([18 / 80, 8 / 80]))
    assert result.ci_low < result.diff < result.ci_high
    # a gap that flips sign between seeds is no gap, however strong each unit looks
    flipped = grouped_paired_difference([strong, outcomes(50, 2, 20, 8)])
    assert flipped.p == 1.0 and flipped.ci_low < 0 < flipped.ci_high
    # one unit is the plain paired test
    single = grouped_paired_difference([strong], seed=1)
    assert single == paired_difference(*strong, seed=1)


def test_mean_std_and_format_p() -> None:
    assert mean_std([0.5, 0.7, 0.9]) == (pytest.approx(0.7), pytest.approx(0.2), 3)
    mean, std, n = mean_std([0.4, None, float("nan")])
    assert (mean, n) == (0.4, 1) and math.isnan(std)
    assert mean_std([])[2] == 0
    assert format_p(1.0) == "1" and format_p(0.109375) == "0.11" and format_p(1.5e-13) == "1.5e-13"


def test_mean_difference_p_is_a_t_test_over_units_and_undefined_without_spread() -> None:
    from scipy.stats import ttest_1samp

    from stats import mean_difference_p

    assert mean_difference_p([0.3, 0.1, 0.2]) == pytest.approx(ttest_1samp([0.3, 0.1, 0.2], 0.0).pvalue)
    assert math.isnan(mean_difference_p([0.2]))  # one unit: nothing to test the mean against
    assert math.isnan(mean_difference_p([0.2, 0.2]))  # no spread: t is undefined, not "p = 0"
    assert format_p(math.nan) == "-"
    strong, weak = outcomes(50, 20, 2, 8), outcomes(50, 12, 4, 14)
    grouped = grouped_paired_difference([strong, weak])
    assert grouped.p_mean == pytest.approx(mean_difference_p([18 / 80, 8 / 80]))
    assert grouped.p_test == "intersection-union of 2 exact McNemar"
    assert paired_difference(*strong).p_test == "exact McNemar" and math.isnan(paired_difference(*strong).p_mean)

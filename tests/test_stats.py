"""Counts, Wilson intervals and the exact McNemar test, against published values and brute force."""
from __future__ import annotations

import itertools

import pytest

from backend.engine.stats import Rate, mcnemar_exact, paired_change, wilson


@pytest.mark.parametrize("k, n, low, high", [
    (0, 10, 0.0, 0.2775),  # Wilson (1927) / Newcombe (1998), table of 95% intervals
    (10, 10, 0.7225, 1.0),
    (3, 50, 0.0206, 0.1622),
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Statistics in Medicine 17:857, example 1
])
def test_wilson_interval_matches_published_values(k, n, low, high):
    got = wilson(k, n)
    assert got[0] == pytest.approx(low, abs=1e-4) and got[1] == pytest.approx(high, abs=1e-4)


def test_a_rate_reads_as_count_share_and_interval():
    assert str(Rate(3, 50)) == "3/50 (6%, 95% CI 2-16%)"
    assert Rate(1, 8).to_dict() == {"k": 1, "n": 8, "rate": 0.125, **dict(zip(("ci_low", "ci_high"), wilson(1, 8)))}
    assert Rate(0, 0).rate is None and "no prompts" in str(Rate(0, 0))
    with pytest.raises(ValueError, match="0 <= k <= n"):
        Rate(5, 3)


def _brute_mcnemar(b: int, c: int) -> float:
    """Every way the b + c discordant pairs could fall at 1/2 each; two-sided: outcomes as extreme as observed."""
    n = b + c
    counts = [sum(outcome) for outcome in itertools.product((0, 1), repeat=n)]
    extreme = abs(b - n / 2)
    return min(1.0, sum(abs(x - n / 2) >= extreme - 1e-12 for x in counts) / len(counts))


@pytest.mark.parametrize("b, c", [(0, 0), (0, 5), (5, 0), (3, 3), (1, 9), (7, 2), (0, 12)])
def test_exact_mcnemar_matches_enumeration(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(_brute_mcnemar(b, c))


def test_paired_change_counts_each_direction():
    before = [True, True, False, False, True]
    after = [False, True, True, True, True]
    change = paired_change(before, after)
    assert change["only_before"] == 1 and change["only_after"] == 2 and change["n"] == 5
    assert change["p_value"] == pytest.approx(mcnemar_exact(1, 2))
    with pytest.raises(ValueError, match="same prompts"):
        paired_change([True], [True, False])

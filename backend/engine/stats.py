"""Rates as a researcher should read them: a count out of a total with a 95% Wilson interval ("3/50 (6%, 95% CI
2-16%)"), and the exact McNemar test for a change between two measurements of the same prompts."""
from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | tuple[None, None]:
    """The Wilson score interval of k successes in n trials (None, None when n is 0). Unlike the normal
    approximation it stays inside [0, 1] and is honest at 0/n and n/n, the usual case for refusal rates."""
    if n == 0:
        return None, None
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """k of n, with its 95% Wilson interval."""

    k: int
    n: int

    def __post_init__(self):
        if not 0 <= self.k <= self.n:
            raise ValueError(f"a rate needs 0 <= k <= n, got {self.k}/{self.n}")

    @property
    def rate(self) -> float | None:
        return self.k / self.n if self.n else None

    @property
    def ci(self) -> tuple[float, float] | tuple[None, None]:
        return wilson(self.k, self.n)

    def to_dict(self) -> dict:
        low, high = self.ci
        return {"k": self.k, "n": self.n, "rate": self.rate, "ci_low": low, "ci_high": high}

    def __str__(self) -> str:
        if not self.n:
            return "0/0 (no prompts)"
        low, high = self.ci
        return f"{self.k}/{self.n} ({_pct(self.rate)}, 95% CI {_pct(low, sign=False)}-{_pct(high)})"


def _pct(x: float, sign: bool = True) -> str:
    text = f"{100 * x:.0f}" if x < 5e-4 or x >= 0.01 else f"{100 * x:.1f}"  # whole percents, tenths below 1%
    return text + ("%" if sign else "")


def mcnemar_exact(only_before: int, only_after: int) -> float:
    """Two-sided exact McNemar p-value for paired outcomes: `only_before` prompts had the outcome only before the
    intervention, `only_after` only after (the concordant pairs carry no information). Under no change each
    discordant pair goes either way with probability 1/2, so this is a binomial test on them."""
    n = only_before + only_after
    if n == 0:
        return 1.0
    low = min(only_before, only_after)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_change(before: list[bool], after: list[bool]) -> dict:
    """How an outcome (e.g. complied) changed on the same prompts: the counts each way and McNemar's p."""
    if len(before) != len(after):
        raise ValueError(f"paired outcomes need the same prompts, got {len(before)} and {len(after)}")
    only_before = sum(b and not a for b, a in zip(before, after))
    only_after = sum(a and not b for b, a in zip(before, after))
    return {"only_before": only_before, "only_after": only_after, "n": len(before),
            "p_value": mcnemar_exact(only_before, only_after)}

"""Sort units into Safety Critical, Utility Critical, Redundant and Complex units.

With sum = z_S + z_U and diff = z_S - z_U and fractions counted in parameters (later overriding earlier):
RU = bottom h_RU by sum; SCU = top h_SCU by diff; UCU = bottom h_UCU by diff; CU = the rest.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from backend.constants import ROLES

SCU, UCU, CU, RU = range(4)  # role codes: indices into ROLES
BOUNDARY_KEYS = {"RU": "sum", "SCU": "diff", "UCU": "diff"}  # the key each role is ranked by


@dataclass(frozen=True)
class Thresholds:
    """Parameter fractions of each role; defaults are the research code's."""

    h_ru: float = 0.10
    h_scu: float = 0.01
    h_ucu: float = 0.05

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {value!r}")
        if self.h_scu + self.h_ucu > 1:
            raise ValueError(f"h_scu + h_ucu must be at most 1, got {self.h_scu + self.h_ucu:g}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _prefix(order: np.ndarray, mass: np.ndarray, fraction: float) -> np.ndarray:
    """The shortest prefix of `order` whose cumulative parameter `mass` reaches `fraction` of the total."""
    if fraction <= 0 or len(order) == 0:
        return order[:0]
    return order[:int(np.searchsorted(mass, fraction * mass[-1], side="left")) + 1]


def bottom(key: np.ndarray, params: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the lowest-key units whose parameter mass first reaches `fraction` of the total.

    Ties keep the given (canonical) order, so the selection is deterministic.
    """
    order = np.argsort(key, kind="stable")
    selected = np.zeros(len(key), dtype=bool)
    selected[_prefix(order, np.cumsum(np.asarray(params)[order]), fraction)] = True
    return selected


def top(key: np.ndarray, params: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the highest-key units whose parameter mass first reaches `fraction` of the total."""
    return bottom(-key, params, fraction)


class RoleIndex:
    """Roles of one set of units at any thresholds.

    The three orders (by sum for RU, by -diff for SCU, by diff for UCU) do not depend on the thresholds, so they
    are sorted once; each thresholds is then three binary searches (a 460k-unit run: milliseconds, for sliders).
    """

    def __init__(self, z_safety: np.ndarray, z_utility: np.ndarray, params: np.ndarray,
                 blocks: np.ndarray | None = None, block_names: Sequence[tuple[int, str]] = ()):
        z_safety, z_utility = np.asarray(z_safety, dtype=np.float64), np.asarray(z_utility, dtype=np.float64)
        self.params = np.asarray(params, dtype=np.int64)
        self.total = int(self.params.sum())
        total, diff = z_safety + z_utility, z_safety - z_utility
        self._sorted, self._keys = {}, {RU: total, SCU: -diff, UCU: diff}
        for role, key in self._keys.items():
            order = np.argsort(key, kind="stable")
            self._sorted[role] = (order, np.cumsum(self.params[order]))
        self.blocks = np.zeros(len(self.params), dtype=np.int64) if blocks is None else np.asarray(blocks)
        self.block_names = list(block_names)

    @classmethod
    def from_units(cls, units: pd.DataFrame) -> "RoleIndex":
        grouped = units.groupby(["layer", "module"], sort=True)
        return cls(units.z_safety.to_numpy(), units.z_utility.to_numpy(), units.params.to_numpy(),
                   grouped.ngroup().to_numpy(dtype=np.int64), [(int(l), str(m)) for l, m in grouped.size().index])

    def codes(self, thresholds: Thresholds) -> np.ndarray:
        """Role code of every unit (an index into ROLES); later roles override earlier ones."""
        codes = np.full(len(self.params), CU, dtype=np.int64)
        codes[_prefix(*self._sorted[RU], thresholds.h_ru)] = RU
        codes[_prefix(*self._sorted[SCU], thresholds.h_scu)] = SCU
        codes[_prefix(*self._sorted[UCU], thresholds.h_ucu)] = UCU
        return codes

    def roles(self, thresholds: Thresholds) -> np.ndarray:
        return np.array(ROLES, dtype=object)[self.codes(thresholds)]

    def cutoffs(self, thresholds: Thresholds) -> dict[str, float | None]:
        """Each role's boundary on the key it is ranked by (BOUNDARY_KEYS): the key of the last unit its prefix
        takes, so RU is sum <= cutoff, SCU diff >= cutoff and UCU diff <= cutoff, before later roles override
        earlier ones (units tied with the cutoff may fall outside). None for a role that takes no unit."""
        out = {}
        fractions = ((RU, thresholds.h_ru, 1), (SCU, thresholds.h_scu, -1), (UCU, thresholds.h_ucu, 1))
        for role, fraction, sign in fractions:
            taken = _prefix(*self._sorted[role], fraction)
            out[ROLES[role]] = float(sign * self._keys[role][taken[-1]]) if len(taken) else None
        return out

    def summary(self, thresholds: Thresholds) -> dict:
        """Counts and parameter fractions per role, overall and per (layer, module)."""
        return _summary(self.codes(thresholds), self.params, self.blocks, self.block_names)


def boundary_distance(role: str, z_safety: float, z_utility: float, cutoff: float | None) -> float | None:
    """How far a unit sits inside (positive) or outside (negative) a role's boundary, on that role's key."""
    if cutoff is None:
        return None
    key = z_safety + z_utility if BOUNDARY_KEYS[role] == "sum" else z_safety - z_utility
    return float(key - cutoff if role == "SCU" else cutoff - key)


def classify(z_safety: np.ndarray, z_utility: np.ndarray, params: np.ndarray,
             thresholds: Thresholds = Thresholds()) -> np.ndarray:
    """Role of every unit (arrays in canonical order: layer, module 'attn' before 'mlp', unit)."""
    return RoleIndex(z_safety, z_utility, params).roles(thresholds)


def reclassify(units: pd.DataFrame, thresholds: Thresholds) -> pd.DataFrame:
    """A copy of a units table with roles recomputed from its stored z-scores."""
    out = units.copy()
    out["role"] = classify(units.z_safety.to_numpy(), units.z_utility.to_numpy(), units.params.to_numpy(),
                           thresholds)
    return out


def role_summary(units: pd.DataFrame) -> dict:
    """Counts and parameter fractions per role, overall and per (layer, module), of a table's `role` column."""
    grouped = units.groupby(["layer", "module"], sort=True)
    codes = pd.Categorical(units.role, categories=ROLES).codes.astype(np.int64)
    return _summary(codes, units.params.to_numpy(dtype=np.int64), grouped.ngroup().to_numpy(dtype=np.int64),
                    [(int(l), str(m)) for l, m in grouped.size().index])


def _summary(codes: np.ndarray, params: np.ndarray, blocks: np.ndarray, block_names: Sequence[tuple[int, str]]) -> dict:
    total = int(params.sum())
    units = np.bincount(codes, minlength=4)
    mass = np.bincount(codes, weights=params, minlength=4)
    overall = {role: {"units": int(units[i]), "params": int(mass[i]),
                      "param_fraction": float(int(mass[i])) / total if total else 0.0} for i, role in enumerate(ROLES)}
    per_block = np.bincount(blocks * 4 + codes, minlength=4 * max(len(block_names), 1)).reshape(-1, 4)
    per_layer = [{"layer": layer, "module": module, **{role: int(n) for role, n in zip(ROLES, counts)}}
                 for (layer, module), counts in zip(block_names, per_block)]
    return {"overall": overall, "per_layer": per_layer, "total_params": total, "units": len(codes)}

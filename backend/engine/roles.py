"""Sort units into Safety Critical, Utility Critical, Redundant and Complex units.

With sum = z_S + z_U and diff = z_S - z_U and fractions counted in parameters (later overriding earlier):
RU = bottom h_RU by sum; SCU = top h_SCU by diff; UCU = bottom h_UCU by diff; CU = the rest.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

ROLES = ("SCU", "UCU", "CU", "RU")


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


def bottom(key: np.ndarray, params: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the lowest-key units whose parameter mass first reaches `fraction` of the total.

    Ties keep the given (canonical) order, so the selection is deterministic.
    """
    selected = np.zeros(len(key), dtype=bool)
    if fraction <= 0 or len(key) == 0:
        return selected
    order = np.argsort(key, kind="stable")
    mass = np.cumsum(params[order])
    target = fraction * mass[-1]
    count = int(np.searchsorted(mass, target, side="left")) + 1  # shortest prefix with mass >= target
    selected[order[:count]] = True
    return selected


def top(key: np.ndarray, params: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the highest-key units whose parameter mass first reaches `fraction` of the total."""
    return bottom(-key, params, fraction)


def classify(z_safety: np.ndarray, z_utility: np.ndarray, params: np.ndarray,
             thresholds: Thresholds = Thresholds()) -> np.ndarray:
    """Role of every unit (arrays in canonical order: layer, module 'attn' before 'mlp', unit)."""
    z_safety, z_utility = np.asarray(z_safety, dtype=np.float64), np.asarray(z_utility, dtype=np.float64)
    params = np.asarray(params, dtype=np.int64)
    total, diff = z_safety + z_utility, z_safety - z_utility
    roles = np.full(len(params), "CU", dtype=object)
    roles[bottom(total, params, thresholds.h_ru)] = "RU"
    roles[top(diff, params, thresholds.h_scu)] = "SCU"
    roles[bottom(diff, params, thresholds.h_ucu)] = "UCU"
    return roles


def reclassify(units: pd.DataFrame, thresholds: Thresholds) -> pd.DataFrame:
    """A copy of a units table with roles recomputed from its stored z-scores."""
    out = units.copy()
    out["role"] = classify(units.z_safety.to_numpy(), units.z_utility.to_numpy(), units.params.to_numpy(),
                           thresholds)
    return out


def role_summary(units: pd.DataFrame) -> dict:
    """Counts and parameter fractions per role, overall and per (module, layer)."""
    total = int(units.params.sum())

    def tally(frame: pd.DataFrame) -> dict:
        g = frame.groupby("role").params.agg(["count", "sum"])
        return {r: {"units": int(g["count"].get(r, 0)), "params": int(g["sum"].get(r, 0)),
                    "param_fraction": float(g["sum"].get(r, 0)) / total if total else 0.0} for r in ROLES}

    per_layer = [{"layer": int(layer), "module": module, **{r: v["units"] for r, v in tally(g).items()}}
                 for (layer, module), g in units.groupby(["layer", "module"], sort=True)]
    return {"overall": tally(units), "per_layer": per_layer, "total_params": total, "units": len(units)}

"""Role transfer: how units change role between two runs of the same architecture (e.g. base vs aligned model,
or before vs after fine-tuning), and how much of the SCU set survives (Jaccard index).

The Jaccard index of two empty SCU sets is undefined: it is NaN here and None in JSON, so that a layer with no
SCU on either side neither raises nor lowers an average.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from backend.engine.roles import ROLES

KEYS = ["layer", "module", "unit"]


@dataclass(frozen=True)
class RoleTransfer:
    """Transitions from the roles of run A (rows) to those of run B (columns), in units and in parameters."""

    transitions_units: pd.DataFrame  # 4 x 4, index = role in A, columns = role in B, order ROLES
    transitions_params: pd.DataFrame
    scu_jaccard: float  # |SCU_A ∩ SCU_B| / |SCU_A ∪ SCU_B| in units; NaN when both are empty
    scu_jaccard_params: float  # the same, weighted by parameters
    scu_per_layer: pd.DataFrame  # layer, module, jaccard, scu_a, scu_b, both (units)

    @property
    def same_role_fraction(self) -> float:
        """Fraction of units whose role is the same in both runs."""
        m = self.transitions_units.to_numpy()
        return float(np.trace(m) / m.sum()) if m.sum() else math.nan

    def to_dict(self) -> dict:
        """JSON-ready: matrices as {role_a: {role_b: n}}, NaN as None."""
        def matrix(frame: pd.DataFrame) -> dict:
            return {a: {b: int(frame.loc[a, b]) for b in ROLES} for a in ROLES}

        return {
            "roles": list(ROLES),
            "units": int(self.transitions_units.to_numpy().sum()),
            "params": int(self.transitions_params.to_numpy().sum()),
            "transitions_units": matrix(self.transitions_units),
            "transitions_params": matrix(self.transitions_params),
            "same_role_fraction": _json_float(self.same_role_fraction),
            "scu_jaccard": _json_float(self.scu_jaccard),
            "scu_jaccard_params": _json_float(self.scu_jaccard_params),
            "scu_per_layer": [
                {"layer": int(r.layer), "module": str(r.module), "jaccard": _json_float(r.jaccard),
                 "scu_a": int(r.scu_a), "scu_b": int(r.scu_b), "both": int(r.both)}
                for r in self.scu_per_layer.itertuples(index=False)],
        }


def _json_float(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def jaccard(both: float, a: float, b: float) -> float:
    """|A ∩ B| / |A ∪ B| from the sizes of A, B and their intersection; NaN when both are empty."""
    union = a + b - both
    return float(both) / float(union) if union else math.nan


def _check(table: pd.DataFrame, name: str) -> None:
    missing = [c for c in (*KEYS, "params", "role") if c not in table.columns]
    if missing:
        raise ValueError(f"units table {name} lacks columns {missing}")
    bad = sorted(set(table.role) - set(ROLES))
    if bad:
        raise ValueError(f"units table {name} has unknown role {bad[0]!r}; roles are {', '.join(ROLES)}")
    dup = table.duplicated(KEYS)
    if dup.any():
        layer, module, unit = table.loc[dup, KEYS].iloc[0]
        raise ValueError(f"units table {name} lists {module} unit {unit} of layer {layer} twice")


def compare(a: pd.DataFrame, b: pd.DataFrame) -> RoleTransfer:
    """Role transitions and SCU overlap between two units tables of the same architecture (same units, same
    parameters per unit); anything else is a ValueError saying where they differ."""
    _check(a, "A")
    _check(b, "B")
    merged = a[[*KEYS, "params", "role"]].merge(b[[*KEYS, "params", "role"]], on=KEYS, how="outer",
                                                suffixes=("_a", "_b"), indicator=True)
    only = merged[merged._merge != "both"]
    if len(only):
        layer, module, unit, side = only.iloc[0][[*KEYS, "_merge"]]
        where = "A" if side == "left_only" else "B"
        raise ValueError(f"the runs are of different architectures: {module} unit {unit} of layer {layer} is only "
                         f"in {where} ({len(only)} units are in one run only)")
    differ = merged[merged.params_a != merged.params_b]
    if len(differ):
        r = differ.iloc[0]
        raise ValueError(f"the runs are of different architectures: {r.module} unit {r.unit} of layer {r.layer} has "
                         f"{r.params_a} parameters in A and {r.params_b} in B")
    merged = merged.sort_values(KEYS, kind="stable").reset_index(drop=True)
    role_a = pd.Categorical(merged.role_a, categories=ROLES)
    role_b = pd.Categorical(merged.role_b, categories=ROLES)
    params = merged.params_a.astype(np.int64)

    def table(values: pd.Series) -> pd.DataFrame:
        t = values.groupby([role_a, role_b], observed=False).sum().unstack(fill_value=0)
        t = t.reindex(index=list(ROLES), columns=list(ROLES), fill_value=0).astype(np.int64)
        t.index.name, t.columns.name = "A", "B"
        return t

    units_t = table(pd.Series(np.ones(len(merged), dtype=np.int64)))
    params_t = table(params)
    scu_a, scu_b = (merged.role_a == "SCU").to_numpy(), (merged.role_b == "SCU").to_numpy()
    both = scu_a & scu_b
    per_layer = (pd.DataFrame({"layer": merged.layer.astype(np.int64), "module": merged.module,
                               "scu_a": scu_a.astype(np.int64), "scu_b": scu_b.astype(np.int64),
                               "both": both.astype(np.int64)})
                 .groupby(["layer", "module"], sort=True, as_index=False).sum())
    per_layer.insert(2, "jaccard", [jaccard(n, x, y) for n, x, y in
                                    zip(per_layer.both, per_layer.scu_a, per_layer.scu_b)])
    p = params.to_numpy()
    return RoleTransfer(
        transitions_units=units_t,
        transitions_params=params_t,
        scu_jaccard=jaccard(both.sum(), scu_a.sum(), scu_b.sum()),
        scu_jaccard_params=jaccard(p[both].sum(), p[scu_a].sum(), p[scu_b].sum()),
        scu_per_layer=per_layer,
    )

"""Roles of a stored run at any thresholds, fast enough for a slider.

`engine.roles.classify` sorts the units three times on every call; those orders do not depend on the thresholds,
so a RoleIndex sorts once per run and then answers each thresholds with three binary searches and a few bincounts
(a 460k-unit run: about 10 ms instead of about 1 s). It follows `roles.bottom`/`roles.top` step for step (the same
stable sorts, the same cumulative parameter mass, the same `searchsorted`), and tests check that it gives exactly
`role_summary(reclassify(units, thresholds))`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

ROLES = ("SCU", "UCU", "CU", "RU")  # codes 0..3, the order of engine.roles.ROLES
SCU, UCU, CU, RU = range(4)


class RoleIndex:
    def __init__(self, units: pd.DataFrame):
        z_safety = units.z_safety.to_numpy(dtype=np.float64)
        z_utility = units.z_utility.to_numpy(dtype=np.float64)
        self.params = units.params.to_numpy(dtype=np.int64)
        self.total = int(self.params.sum())
        total, diff = z_safety + z_utility, z_safety - z_utility
        # (order, cumulative parameter mass) of the keys that roles.bottom sorts: sum (RU), -diff (SCU), diff (UCU)
        self._sorted = {}
        for role, key in ((RU, total), (SCU, -diff), (UCU, diff)):
            order = np.argsort(key, kind="stable")
            self._sorted[role] = (order, np.cumsum(self.params[order]))
        grouped = units.groupby(["layer", "module"], sort=True)  # the per-layer order of roles.role_summary
        self.blocks = list(grouped.size().index)
        self.block = grouped.ngroup().to_numpy(dtype=np.int64)

    def _first(self, role: int, fraction: float) -> np.ndarray:
        """The units `roles.bottom` selects for this role's key: the shortest prefix reaching `fraction`."""
        order, mass = self._sorted[role]
        if fraction <= 0 or len(order) == 0:
            return order[:0]
        count = int(np.searchsorted(mass, fraction * mass[-1], side="left")) + 1
        return order[:count]

    def codes(self, h_ru: float, h_scu: float, h_ucu: float) -> np.ndarray:
        """Role code of every unit (later roles overriding earlier, as in `roles.classify`)."""
        codes = np.full(len(self.params), CU, dtype=np.int64)
        codes[self._first(RU, h_ru)] = RU
        codes[self._first(SCU, h_scu)] = SCU
        codes[self._first(UCU, h_ucu)] = UCU
        return codes

    def summary(self, h_ru: float, h_scu: float, h_ucu: float) -> dict:
        """The same dict as `roles.role_summary(reclassify(units, Thresholds(h_ru, h_scu, h_ucu)))`."""
        codes = self.codes(h_ru, h_scu, h_ucu)
        units = np.bincount(codes, minlength=4)
        params = np.bincount(codes, weights=self.params, minlength=4)
        overall = {role: {"units": int(units[i]), "params": int(params[i]),
                          "param_fraction": float(int(params[i])) / self.total if self.total else 0.0}
                   for i, role in enumerate(ROLES)}
        per_block = np.bincount(self.block * 4 + codes, minlength=4 * len(self.blocks)).reshape(-1, 4)
        per_layer = [{"layer": int(layer), "module": module, **{role: int(n) for role, n in zip(ROLES, counts)}}
                     for (layer, module), counts in zip(self.blocks, per_block)]
        return {"overall": overall, "per_layer": per_layer, "total_params": self.total, "units": len(codes)}

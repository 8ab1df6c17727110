"""The role map and the z-score scatter of a run, sized for the browser.

An 8B model has about 460,000 units, so neither view sends one point per unit: the map bins each layer's MLP
channels into at most `MAX_COLUMNS` cells (heads are few and stay one cell each) and the scatter keeps every
SCU and UCU but only a fixed sample of CU and RU. Everything that does not depend on the thresholds (bins, cell
labels, the sample order) is computed once per run; a slider move only recounts roles per cell.

Roles at other thresholds come from the engine's `RoleIndex` (numpy and pandas only, the code behind
`GET /runs/{id}/roles`) applied to the units table the API served, so the map always agrees with the counts.
"""
from __future__ import annotations

import base64
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pandas as pd

from backend.engine.roles import RoleIndex, Thresholds  # numpy and pandas only: no torch

from .figures import AXIS, LAYOUT, ROLE_COLORS, ROLES, integer_ticks

MAX_COLUMNS = 256  # cells per layer row of the MLP map: 14,336 channels -> 56 per cell
KEEP_ALL_CAP = 25_000  # SCU and UCU points kept in full up to this many per role (all of them at the default
#                        thresholds of an 8B model: about 4,600 SCU and 23,000 UCU), then sampled
SAMPLE = {"CU": 6_000, "RU": 3_000}  # points drawn (in a fixed order) from the bulk roles
MODULE_NAMES = {"mlp": "MLP channel", "attn": "head"}


@dataclass
class Grid:
    """One module's units laid out as layers x cells."""

    module: str
    layers: np.ndarray  # layer number of each row
    width: int  # units per cell
    columns: int
    rows_of: np.ndarray  # the module's unit rows in the units table
    cell: np.ndarray  # cell (row * columns + column) of each of those units
    cell_params: np.ndarray  # parameters per cell
    scores: np.ndarray  # per cell, threshold-independent hover numbers (see RunMap._grid)
    occupied: np.ndarray  # bool per cell

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.layers), self.columns


def typed(array: np.ndarray, dtype: str = "f4") -> dict:
    """A numpy array as plotly.js's typed-array spec (base64 bytes, any of 1-3 dimensions): a quarter of the size
    of JSON numbers, and decoded without parsing."""
    array = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    spec = {"dtype": dtype, "bdata": base64.b64encode(array.tobytes()).decode("ascii")}
    if array.ndim > 1:
        spec["shape"] = ", ".join(map(str, array.shape))
    return spec


class RunMap:
    """Per-run arrays for the map and the scatter, built once from the units table."""

    def __init__(self, units: pd.DataFrame):
        self.index = RoleIndex.from_units(units)
        self.size = len(units)
        self.z_safety = units.z_safety.to_numpy(dtype=np.float64)
        self.z_utility = units.z_utility.to_numpy(dtype=np.float64)
        self.diff = self.z_safety - self.z_utility
        self.sum = self.z_safety + self.z_utility
        self.params = units.params.to_numpy(dtype=np.int64)
        self.layer = units.layer.to_numpy(dtype=np.int64)
        self.unit = units.unit.to_numpy(dtype=np.int64)
        self.is_mlp = (units.module == "mlp").to_numpy()
        self.order = np.random.default_rng(0).permutation(self.size)  # the scatter's fixed sampling order
        self.limits = [float(min(self.z_safety.min(), self.z_utility.min())),
                       float(max(self.z_safety.max(), self.z_utility.max()))]
        self.grids = {m: self._grid(m) for m in ("mlp", "attn")
                      if (self.is_mlp if m == "mlp" else ~self.is_mlp).any()}
        self._codes: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    def codes(self, h_ru: float, h_scu: float, h_ucu: float) -> np.ndarray:
        """Role code of every unit (0..3 = SCU, UCU, CU, RU) at these thresholds (a few recent ones cached)."""
        key = (h_ru, h_scu, h_ucu)
        with self._lock:
            if key in self._codes:
                return self._codes[key]
        codes = self.index.codes(Thresholds(h_ru, h_scu, h_ucu))
        with self._lock:
            self._codes[key] = codes
            while len(self._codes) > 8:
                self._codes.popitem(last=False)
        return codes

    def _grid(self, module: str) -> Grid:
        rows_of = np.flatnonzero(self.is_mlp if module == "mlp" else ~self.is_mlp)
        layer, unit = self.layer[rows_of], self.unit[rows_of]
        layers = np.unique(layer)
        row = np.searchsorted(layers, layer)
        span = int(unit.max()) + 1
        width = max(1, math.ceil(span / (MAX_COLUMNS if module == "mlp" else 1024)))
        columns = math.ceil(span / width)
        cell = row * columns + unit // width
        n_cells = len(layers) * columns
        count = np.bincount(cell, minlength=n_cells)
        z_s, z_u = self.z_safety[rows_of], self.z_utility[rows_of]
        if width == 1:  # z_safety, z_utility of the cell's unit
            scores = np.zeros((n_cells, 2))
            scores[cell, 0], scores[cell, 1] = z_s, z_u
        else:  # last channel, mean z_safety, mean z_utility, then the most safety-leaning channel and its z's
            scores = np.zeros((n_cells, 6))
            scores[:, 0] = (np.arange(n_cells) % columns) * width + np.maximum(count, 1) - 1
            scores[:, 1] = np.bincount(cell, weights=z_s, minlength=n_cells) / np.maximum(count, 1)
            scores[:, 2] = np.bincount(cell, weights=z_u, minlength=n_cells) / np.maximum(count, 1)
            by_diff = np.lexsort((self.diff[rows_of], cell))  # per cell ascending diff: its last is the top
            top = by_diff[np.r_[np.flatnonzero(np.diff(cell[by_diff])), len(by_diff) - 1]]
            scores[cell[top], 3], scores[cell[top], 4], scores[cell[top], 5] = unit[top], z_s[top], z_u[top]
        return Grid(module, layers, width, columns, rows_of, cell,
                    np.bincount(cell, weights=self.params[rows_of], minlength=n_cells), scores, count > 0)

    # -- figures (plain dicts with typed arrays: no per-call validation by plotly.py, which costs more than
    #    the numbers themselves for a 460k-unit run) --------------------------------------------------------

    def map_figure(self, module: str, codes: np.ndarray, color: str = "role") -> dict:
        """The role map of one module: layers (rows) x units (columns, binned for MLP channels).

        color="role": each cell takes the role most over-represented in it (its share of the cell's parameters
        over its share of the module's), which for a one-unit cell is simply the unit's role; color="SCU" etc.:
        the share of the cell's parameters in that role. Hover names the cell (or unit), its role counts and
        scores.
        """
        grid = self.grids[module]
        n_cells = grid.shape[0] * grid.shape[1]
        unit_codes = codes[grid.rows_of]
        role_params = np.bincount(grid.cell * 4 + unit_codes, weights=self.params[grid.rows_of],
                                  minlength=4 * n_cells).reshape(n_cells, 4)
        share = role_params / np.maximum(grid.cell_params, 1)[:, None]
        name = MODULE_NAMES[module]
        if color in ROLES:
            z = share[:, ROLES.index(color)]
            trace = dict(zmin=0.0, zmax=1.0 if grid.width == 1 else max(float(z.max()), 1e-9),
                         colorscale=[[0, "#eef0f3"], [1, ROLE_COLORS[color]]],
                         colorbar=dict(title=dict(text=f"{color} share", side="right"), thickness=12))
        else:
            overall = role_params.sum(axis=0) / max(role_params.sum(), 1)
            z = np.argmax(share / np.where(overall > 0, overall, np.inf), axis=1).astype(np.float32)
            trace = dict(zmin=-0.5, zmax=3.5, colorscale=_discrete([ROLE_COLORS[r] for r in ROLES]),
                         colorbar=dict(tickvals=[0, 1, 2, 3], ticktext=list(ROLES), thickness=12))
        z = np.where(grid.occupied, z, np.nan).reshape(grid.shape)
        if grid.width == 1:
            unit_role = np.argmax(role_params, axis=1)
            custom = np.concatenate([unit_role[:, None], grid.scores], axis=1)
            hover = ("<b>%{customdata[0]}</b> · layer %{y} · " + name + " %{x}<br>"
                     "z_safety %{customdata[1]:.2f} · z_utility %{customdata[2]:.2f}<extra></extra>")
            trace["customdata"] = custom.reshape(*grid.shape, 3).tolist() if n_cells <= 4096 else None
            if trace["customdata"] is None:  # many single-unit cells: typed, with the role as a number
                trace["customdata"] = typed(custom.reshape(*grid.shape, 3))
                hover = hover.replace("<b>%{customdata[0]}</b>", "role %{customdata[0]} (0 SCU, 1 UCU, 2 CU, 3 RU)")
            else:
                for row in trace["customdata"]:
                    for cell in row:
                        cell[0] = ROLES[int(cell[0])]
        else:
            counts = np.bincount(grid.cell * 4 + unit_codes, minlength=4 * n_cells).reshape(n_cells, 4)
            custom = np.concatenate([counts, grid.scores], axis=1).reshape(*grid.shape, 10)
            trace["customdata"] = typed(custom)
            hover = ("<b>layer %{y}</b> · " + name + "s %{x}–%{customdata[4]}<br>"
                     "SCU %{customdata[0]} · UCU %{customdata[1]} · CU %{customdata[2]} · RU %{customdata[3]}<br>"
                     "mean z_safety %{customdata[5]:.2f} · z_utility %{customdata[6]:.2f}<br>"
                     "top z_S − z_U: " + name + " %{customdata[7]} "
                     "(z_safety %{customdata[8]:.2f}, z_utility %{customdata[9]:.2f})<extra></extra>")
        what = "MLP channels" if module == "mlp" else "attention heads"
        binned = f" ({grid.width} per cell)" if grid.width > 1 else ""
        return {"data": [dict(type="heatmap", z=typed(z), x=typed(np.arange(grid.columns) * grid.width, "i4"),
                              y=typed(grid.layers, "i4"), hovertemplate=hover, ygap=1, **trace)],
                "layout": {**LAYOUT, "title": {"text": f"Role map: {what}{binned}"},
                           "height": max(220, 90 + 14 * len(grid.layers)),
                           "xaxis": dict(title={"text": name}, showgrid=False,
                                         **integer_ticks(grid.columns * grid.width, 12)),
                           "yaxis": dict(title={"text": "layer"}, showgrid=False,
                                         **integer_ticks(len(grid.layers)))}}

    def scatter_figure(self, codes: np.ndarray) -> dict:
        """z_safety vs z_utility: every SCU and UCU, a fixed sample of CU and RU, and the threshold lines."""
        traces, shown, capped = [], 0, False
        ordered_codes = codes[self.order]
        scale = 2 if self.size < 20_000 else 1  # few points: draw them larger
        small = max(self.layer.max(), self.unit.max()) < 65536
        for role in ("CU", "RU", "UCU", "SCU"):  # bulk first, so the rare roles are drawn on top
            picked = self.order[ordered_codes == ROLES.index(role)]
            limit = SAMPLE.get(role, KEEP_ALL_CAP)
            capped = capped or (role not in SAMPLE and len(picked) > limit)
            picked = np.sort(picked[:limit])
            shown += len(picked)
            first = True
            for module, mask in (("mlp", self.is_mlp[picked]), ("attn", ~self.is_mlp[picked])):
                rows = picked[mask]
                if not len(rows):
                    continue
                custom = np.stack([self.layer[rows], self.unit[rows]], axis=1)
                rare = role in ("SCU", "UCU")
                traces.append(dict(
                    type="scattergl", mode="markers", name=role, legendgroup=role, showlegend=first,
                    x=typed(self.z_safety[rows]), y=typed(self.z_utility[rows]),
                    customdata=typed(custom, "u2" if small else "u4"),
                    marker=dict(color=ROLE_COLORS[role], size=(4 if rare else 3) * scale,
                                opacity=0.9 if rare else 0.6),
                    hovertemplate=(f"<b>{role}</b> · layer %{{customdata[0]}} · {MODULE_NAMES[module]} "
                                   "%{customdata[1]}<br>z_safety %{x:.2f} · z_utility %{y:.2f}<extra></extra>")))
                first = False
        lo, hi = self.limits
        for role, kind, value in self.boundaries(codes):
            ys = [lo - value, hi - value] if kind == "diff" else [value - lo, value - hi]
            label = f"z_S − z_U = {value:.2f}" if kind == "diff" else f"z_S + z_U = {value:.2f}"
            traces.append(dict(type="scatter", x=[lo, hi], y=ys, mode="lines", name=f"{role} boundary ({label})",
                               line=dict(color=ROLE_COLORS[role], dash="dash", width=1.5), hoverinfo="skip"))
        note = (f"{shown:,} of {len(codes):,} units drawn: every SCU and UCU"
                f"{f' (sampled beyond {KEEP_ALL_CAP:,} each)' if capped else ''}, a fixed sample of CU and RU")
        return {"data": traces,
                "layout": {**LAYOUT, "title": {"text": "z_safety vs z_utility"}, "height": 460,
                           "xaxis": dict(title={"text": "z_safety"}, range=[lo, hi], **AXIS),
                           "yaxis": dict(title={"text": "z_utility"}, range=[lo, hi], **AXIS),
                           "legend": dict(orientation="h", y=-0.18),
                           "annotations": [dict(text=note, xref="paper", yref="paper", x=0, y=1.0, showarrow=False,
                                                xanchor="left", yanchor="bottom",
                                                font=dict(size=11, color="#555"))]}}

    def boundaries(self, codes: np.ndarray) -> list[tuple[str, str, float]]:
        """Where each role now starts, on the key it is ranked by: (role, 'diff'|'sum', value)."""
        out = []
        for role, kind, pick in (("SCU", "diff", np.min), ("UCU", "diff", np.max), ("RU", "sum", np.max)):
            mask = codes == ROLES.index(role)
            if mask.any():
                out.append((role, kind, float(pick((self.diff if kind == "diff" else self.sum)[mask]))))
        return out


def _discrete(colors: list[str]) -> list[list]:
    """A colorscale with one flat band per colour over [zmin, zmax]."""
    scale, n = [], len(colors)
    for i, color in enumerate(colors):
        scale += [[i / n, color], [(i + 1) / n, color]]
    return scale


class RunMaps:
    """Recently opened runs' maps, keyed by API and run id (a finished run's units never change)."""

    def __init__(self, size: int = 4):
        self.size = size
        self._maps: OrderedDict[tuple[str, str], RunMap] = OrderedDict()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, api, run_id: str) -> RunMap:
        """The run's map; the caller must already have checked (with its own token) that it may read the run."""
        key = (api.base_url, run_id)
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return self._maps[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one download per run, however many callbacks ask at once
            with self._lock:
                if key in self._maps:
                    return self._maps[key]
            built = RunMap(api.units_table(run_id))
            with self._lock:
                self._maps[key] = built
                self._loading.pop(key, None)
                while len(self._maps) > self.size:
                    self._maps.popitem(last=False)
            return built


RUN_MAPS = RunMaps()

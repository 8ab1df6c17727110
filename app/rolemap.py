"""The role map and the z-score scatter of a run, sized for the browser and honest about proportions.

An 8B model has about 460,000 units (14,336 MLP channels a layer), so neither view sends one mark per unit:

- The map lays each module's units out as layers (rows) by units (columns). By default a row holds its layer's
  units ranked by role (SCU, CU, RU, UCU, each by descending z_S - z_U), so a row reads as a gradient from
  safety-leaning to utility-leaning and each role fills a run of cells as long as its share of the layer. A cell
  holding several units takes the role of its middle unit: with the units ranked, that is the row drawn as a
  stacked bar at cell resolution, so a role's share of the area is its share of the units, within one cell per
  row and role. (Ordered by index instead, the middle unit is a systematic sample: right on average.) The window
  shown is re-binned on every zoom, down to one unit per cell, and the cells carry their counts for the hover.
- The scatter (z_safety vs z_utility) keeps robust axes (0.5-99.5th percentiles with a margin), draws the dense
  bulk as per-role density (2-D histograms on a log colour scale), the units of sparse bins one by one, and those
  beyond the axes as arrows on the edge that keep their true values for the hover.

Everything that does not depend on the thresholds (each layer's order by z_S - z_U, the scatter's bins) is computed
once per run; a slider move recounts roles, a zoom re-bins a window. Roles at other thresholds come from the
engine's `RoleIndex` (numpy and pandas only, the code behind `GET /runs/{id}/roles`) applied to the units table the
API served, so the map always agrees with the counts.
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

from .figures import AXIS, INK, LAYOUT, ROLE_COLORS, ROLES, integer_ticks, is_pale, role_line, role_ramp

MAX_COLUMNS = 256  # cells per row of a map window: 14,336 channels -> 56 per cell, a zoom to <= 256 -> 1 per cell
RANKED = ("SCU", "CU", "RU", "UCU")  # left to right along a row ranked by role
ORDERS = ("role", "index")
COLORS = ("role", *ROLES)  # the role, or one role's share of each cell
NBINS = 100  # scatter bins per axis
SPARSE = 3  # units of a scatter bin holding at most this many are drawn one by one ...
MAX_POINTS = 20_000  # ... while there are at most this many of them
PERCENTILES = (0.5, 99.5)  # the scatter's axes, with MARGIN of their span either side
MARGIN = 0.06
LISTED = 200  # units listed for one cell or bin
MODULE_NAMES = {"mlp": "MLP channel", "attn": "head"}
MODULE_PLURALS = {"mlp": "MLP channels", "attn": "attention heads"}
CELL_WORDS = {"mlp": ("channel", "channels"), "attn": ("head", "heads")}
DRAW_ORDER = ("CU", "RU", "UCU", "SCU")  # the scatter draws the bulk first, so the rare roles are on top
_RANK_OF_CODE = np.array([RANKED.index(role) for role in ROLES], dtype=np.int8)  # role code -> place in a row


def typed(array: np.ndarray, dtype: str = "f4") -> dict:
    """A numpy array as plotly.js's typed-array spec (base64 bytes, any of 1-3 dimensions): a quarter of the size
    of JSON numbers, and decoded without parsing."""
    array = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<"))
    spec = {"dtype": dtype, "bdata": base64.b64encode(array.tobytes()).decode("ascii")}
    if array.ndim > 1:
        spec["shape"] = ", ".join(map(str, array.shape))
    return spec


@dataclass
class Grid:
    """One module's units as layers x positions, in the two orders that do not depend on the thresholds."""

    module: str
    layers: np.ndarray  # layer number of each row
    span: int  # positions in the longest row
    by_index: np.ndarray  # rows x span: units-table row of the unit with that index (-1: none)
    by_diff: np.ndarray  # rows x span: units-table rows by descending z_S - z_U (padded with -1 at the end)


@dataclass
class Window:
    """The part of a map shown: positions [start, stop) of layers [first, last], `width` positions a cell."""

    start: int
    stop: int
    first: int  # layer numbers, inclusive
    last: int
    width: int
    row0: int  # grid rows [row0, row1)
    row1: int

    @property
    def columns(self) -> int:
        return math.ceil((self.stop - self.start) / self.width)

    def cell(self, x: float) -> tuple[int, int]:
        """Positions [start, stop) of the cell whose centre is nearest to x."""
        column = min(max(round((x - self.start - (self.width - 1) / 2) / self.width), 0), self.columns - 1)
        start = self.start + column * self.width
        return start, min(start + self.width, self.stop)


class RolesAt:
    """A run's roles at one set of thresholds: the code of every unit and, once asked for, each module's rows
    ranked by role."""

    def __init__(self, runmap: "RunMap", thresholds: tuple[float, float, float], codes: np.ndarray):
        self.runmap, self.thresholds, self.codes = runmap, thresholds, codes
        self.small_codes = codes.astype(np.int8)  # for gathers over many units
        self._ranked: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def layout(self, module: str, order: str) -> np.ndarray:
        """rows x span units-table rows of a module in this order ('role' or 'index')."""
        grid = self.runmap.grids[module]
        if order != "role":
            return grid.by_index
        with self._lock:
            if module not in self._ranked:
                self._ranked[module] = _ranked(grid.by_diff, self.codes)
            return self._ranked[module]


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
        self.grids = {m: self._grid(m) for m in ("mlp", "attn")
                      if (self.is_mlp if m == "mlp" else ~self.is_mlp).any()}
        self._plane: dict | None = None
        self._rankings: tuple[np.ndarray, np.ndarray] | None = None  # all units by descending diff, ascending sum
        self.z32 = (self.z_safety.astype(np.float32), self.z_utility.astype(np.float32))  # for gathers over many
        self._roles: OrderedDict[tuple, RolesAt] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.size

    def at(self, h_ru: float, h_scu: float, h_ucu: float) -> RolesAt:
        """The roles at these thresholds (a few recent ones cached)."""
        key = (float(h_ru), float(h_scu), float(h_ucu))
        with self._lock:
            if key in self._roles:
                self._roles.move_to_end(key)
                return self._roles[key]
        roles = RolesAt(self, key, self.index.codes(Thresholds(*key)))
        with self._lock:
            self._roles[key] = roles
            while len(self._roles) > 8:
                self._roles.popitem(last=False)
        return roles

    def codes(self, h_ru: float, h_scu: float, h_ucu: float) -> np.ndarray:
        """Role code of every unit (0..3 = SCU, UCU, CU, RU) at these thresholds."""
        return self.at(h_ru, h_scu, h_ucu).codes

    def _grid(self, module: str) -> Grid:
        rows_of = np.flatnonzero(self.is_mlp if module == "mlp" else ~self.is_mlp)
        layer, unit = self.layer[rows_of], self.unit[rows_of]
        layers = np.unique(layer)
        row = np.searchsorted(layers, layer)
        span = int(unit.max()) + 1
        by_index = np.full((len(layers), span), -1, dtype=np.int64)
        by_index[row, unit] = rows_of
        key = np.where(by_index >= 0, -self.diff[np.maximum(by_index, 0)], np.inf)  # the missing last
        by_diff = np.take_along_axis(by_index, np.argsort(key, axis=1, kind="stable"), axis=1)
        return Grid(module, layers, span, by_index, by_diff)

    # -- the map -------------------------------------------------------------------------------------------------

    def window(self, module: str, x: list | tuple | None = None, y: list | tuple | None = None) -> Window:
        """The cells of a zoom: positions x = [start, stop) and layers y = [first, last] (None: all), re-binned so
        that the window is at most MAX_COLUMNS cells wide."""
        grid = self.grids[module]
        start, stop = (0, grid.span) if not x else (int(x[0]), int(x[1]))
        start = min(max(start, 0), grid.span - 1)
        stop = min(max(stop, start + 1), grid.span)
        first, last = (int(grid.layers[0]), int(grid.layers[-1])) if not y else sorted((int(y[0]), int(y[1])))
        row0, row1 = int(np.searchsorted(grid.layers, first)), int(np.searchsorted(grid.layers, last, "right"))
        if row1 <= row0:  # no layer in that range: all of them
            row0, row1 = 0, len(grid.layers)
        return Window(start, stop, int(grid.layers[row0]), int(grid.layers[row1 - 1]),
                      max(1, math.ceil((stop - start) / MAX_COLUMNS)), row0, row1)

    def _cells(self, module: str, roles: RolesAt, order: str, win: Window) -> np.ndarray:
        """rows x columns x width units-table rows of the window's cells (-1: none)."""
        block = roles.layout(module, order)[win.row0:win.row1, win.start:win.stop]
        pad = win.columns * win.width - block.shape[1]
        if pad:
            block = np.pad(block, ((0, 0), (0, pad)), constant_values=-1)
        return block.reshape(block.shape[0], win.columns, win.width)

    def map_figure(self, module: str, roles: RolesAt, color: str = "role", order: str = "role",
                   x: list | tuple | None = None, y: list | tuple | None = None) -> dict:
        """The role map of one module in a window (default: all of it), as a plain figure dict.

        color="role": each cell takes the role of its middle unit (see the module docstring: the area of a role is
        its share of the units); color="SCU" etc.: the share of the cell's parameters in that role. The hover
        names the cell (or its one unit), its role counts and scores; `layout.meta` holds the window."""
        grid = self.grids[module]
        win = self.window(module, x, y)
        cells = self._cells(module, roles, order, win)
        valid = cells >= 0
        safe = np.maximum(cells, 0)
        code = np.where(valid, roles.small_codes[safe], np.int8(4))
        n_cells = cells.shape[0] * cells.shape[1]
        counts = np.bincount((np.arange(n_cells).repeat(win.width) * 5 + code.ravel()), minlength=5 * n_cells)
        counts = counts.reshape(*cells.shape[:2], 5)[..., :4]
        n = counts.sum(axis=-1)
        occupied = n > 0
        name = MODULE_NAMES[module]
        one, many = CELL_WORDS[module]
        if color in ROLES:
            weight = np.where(valid, self.params[safe], 0)
            mass = (weight * (code == ROLES.index(color))).sum(axis=2) / np.maximum(weight.sum(axis=2), 1)
            z = np.where(occupied, mass, np.nan)
            ramp = role_ramp(color)
            top = 1.0 if win.width == 1 else max(float(np.nanmax(z)) if occupied.any() else 0.0, 1e-9)
            trace = dict(zmin=0.0, zmax=top, colorscale=[[0, ramp[0]], [0.5, ramp[1]], [1, ramp[2]]],
                         colorbar=dict(title=dict(text=f"{color} share", side="right"), thickness=12))
        else:
            middle = np.take_along_axis(cells, np.maximum((n - 1) // 2, 0)[..., None], axis=2)[..., 0]
            role = roles.small_codes[np.maximum(middle, 0)]
            holes = (middle < 0) & occupied  # a gap at the middle (units missing from the table): the plurality
            if holes.any():
                role[holes] = np.argmax(counts[holes], axis=-1)
            z = np.where(occupied, role, np.nan)
            trace = dict(zmin=-0.5, zmax=3.5, colorscale=_discrete([ROLE_COLORS[r] for r in ROLES]),
                         colorbar=dict(tickvals=[0, 1, 2, 3], ticktext=list(ROLES), thickness=12))
        if win.width == 1:
            custom = np.stack([np.where(valid[..., 0], self.unit[safe[..., 0]], -1),
                               self.z_safety[safe[..., 0]], self.z_utility[safe[..., 0]]], axis=-1)
            trace["text"] = np.array(ROLES + ("",))[code[..., 0]].tolist()
            hover = ("<b>%{text}</b> · layer %{y} · " + name + " %{customdata[0]}<br>"
                     "z_safety %{customdata[1]:.2f} · z_utility %{customdata[2]:.2f}"
                     + ("<br>rank %{x} in its layer" if order == "role" else "")
                     + "<br>click to list it<extra></extra>")
        else:
            first = np.arange(win.columns) * win.width + win.start
            z_s = np.where(valid, self.z32[0][safe], 0.0).sum(axis=2, dtype=np.float64) / np.maximum(n, 1)
            z_u = np.where(valid, self.z32[1][safe], 0.0).sum(axis=2, dtype=np.float64) / np.maximum(n, 1)
            custom = np.concatenate([counts, np.broadcast_to(first, n.shape)[..., None],
                                     (first + np.maximum(n, 1) - 1)[..., None], z_s[..., None], z_u[..., None]],
                                    axis=-1)
            hover = ("<b>layer %{y}</b> · " + MODULE_PLURALS[module] + (" ranked " if order == "role" else " ")
                     + "%{customdata[4]}–%{customdata[5]}<br>"
                     "SCU %{customdata[0]} · UCU %{customdata[1]} · CU %{customdata[2]} · RU %{customdata[3]}<br>"
                     "mean z_safety %{customdata[6]:.2f} · z_utility %{customdata[7]:.2f}<br>"
                     "click to list them<extra></extra>")
        ordered = "ranked by role" if order == "role" else "by index"
        cell = f"{win.width} {one if win.width == 1 else many} per cell"
        xtitle = ("rank in the layer: SCU, CU, RU, UCU, each by descending z_S − z_U" if order == "role"
                  else f"{name} index")
        return {"data": [dict(type="heatmap", z=typed(z), x0=win.start + (win.width - 1) / 2, dx=win.width,
                              y=typed(grid.layers[win.row0:win.row1], "i4"), customdata=typed(custom),
                              hovertemplate=hover, hoverongaps=False, ygap=1, **trace)],
                "layout": {**LAYOUT, "title": {"text": f"Role map: {MODULE_PLURALS[module]} {ordered} ({cell})"},
                           "height": max(220, 90 + 14 * (win.row1 - win.row0)), "dragmode": "zoom",
                           "meta": {"module": module, "order": order, "color": color, "x": [win.start, win.stop],
                                    "y": [win.first, win.last], "width": win.width},
                           "xaxis": dict(title={"text": xtitle}, showgrid=False,
                                         range=[win.start - 0.5, win.stop - 0.5],
                                         **integer_ticks(win.stop - win.start, 12)),
                           "yaxis": dict(title={"text": "layer"}, showgrid=False,
                                         range=[win.first - 0.5, win.last + 0.5],
                                         **integer_ticks(win.last - win.first + 1))}}

    def cell_units(self, module: str, roles: RolesAt, order: str, layer: int, start: int, stop: int) -> pd.DataFrame:
        """The units of one cell (positions [start, stop) of a layer's row, in that order)."""
        grid = self.grids[module]
        row = int(np.searchsorted(grid.layers, layer))
        if row >= len(grid.layers) or grid.layers[row] != layer:
            return self._frame(np.zeros(0, dtype=np.int64), roles)
        rows = roles.layout(module, order)[row, max(start, 0):max(stop, 0)]
        return self._frame(rows[rows >= 0], roles, positions=np.arange(max(start, 0), max(stop, 0))[rows >= 0])

    def _frame(self, rows: np.ndarray, roles: RolesAt, positions: np.ndarray | None = None) -> pd.DataFrame:
        frame = pd.DataFrame({"layer": self.layer[rows], "module": np.where(self.is_mlp[rows], "mlp", "attn"),
                              "unit": self.unit[rows], "role": np.array(ROLES)[roles.codes[rows]],
                              "z_safety": self.z_safety[rows], "z_utility": self.z_utility[rows],
                              "diff": self.diff[rows], "params": self.params[rows]})
        if positions is not None:
            frame["position"] = positions
        return frame

    # -- the scatter ---------------------------------------------------------------------------------------------

    def plane(self) -> dict:
        """The scatter's threshold-independent layout: robust axes, each unit's bin, the units drawn one by one."""
        if self._plane is not None:
            return self._plane
        axes = [_robust(self.z_safety), _robust(self.z_utility)]
        (x_lo, x_hi), (y_lo, y_hi) = axes
        ix = np.floor((self.z_safety - x_lo) / (x_hi - x_lo) * NBINS).astype(np.int64)
        iy = np.floor((self.z_utility - y_lo) / (y_hi - y_lo) * NBINS).astype(np.int64)
        inside = (self.z_safety >= x_lo) & (self.z_safety <= x_hi) & (self.z_utility >= y_lo) & (self.z_utility <= y_hi)
        ix, iy = np.clip(ix, 0, NBINS - 1), np.clip(iy, 0, NBINS - 1)
        bins = np.where(inside, iy * NBINS + ix, -1)
        total = np.bincount(bins[inside], minlength=NBINS * NBINS)
        in_bin = np.where(inside, total[np.maximum(bins, 0)], 0)
        sparse = 0
        for limit in range(SPARSE, 0, -1):  # the most per bin that keeps the points under MAX_POINTS
            if np.count_nonzero(inside & (in_bin <= limit)) <= MAX_POINTS:
                sparse = limit
                break
        points = inside & (in_bin <= sparse)
        dense_rows = np.flatnonzero(inside & ~points)
        self._plane = {"axes": axes, "bins": bins, "dense": inside & ~points, "dense_rows": dense_rows,
                       "dense_key": bins[dense_rows] * 4, "points": np.flatnonzero(points),
                       "beyond": np.flatnonzero(~inside), "sparse": sparse}
        return self._plane

    def _scatter_parts(self, roles: RolesAt) -> tuple[np.ndarray, list[str], list[tuple]]:
        """What the scatter draws, in trace order: per-role density counts (bins x bins x 4), the roles that have
        a density trace, and the groups of units drawn one by one: (role, module, symbol, beyond, rows)."""
        plane, codes = self.plane(), roles.codes
        counts = np.bincount(plane["dense_key"] + roles.small_codes[plane["dense_rows"]], minlength=NBINS * NBINS * 4)
        counts = counts.reshape(NBINS, NBINS, 4)
        heat = [role for role in DRAW_ORDER if counts[..., ROLES.index(role)].any()]
        marks = []
        for role in DRAW_ORDER:
            r = ROLES.index(role)
            for beyond, rows in ((False, plane["points"]), (True, plane["beyond"])):
                rows = rows[codes[rows] == r]
                for module in ("mlp", "attn"):
                    picked = rows[self.is_mlp[rows] == (module == "mlp")]
                    groups = (_sides(self.z_safety[picked], self.z_utility[picked], picked, plane["axes"]) if beyond
                              else [("circle", picked)])
                    marks += [(role, module, symbol, beyond, chosen) for symbol, chosen in groups if len(chosen)]
        return counts, heat, marks

    def scatter_unit(self, roles: RolesAt, curve: int, point: int) -> tuple[str, int, int] | None:
        """(module, layer, unit) of a point of the scatter figure (its trace and index, as a click names them)."""
        _, heat, marks = self._scatter_parts(roles)
        group = curve - len(ROLES) - len(heat)
        if not 0 <= group < len(marks) or not 0 <= point < len(marks[group][4]):
            return None
        row = marks[group][4][point]
        return ("mlp" if self.is_mlp[row] else "attn"), int(self.layer[row]), int(self.unit[row])

    def scatter_figure(self, roles: RolesAt) -> dict:
        """z_safety vs z_utility: density of the bulk per role, sparse units as points, units beyond the robust
        axes as arrows on the edge (their true values in the hover), and the threshold lines."""
        plane = self.plane()
        (x_lo, x_hi), (y_lo, y_hi) = plane["axes"]
        dx, dy = (x_hi - x_lo) / NBINS, (y_hi - y_lo) / NBINS
        dense = plane["dense"]
        counts, heat, marks = self._scatter_parts(roles)
        traces = []
        for role in ROLES:  # legend entries (the marks themselves are several traces per role)
            traces.append(dict(type="scatter", x=[None], y=[None], mode="markers", name=role, legendgroup=role,
                               marker=dict(color=ROLE_COLORS[role], size=11, symbol="square",
                                           line=dict(color=role_line(role), width=1)), hoverinfo="skip"))
        for role in heat:  # the bulk first, so the rare roles are drawn on top
            z = counts[..., ROLES.index(role)].astype(np.float32)
            top = float(z.max())
            z[z == 0] = np.nan
            traces.append(dict(type="heatmap", z=typed(z), x0=x_lo + dx / 2, dx=dx, y0=y_lo + dy / 2, dy=dy,
                               zmin=0, zmax=top, colorscale=_log_scale(role_ramp(role), top), showscale=False,
                               hoverongaps=False, name=role, legendgroup=role, showlegend=False,
                               hovertemplate=(f"<b>{role}</b>: %{{z:,}} units here<br>z_safety ≈ %{{x:.2f}} · "
                                              "z_utility ≈ %{y:.2f}<br>click to list them<extra></extra>")))
        inset_x, inset_y = 0.006 * (x_hi - x_lo), 0.006 * (y_hi - y_lo)
        for role, module, symbol, beyond, rows in marks:
            traces.append(self._points(role, module, rows, symbol, beyond,
                                       np.clip(self.z_safety[rows], x_lo + inset_x, x_hi - inset_x),
                                       np.clip(self.z_utility[rows], y_lo + inset_y, y_hi - inset_y)))
        for role, kind, value in self.boundaries(roles.small_codes):
            ys = [x_lo - value, x_hi - value] if kind == "diff" else [value - x_lo, value - x_hi]
            label = f"z_S − z_U = {value:.2f}" if kind == "diff" else f"z_S + z_U = {value:.2f}"
            traces.append(dict(type="scatter", x=[x_lo, x_hi], y=ys, mode="lines", name=f"{role} boundary ({label})",
                               line=dict(color=role_line(role), dash="dash", width=1.5), hoverinfo="skip"))
        n_dense, n_points, n_beyond = int(dense.sum()), len(plane["points"]), len(plane["beyond"])
        alone = f" (bins of at most {plane['sparse']})" if n_dense else ""
        note = (f"{n_dense:,} units as density (darker: more, log scale), {n_points:,} as points{alone}, "
                f"{n_beyond:,} beyond the axes as arrows on the edge<br>axes: the {PERCENTILES[0]:g}–"
                f"{PERCENTILES[1]:g}th percentiles · click a point to open its unit, a density cell to list it")
        return {"data": traces,
                "layout": {**LAYOUT, "title": {"text": "z_safety vs z_utility"}, "height": 500,
                           "margin": dict(l=56, r=20, t=76, b=40),
                           "meta": {"axes": plane["axes"], "bins": NBINS},
                           "xaxis": dict(title={"text": "z_safety"}, range=[x_lo, x_hi], **AXIS),
                           "yaxis": dict(title={"text": "z_utility"}, range=[y_lo, y_hi], **AXIS),
                           "legend": dict(orientation="h", y=-0.18),
                           "annotations": [dict(text=note, xref="paper", yref="paper", x=0, y=1.0, showarrow=False,
                                                xanchor="left", yanchor="bottom",
                                                font=dict(size=11, color="#555"))]}}

    def _points(self, role: str, module: str, rows: np.ndarray, symbol: str, beyond: bool, x: np.ndarray,
                y: np.ndarray) -> dict:
        """Units drawn one by one; customdata (layer, unit, module 1 = mlp, z_safety, z_utility) serves the hover
        (a click names the trace and the point: see scatter_unit)."""
        custom = np.stack([self.layer[rows], self.unit[rows], np.full(len(rows), module == "mlp"),
                           self.z_safety[rows], self.z_utility[rows]], axis=1)
        color = ROLE_COLORS[role]
        return dict(type="scattergl", mode="markers", name=role, legendgroup=role, showlegend=False,
                    x=typed(x), y=typed(y), customdata=typed(custom),
                    marker=dict(color=color, symbol=symbol, size=9 if beyond else 6,
                                line=dict(color=INK if beyond or is_pale(color) else "#ffffff",
                                          width=1 if beyond else 0.5)),
                    hovertemplate=(f"<b>{role}</b> · layer %{{customdata[0]}} · {MODULE_NAMES[module]} "
                                   "%{customdata[1]}<br>z_safety %{customdata[3]:.2f} · z_utility "
                                   "%{customdata[4]:.2f}" + (" (beyond the axes)" if beyond else "")
                                   + "<br>click to open its page<extra></extra>"))

    def bin_of(self, x: float, y: float) -> tuple[int, int]:
        """The scatter bin (column, row) whose centre is nearest to (x, y)."""
        (x_lo, x_hi), (y_lo, y_hi) = self.plane()["axes"]
        column = int(np.clip(np.floor((x - x_lo) / (x_hi - x_lo) * NBINS), 0, NBINS - 1))
        row = int(np.clip(np.floor((y - y_lo) / (y_hi - y_lo) * NBINS), 0, NBINS - 1))
        return column, row

    def bin_units(self, roles: RolesAt, column: int, row: int) -> tuple[pd.DataFrame, tuple]:
        """The units in one scatter bin, by descending z_S - z_U, and the bin's bounds (x0, x1, y0, y1)."""
        plane = self.plane()
        rows = np.flatnonzero(plane["bins"] == row * NBINS + column)
        rows = rows[np.argsort(-self.diff[rows], kind="stable")]
        (x_lo, x_hi), (y_lo, y_hi) = plane["axes"]
        dx, dy = (x_hi - x_lo) / NBINS, (y_hi - y_lo) / NBINS
        return self._frame(rows, roles), (x_lo + column * dx, x_lo + (column + 1) * dx, y_lo + row * dy,
                                          y_lo + (row + 1) * dy)

    def boundaries(self, codes: np.ndarray) -> list[tuple[str, str, float]]:
        """Where each role now starts, on the key it is ranked by: (role, 'diff'|'sum', value). The role's last unit
        along its ranking is found within a prefix of about its own size (a later role may have taken a few)."""
        if self._rankings is None:
            self._rankings = (np.argsort(-self.diff, kind="stable"), np.argsort(self.sum, kind="stable"))
        by_diff, by_sum = self._rankings
        counts = np.bincount(codes, minlength=4)
        out = []
        for role, kind, order in (("SCU", "diff", by_diff), ("UCU", "diff", by_diff[::-1]), ("RU", "sum", by_sum)):
            r, k = ROLES.index(role), int(counts[ROLES.index(role)])
            if not k:
                continue
            m = k
            while True:
                head = order[:m]
                hit = codes[head] == r
                if hit.sum() == k or m >= len(order):
                    break
                m = min(2 * m, len(order))
            last = head[hit][-1]
            out.append((role, kind, float((self.diff if kind == "diff" else self.sum)[last])))
        return out


def zoom_of(relayout: dict, x: list | None, y: list | None) -> tuple[list | None, list | None]:
    """The positions [start, stop) and layers [first, last] a plotly relayout shows (any unit partly in view
    counts; an autorange is the whole map, None); an axis the relayout does not name keeps its zoom."""
    out = []
    for axis, old, is_stop_open in (("xaxis", x, True), ("yaxis", y, False)):
        if relayout.get(f"{axis}.autorange"):
            out.append(None)
            continue
        lo, hi = relayout.get(f"{axis}.range[0]"), relayout.get(f"{axis}.range[1]")
        if lo is None and isinstance(relayout.get(f"{axis}.range"), list):
            lo, hi = relayout[f"{axis}.range"]
        if lo is None or hi is None:
            out.append(old)
            continue
        lo, hi = sorted((float(lo), float(hi)))
        first, stop = math.floor(lo + 0.5), math.ceil(hi + 0.5)
        out.append([first, max(stop, first + 1) if is_stop_open else max(stop - 1, first)])
    return out[0], out[1]


def _ranked(by_diff: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each row of `by_diff` regrouped by role (RANKED order), keeping the order by diff within a role: one stable
    sort of small integer keys (row, role), which numpy does as a radix sort."""
    place = _RANK_OF_CODE[codes][np.maximum(by_diff, 0)]
    place[by_diff < 0] = len(RANKED)
    small = np.int16 if len(by_diff) * (len(RANKED) + 1) < 2**15 else np.int32
    key = (np.arange(len(by_diff), dtype=small)[:, None] * small(len(RANKED) + 1) + place).ravel()
    return by_diff.ravel()[np.argsort(key, kind="stable")].reshape(by_diff.shape)


def _robust(values: np.ndarray) -> tuple[float, float]:
    """An axis range that holds the bulk: the PERCENTILES with a MARGIN of their span either side (never wider
    than the data with that margin)."""
    lo, hi = np.percentile(values, PERCENTILES)
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    margin = MARGIN * (hi - lo)
    return (float(max(lo - margin, values.min() - margin)), float(min(hi + margin, values.max() + margin)))


def _sides(x: np.ndarray, y: np.ndarray, rows: np.ndarray, axes) -> list[tuple[str, np.ndarray]]:
    """Units beyond the axes grouped by the edge they point past (left/right before down/up)."""
    (x_lo, x_hi), (y_lo, y_hi) = axes
    side = np.select([x < x_lo, x > x_hi, y < y_lo, y > y_hi], [0, 1, 2, 3], 3)
    return [(symbol, rows[side == i]) for i, symbol in
            enumerate(("triangle-left", "triangle-right", "triangle-down", "triangle-up"))]


def _discrete(colors: list[str]) -> list[list]:
    """A colorscale with one flat band per colour over [zmin, zmax]."""
    scale, n = [], len(colors)
    for i, color in enumerate(colors):
        scale += [[i / n, color], [(i + 1) / n, color]]
    return scale


def _log_scale(ramp: list[str], top: float) -> list[list]:
    """A colorscale over counts 0..top that is logarithmic from 1 to top (z stays the true count for the hover):
    position c / top takes the ramp's colour at log(c) / log(top)."""
    if top <= 1:
        return [[0, ramp[-1]], [1, ramp[-1]]]
    scale = [[0.0, ramp[0]]]
    for t, color in zip(np.linspace(0, 1, len(ramp)), ramp):
        scale.append([float(top ** (t - 1)), color])
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

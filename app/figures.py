"""Plotly figures drawn from the API's answers: per-layer role bars, role transitions and SCU overlap, and a
figure that says in words why there is nothing to draw; and the dashboard's one colour language.

Three categorical palettes, each used for one kind of thing only and never for another:
- ROLE_COLORS: the four roles, wherever a role appears (bars, map, scatter, chips, compare);
- OUTCOME_COLORS: a verdict judged by its outcome (Okabe-Ito green right, vermillion wrong, grey neither), also for
  better / worse changes;
- CONDITION_COLORS: the model as it is against the intervened one (baseline vs pruned, run A vs run B, the series
  of a sweep).
They are chosen to stay apart under protanopia, deuteranopia and tritanopia (tests/ui/test_colours.py measures
it); the roles pair two strong colours for the specific roles (SCU, UCU) with two pale ones for the bulk (CU, RU).
Neutral ink (INK) draws text, reference lines and statistics that belong to no palette.
"""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

# the palettes are written down once, in backend/constants.py, for the dashboard and the HTML report alike
from backend.constants import (  # noqa: F401  (the pages take them from here)
    CONDITION_COLORS,
    INK,
    OUTCOME_COLORS,
    ROLE_COLORS,
    ROLE_NAMES,
    ROLES,
)


def _rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def mix(color: str, other: str, amount: float) -> str:
    """`color` moved `amount` (0..1) of the way to `other`, in sRGB: tints (towards white) and shades (ink)."""
    a, b = _rgb(color), _rgb(other)
    return "#" + "".join(f"{round(x + (y - x) * amount):02x}" for x, y in zip(a, b))


def translucent(color: str, alpha: float) -> str:
    """`color` as rgba with opacity `alpha`: a shaded area (a random control's band) that lines show through."""
    return "rgba({}, {}, {}, {:g})".format(*_rgb(color), alpha)


def is_pale(color: str) -> bool:
    """Whether dark text (and a darker outline or line) is needed on this colour (relative luminance > 0.45)."""
    lin = [(c / 255) / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in _rgb(color)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2] > 0.45


def role_line(role: str) -> str:
    """The role's colour for thin marks (lines, outlines) on white: pale roles darkened enough to be seen."""
    color = ROLE_COLORS[role]
    return mix(color, INK, 0.45) if is_pale(color) else color


def role_ramp(role: str) -> list[str]:
    """Light to dark in the role's hue, for a continuous measure of one role (its share, its density)."""
    color = ROLE_COLORS[role]
    return [mix(color, "#ffffff", 0.8), color, mix(color, INK, 0.55 if is_pale(color) else 0.35)]


def role_label(role: str) -> str:
    """A role's name led by a square of its colour, for plotly text (tick labels, titles)."""
    return f'<span style="color:{ROLE_COLORS[role]}">■</span> {role}'


SEQUENTIAL = [[0, "#ffffff"], [1, "#243b53"]]  # counts with no category (the transition matrix): white to the accent

# A small explicit template instead of plotly's default one (which adds about 8 kB to every figure sent).
LAYOUT = dict(template=go.layout.Template(), font=dict(family="Inter, system-ui, sans-serif", size=12,
                                                       color="#1f2933"),
              paper_bgcolor="#ffffff", plot_bgcolor="#ffffff", margin=dict(l=56, r=20, t=40, b=40),
              hoverlabel=dict(bgcolor="#ffffff", font=dict(size=12)))
AXIS = dict(gridcolor="#e6e9ee", zerolinecolor="#c9ced6", linecolor="#c9ced6")


def integer_ticks(span: int, most: int = 16) -> dict:
    """Axis ticks on whole numbers, at a round step that gives at most `most` ticks over `span` values."""
    step = 1
    while span / step > most:
        step = _next_round(step)
    return dict(tickmode="linear", tick0=0, dtick=step, tickformat="d")


def _next_round(step: int) -> int:
    """1, 2, 5, 10, 20, 50, ..."""
    digits = str(step)
    return step * 5 // 2 if digits[0] == "2" else step * 2


def message_figure(text: str, height: int = 220, webgl: bool = False) -> dict:
    """An empty figure carrying a sentence, so a panel is never blank. With `webgl`, one invisible WebGL point:
    the browser then sets up WebGL while it waits for the data, not after."""
    data = [dict(type="scattergl", mode="markers", x=[0], y=[0], marker=dict(opacity=0), hoverinfo="skip",
                 showlegend=False)] if webgl else []
    return {"data": data,
            "layout": {**LAYOUT, "height": height, "xaxis": dict(visible=False), "yaxis": dict(visible=False),
                       "annotations": [dict(text=text, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False,
                                            font=dict(size=14, color="#52606d"))]}}


def layer_bars_figure(per_layer: list[dict]) -> dict:
    """Units of each role per layer, stacked; MLP channels and attention heads in side-by-side panels.

    A plain dict (no plotly.py validation): it is redrawn on every threshold change."""
    modules = [m for m in ("mlp", "attn") if any(row["module"] == m for row in per_layer)]
    titles = {"mlp": "MLP channels per layer", "attn": "attention heads per layer"}
    gap = 0.08 if len(modules) > 1 else 0.0
    width = (1 - gap * (len(modules) - 1)) / max(len(modules), 1)
    layout = {**LAYOUT, "barmode": "stack", "bargap": 0.15, "height": 340,
              "legend": dict(orientation="h", y=-0.22, x=0.5, xanchor="center"),
              "margin": dict(l=56, r=20, t=40, b=40), "annotations": []}
    traces = []
    for i, module in enumerate(modules):
        suffix = "" if i == 0 else str(i + 1)
        rows = [row for row in per_layer if row["module"] == module]
        layers = [row["layer"] for row in rows]
        for role in ROLES:
            traces.append(dict(type="bar", x=layers, y=[row[role] for row in rows], name=role, legendgroup=role,
                               showlegend=i == 0, marker=dict(color=ROLE_COLORS[role]), xaxis=f"x{suffix}",
                               yaxis=f"y{suffix}", hovertemplate=f"layer %{{x}} · {role} %{{y}}<extra></extra>"))
        lo = i * (width + gap)
        layout[f"xaxis{suffix}"] = dict(domain=[lo, lo + width], anchor=f"y{suffix}", title={"text": "layer"},
                                        **AXIS, **integer_ticks(len(layers)))
        layout[f"yaxis{suffix}"] = dict(anchor=f"x{suffix}", title={"text": "units"}, **AXIS)
        layout["annotations"].append(dict(text=titles[module], x=lo + width / 2, y=1.0, xref="paper", yref="paper",
                                          xanchor="center", yanchor="bottom", showarrow=False,
                                          font=dict(size=14)))
    return {"data": traces, "layout": layout}


def transitions_figure(transfer: dict, weight: str = "units") -> go.Figure:
    """The 4 x 4 role transition matrix (rows: role in run A, columns: role in run B), annotated; the role names
    carry their colours, the cells a neutral scale (a count, not a role)."""
    matrix = transfer[f"transitions_{weight}"]
    roles = transfer.get("roles", list(ROLES))
    z = [[matrix[a][b] for b in roles] for a in roles]
    rows_total = [max(sum(row), 1) for row in z]
    text = [[f"{v:,}<br>({v / rows_total[i]:.0%} of {roles[i]})" for v in row] for i, row in enumerate(z)]
    figure = go.Figure(go.Heatmap(z=z, x=[f"B: {r}" for r in roles], y=[f"A: {r}" for r in roles], text=text,
                                  texttemplate="%{text}", colorscale=SEQUENTIAL, showscale=False,
                                  hovertemplate="%{y} → %{x}: %{z:,} " + weight + "<extra></extra>"))
    figure.update_layout(LAYOUT, title=dict(text=f"Role transitions A → B ({weight})"), height=380,
                         margin=dict(l=84, r=20, t=40, b=40),
                         xaxis=dict(tickmode="array", tickvals=[f"B: {r}" for r in roles],
                                    ticktext=[f"B: {role_label(r)}" for r in roles]),
                         yaxis=dict(autorange="reversed", tickmode="array", tickvals=[f"A: {r}" for r in roles],
                                    ticktext=[f"A: {role_label(r)}" for r in roles]))
    return figure


def scu_overlap_figure(transfer: dict) -> go.Figure:
    """SCU in A, in B and in both, per layer, with the per-layer Jaccard index; MLP and attention apart. A and B
    take the condition colours (before / after), the units in both a hatched ink bar, Jaccard an ink line."""
    per_layer = transfer["scu_per_layer"]
    modules = [m for m in ("mlp", "attn") if any(row["module"] == m for row in per_layer)]
    titles = {"mlp": "MLP channels: SCU per layer", "attn": "attention heads: SCU per layer"}
    figure = make_subplots(rows=len(modules) or 1, cols=1, subplot_titles=[titles[m] for m in modules],
                           specs=[[{"secondary_y": True}] for _ in modules] or [[{}]], vertical_spacing=0.16)
    bars = (("scu_a", "SCU in A", dict(color=CONDITION_COLORS["baseline"])),
            ("scu_b", "SCU in B", dict(color=CONDITION_COLORS["intervened"])),
            ("both", "SCU in both", dict(color="#ffffff", line=dict(color=INK, width=1),
                                         pattern=dict(shape="x", fgcolor=INK, size=5))))
    for i, module in enumerate(modules, start=1):
        rows = [row for row in per_layer if row["module"] == module]
        layers = [row["layer"] for row in rows]
        for key, name, marker in bars:
            figure.add_trace(go.Bar(x=layers, y=[row[key] for row in rows], name=name, legendgroup=key,
                                    showlegend=i == 1, marker=marker), row=i, col=1)
        figure.add_trace(go.Scatter(x=layers, y=[row["jaccard"] for row in rows], name="Jaccard", mode="lines+markers",
                                    legendgroup="jaccard", showlegend=i == 1, line=dict(color=INK, dash="dot"),
                                    marker=dict(symbol="diamond", color=INK), connectgaps=False),
                         row=i, col=1, secondary_y=True)
        figure.update_yaxes(title_text="units", row=i, col=1, secondary_y=False, **AXIS)
        figure.update_yaxes(title_text="Jaccard", range=[0, 1.05], dtick=0.25, row=i, col=1, secondary_y=True,
                            showgrid=False)
        most = max([max(row["scu_a"], row["scu_b"]) for row in rows] + [1])
        figure.update_yaxes(rangemode="tozero", row=i, col=1, secondary_y=False, **integer_ticks(most, 8))
        figure.update_xaxes(title_text="layer", row=i, col=1, **AXIS, **integer_ticks(len(layers)))
    figure.update_layout(LAYOUT, barmode="group", height=300 * max(len(modules), 1) + 40,
                         legend=dict(orientation="h", y=1.12))
    return figure


def preview_metrics_figure(baseline: dict, pruned: dict | None) -> go.Figure:
    """ASR, over-refusal and degenerate rate, baseline beside pruned (condition colours, never a role's)."""
    metrics = [("asr", "ASR"), ("over_refusal", "over-refusal"), ("degenerate_rate", "degenerate")]
    figure = go.Figure()
    for name, result, color in (("baseline", baseline, CONDITION_COLORS["baseline"]),
                                ("pruned", pruned, CONDITION_COLORS["intervened"])):
        if result is None:
            continue
        values = [result.get(key) for key, _ in metrics]
        figure.add_trace(go.Bar(x=[label for _, label in metrics], y=[v if v is not None else 0 for v in values],
                                name=name, marker_color=color, text=[_percent(v) for v in values],
                                textposition="outside"))
    figure.update_layout(LAYOUT, barmode="group", height=300, yaxis=dict(range=[0, 1.15], tickformat=".0%", **AXIS),
                         legend=dict(orientation="h", y=1.15))
    return figure


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"

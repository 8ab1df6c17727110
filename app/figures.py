"""Plotly figures drawn from the API's answers: per-layer role bars, role transitions and SCU overlap, and a
figure that says in words why there is nothing to draw."""
from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from backend.constants import ROLE_NAMES, ROLES  # noqa: F401  (the pages take them from here)

ROLE_COLORS = {"SCU": "#d7263d", "UCU": "#1b6fd1", "CU": "#b9c0ca", "RU": "#f0a030"}

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
    """The 4 x 4 role transition matrix (rows: role in run A, columns: role in run B), annotated."""
    matrix = transfer[f"transitions_{weight}"]
    roles = transfer.get("roles", list(ROLES))
    z = [[matrix[a][b] for b in roles] for a in roles]
    rows_total = [max(sum(row), 1) for row in z]
    text = [[f"{v:,}<br>({v / rows_total[i]:.0%} of {roles[i]})" for v in row] for i, row in enumerate(z)]
    figure = go.Figure(go.Heatmap(z=z, x=[f"B: {r}" for r in roles], y=[f"A: {r}" for r in roles], text=text,
                                  texttemplate="%{text}", colorscale="Blues", showscale=False,
                                  hovertemplate="%{y} → %{x}: %{z:,} " + weight + "<extra></extra>"))
    figure.update_layout(LAYOUT, title=dict(text=f"Role transitions A → B ({weight})"), height=380,
                         yaxis=dict(autorange="reversed"))
    return figure


def scu_overlap_figure(transfer: dict) -> go.Figure:
    """SCU in A, in B and in both, per layer, with the per-layer Jaccard index; MLP and attention apart."""
    per_layer = transfer["scu_per_layer"]
    modules = [m for m in ("mlp", "attn") if any(row["module"] == m for row in per_layer)]
    titles = {"mlp": "MLP channels: SCU per layer", "attn": "attention heads: SCU per layer"}
    figure = make_subplots(rows=len(modules) or 1, cols=1, subplot_titles=[titles[m] for m in modules],
                           specs=[[{"secondary_y": True}] for _ in modules] or [[{}]], vertical_spacing=0.16)
    for i, module in enumerate(modules, start=1):
        rows = [row for row in per_layer if row["module"] == module]
        layers = [row["layer"] for row in rows]
        for key, name, color in (("scu_a", "SCU in A", "#f29aa6"), ("scu_b", "SCU in B", "#8fb8ea"),
                                 ("both", "SCU in both", ROLE_COLORS["SCU"])):
            figure.add_trace(go.Bar(x=layers, y=[row[key] for row in rows], name=name, legendgroup=key,
                                    showlegend=i == 1, marker_color=color), row=i, col=1)
        figure.add_trace(go.Scatter(x=layers, y=[row["jaccard"] for row in rows], name="Jaccard", mode="lines+markers",
                                    legendgroup="jaccard", showlegend=i == 1, line=dict(color="#1f2933"),
                                    connectgaps=False), row=i, col=1, secondary_y=True)
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
    """ASR, over-refusal and degenerate rate, baseline beside pruned."""
    metrics = [("asr", "ASR"), ("over_refusal", "over-refusal"), ("degenerate_rate", "degenerate")]
    figure = go.Figure()
    for name, result, color in (("baseline", baseline, "#8a94a3"), ("pruned", pruned, ROLE_COLORS["SCU"])):
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

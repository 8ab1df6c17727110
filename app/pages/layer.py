"""Layer `/runs/{id}/layers/{layer}`: every unit of one layer, z_safety against z_utility with the role boundaries,
the histogram of z_S − z_U with the SCU and UCU boundaries, and the layer's SCU and UCU ranked, each linking to
its unit's page.

View state in the URL: h_ru, h_scu, h_ucu (roles at these thresholds; default: the run's own), token.
"""
from __future__ import annotations

import dash
from dash import dcc, html

from app.client import ApiError
from app.components import (
    UNIT_NAMES,
    api,
    error_box,
    layer_link,
    note,
    page_link,
    shared_banner,
    thresholds_in,
    unit_link,
)
from app.figures import AXIS, LAYOUT, ROLE_COLORS, ROLES

dash.register_page(__name__, path_template="/runs/<run_id>/layers/<layer>", title="ssah · layer", name="Layer",
                   order=2)  # before the overview's /runs/<run_id>, which would match this path too (see unit.py)

RANKED_ROWS = 100  # rows shown per role table; the rest are counted


def layout(run_id: str | None = None, layer: str | None = None, token: str | None = None, **query):
    thresholds = thresholds_in(query)
    try:
        body = api(token).layer(run_id, layer, **thresholds)
    except ApiError as error:
        return html.Div([html.H1(f"Layer {layer}"), error_box(error, "this layer cannot be shown"),
                         dcc.Link("← overview", href=page_link(f"/runs/{run_id}", token, **thresholds))])
    units = body["units"]
    n = body["layer"]
    rows = [dict(zip(units, values)) for values in zip(*units.values())]
    for row in rows:
        row["diff"], row["layer"] = row["z_safety"] - row["z_utility"], n
    layers = body["layers"]
    position = layers.index(n)
    neighbours = [dcc.Link(text, className="button button-quiet", id=f"ly-{name}",
                           href=layer_link(run_id, layers[position + step], token, **thresholds))
                  for name, text, step in (("prev", "← previous layer", -1), ("next", "next layer →", 1))
                  if 0 <= position + step < len(layers)]
    at = ", ".join(f"{k} = {v:g}" for k, v in body["thresholds"].items())
    counts = {role: sum(r["role"] == role for r in rows) for role in ROLES}
    return html.Div([
        shared_banner(token),
        html.Div([
            html.Div([html.H1(["Layer ", str(n), " of run ", html.Code(run_id)]),
                      html.P(" · ".join(f"{counts[r]:,} {r}" for r in ROLES) + f" of {len(rows):,} units · roles at "
                             f"{at}", className="muted", id="ly-counts")], className="grow"),
            html.Div([*neighbours,
                      dcc.Link(f"Preview pruning layer {n}'s SCU", className="button", id="ly-prune",
                               href=page_link(f"/runs/{run_id}/intervene", token, groups="SCU", layers=n,
                                              **thresholds)),
                      dcc.Link("overview", className="button button-quiet",
                               href=page_link(f"/runs/{run_id}", token, **thresholds))], className="actions"),
        ], className="page-head"),
        html.Section([
            html.Div(dcc.Graph(id="ly-scatter", figure=_scatter(rows, body["cutoffs"], n),
                               config={"displaylogo": False}), className="card"),
            html.Div(dcc.Graph(id="ly-histogram", figure=_histogram(rows, body["cutoffs"], n),
                               config={"displaylogo": False}), className="card"),
        ], className="grid-2"),
        html.Section([
            html.Div([html.H2("Safety-critical units (SCU), top z_S − z_U first"),
                      _ranked(rows, "SCU", run_id, token, thresholds)], className="card"),
            html.Div([html.H2("Utility-critical units (UCU), bottom z_S − z_U first"),
                      _ranked(rows, "UCU", run_id, token, thresholds)], className="card"),
        ], className="grid-2"),
    ])


def _ranked(rows: list[dict], role: str, run_id: str, token: str | None, thresholds: dict) -> html.Div:
    chosen = sorted((r for r in rows if r["role"] == role), key=lambda r: -r["diff"] if role == "SCU" else r["diff"])
    if not chosen:
        return note(f"No {role} in this layer at these thresholds.")
    body = [html.Tr([html.Td(dcc.Link(f"{UNIT_NAMES[r['module']]} {r['unit']}", id=f"ly-{role}-{r['module']}-"
                                                                                   f"{r['unit']}",
                                      href=unit_link(run_id, r["module"], r["layer"], r["unit"], token,
                                                     **thresholds))),
                     html.Td(f"{r['z_safety']:.3g}", className="num"), html.Td(f"{r['z_utility']:.3g}",
                                                                                className="num"),
                     html.Td(f"{r['diff']:.3g}", className="num"), html.Td(f"{r['params']:,}", className="num")])
            for r in chosen[:RANKED_ROWS]]
    more = [html.P(f"… and {len(chosen) - RANKED_ROWS:,} more.", className="muted")] if len(chosen) > RANKED_ROWS \
        else []
    return html.Div([html.Table([
        html.Thead(html.Tr([html.Th(h, className="num" if i else None) for i, h in
                            enumerate(("unit", "z_safety", "z_utility", "z_S − z_U", "parameters"))])),
        html.Tbody(body)], className="table", id=f"ly-{role}-table"), *more])


def _scatter(rows: list[dict], cutoffs: dict, layer: int) -> dict:
    traces = []
    for role in ("CU", "RU", "UCU", "SCU"):
        for module, symbol in (("mlp", "circle"), ("attn", "diamond")):
            picked = [r for r in rows if r["role"] == role and r["module"] == module]
            if not picked:
                continue
            traces.append(dict(type="scattergl", mode="markers", name=f"{role} {UNIT_NAMES[module]}s",
                               x=[r["z_safety"] for r in picked], y=[r["z_utility"] for r in picked],
                               text=[f"{UNIT_NAMES[module]} {r['unit']}" for r in picked],
                               marker=dict(color=ROLE_COLORS[role], symbol=symbol,
                                           size=9 if module == "attn" else 5, opacity=0.85),
                               hovertemplate=f"<b>{role}</b> · %{{text}}<br>z_safety %{{x:.2f}} · "
                                             "z_utility %{y:.2f}<extra></extra>"))
    values = [v for r in rows for v in (r["z_safety"], r["z_utility"])]
    lo, hi = (min(values), max(values)) if values else (-1.0, 1.0)
    for role, cutoff in cutoffs.items():
        if cutoff is None:
            continue
        ys = [lo - cutoff, hi - cutoff] if role != "RU" else [cutoff - lo, cutoff - hi]
        key = "z_S + z_U" if role == "RU" else "z_S − z_U"
        traces.append(dict(type="scatter", mode="lines", x=[lo, hi], y=ys, hoverinfo="skip",
                           name=f"{role} boundary ({key} = {cutoff:.2f})",
                           line=dict(color=ROLE_COLORS[role], dash="dash", width=1.5)))
    return {"data": traces, "layout": {**LAYOUT, "title": {"text": f"Layer {layer}: z_safety vs z_utility", "x": 0.01},
                                       "height": 420, "legend": dict(orientation="h", y=-0.2),
                                       "xaxis": dict(title={"text": "z_safety"}, range=[lo, hi], **AXIS),
                                       "yaxis": dict(title={"text": "z_utility"}, range=[lo, hi], **AXIS)}}


def _histogram(rows: list[dict], cutoffs: dict, layer: int) -> dict:
    traces = [dict(type="histogram", name=f"{UNIT_NAMES[module]}s", x=[r["diff"] for r in rows
                                                                       if r["module"] == module],
                   marker=dict(color="#8a94a3" if module == "mlp" else "#1f2933"), opacity=0.75, nbinsx=60)
              for module in ("mlp", "attn") if any(r["module"] == module for r in rows)]
    shapes, notes = [], []
    for role in ("SCU", "UCU"):
        cutoff = cutoffs.get(role)
        if cutoff is None:
            continue
        shapes.append(dict(type="line", xref="x", yref="paper", x0=cutoff, x1=cutoff, y0=0, y1=1,
                           line=dict(color=ROLE_COLORS[role], dash="dash", width=2)))
        notes.append(dict(x=cutoff, y=1, xref="x", yref="paper", yanchor="bottom", showarrow=False,
                          text=f"{role} {'≥' if role == 'SCU' else '≤'} {cutoff:.2f}",
                          font=dict(color=ROLE_COLORS[role])))
    return {"data": traces, "layout": {**LAYOUT, "title": {"text": f"Layer {layer}: z_S − z_U", "x": 0.01},
                                       "height": 420, "barmode": "overlay", "shapes": shapes, "annotations": notes,
                                       "legend": dict(orientation="h", y=-0.2),
                                       "xaxis": dict(title={"text": "z_safety − z_utility"}, **AXIS),
                                       "yaxis": dict(title={"text": "units"}, **AXIS)}}

"""Run overview `/runs/{id}`: role counts and parameter shares, per-layer role bars, the role map, the z-score
scatter with its threshold lines, and sliders that recompute the roles at other thresholds.

View state in the URL: h_ru, h_scu, h_ucu (default: the run's own), color (role | SCU | UCU | CU | RU), token.
"""
from __future__ import annotations

import dash
from dash import Input, Output, State, callback, dcc, html, no_update

from app.client import ApiError
from app.components import (
    ACTIVE,
    api,
    api_link,
    error_box,
    layer_link,
    note,
    number,
    page_link,
    progress_bar,
    role_chip,
    shared_banner,
    sync_url,
    view_store,
)
from app.figures import ROLE_NAMES, ROLES, layer_bars_figure, message_figure
from app.rolemap import RUN_MAPS
from backend.constants import DEFAULT_THRESHOLDS

dash.register_page(__name__, path_template="/runs/<run_id>", title="ssah · run", name="Run overview")

SLIDERS = {"h_ru": ("h_RU: redundant, bottom of z_S + z_U", 0.5, 0.005),
           "h_scu": ("h_SCU: safety-critical, top of z_S − z_U", 0.1, 0.001),
           "h_ucu": ("h_UCU: utility-critical, bottom of z_S − z_U", 0.3, 0.005)}
COLORS = [{"label": "role", "value": "role"}] + [{"label": f"{r} share", "value": r} for r in ROLES]


def layout(run_id: str | None = None, token: str | None = None, color: str | None = None, **query):
    try:
        run = api(token).run(run_id)
    except ApiError as error:
        return html.Div([html.H1(f"Run {run_id}"), error_box(error, "this run cannot be shown")])
    stored = {**DEFAULT_THRESHOLDS, **(run.get("settings") or {}).get("thresholds", {})}
    values = {k: number(query.get(k), stored[k]) for k in SLIDERS}
    view = {"_run": run_id, **values, "color": color if color in ("role", *ROLES) else "role", "token": token,
            "_stored": stored}
    return html.Div([
        *view_store("ov-view", view),
        dcc.Interval(id="ov-poll", interval=1500, disabled=run["status"] not in ACTIVE),
        shared_banner(token),
        html.Div([
            html.Div([html.H1(["Run ", html.Code(run_id)]), _describe(run)], className="grow"),
            html.Div([
                dcc.Link("Intervene →", id="ov-intervene", className="button",
                         href=page_link(f"/runs/{run_id}/intervene", token, **values)),
                dcc.Link("Compare…", className="button button-quiet",
                         href=page_link("/compare", token, a=run_id)),
            ], className="actions"),
        ], className="page-head"),
        html.Div(id="ov-status"),
        html.Section([
            html.Div([
                html.H2("Thresholds"),
                html.P("Fractions of unit parameters; roles are recomputed from the stored z-scores.",
                       className="muted"),
                *[html.Div([html.Label(label, htmlFor=f"ov-{key}"),
                            dcc.Slider(id=f"ov-{key}", min=0, max=max(top, values[key]), step=step,
                                       value=values[key], marks=None, allow_direct_input=True,
                                       tooltip={"placement": "bottom", "always_visible": False},
                                       updatemode="mouseup")], className="slider-row")
                  for key, (label, top, step) in SLIDERS.items()],
                html.Button("Reset to the run's thresholds", id="ov-reset", className="button button-quiet"),
            ], className="card thresholds"),
            html.Div([html.H2("Roles"), dcc.Loading(html.Div(id="ov-counts"), delay_show=400)],
                     className="card counts"),
        ], className="grid-2"),
        html.Section([dcc.Graph(id="ov-bars", figure=message_figure("loading…"), config={"displaylogo": False}),
                      html.Div(id="ov-layers", className="layer-links")], className="card"),
        html.Section([
            html.Div([html.H2("Role map"),
                      dcc.RadioItems(id="ov-color", options=COLORS, value=view["color"], inline=True,
                                     className="radio-inline")], className="card-head"),
            html.P("Layers by units, coloured by role. Where a cell holds many MLP channels it takes the role most "
                   "over-represented in it (its share of the cell's parameters over its share of all); hover "
                   "names the cell and its scores. The share views colour each cell by one role's share.",
                   className="muted"),
            dcc.Graph(id="ov-map-mlp", figure=message_figure("loading…"), config={"displaylogo": False}),
            dcc.Graph(id="ov-map-attn", figure=message_figure("loading…"), config={"displaylogo": False}),
        ], className="card"),
        html.Section([dcc.Graph(id="ov-scatter", figure=message_figure("loading…", 460, webgl=True),
                                config={"displaylogo": False})], className="card"),
        html.Section([
            html.H2("Export and share"),
            html.Div([html.Span("Units: ", className="muted"),
                      *[html.A(fmt.upper(), href=api_link(f"/runs/{run_id}/units", token, format=fmt),
                               className="button button-quiet", download="", target="_blank", id=f"ov-export-{fmt}")
                        for fmt in ("parquet", "csv", "json")]], className="actions"),
            html.Div([html.Span("Freeze masks for your own training code (at these thresholds): ", className="muted"),
                      html.Span(_mask_links(run_id, token, values), id="ov-masks")], className="actions"),
            html.Div([html.Button("Share this view", id="ov-share", className="button"),
                      html.Div(id="ov-share-out", className="share-out")], className="actions"),
        ], className="card"),
    ])


MASKS = (("freeze SCU", "freeze", "SCU"), ("freeze SCU + 6% CU", "freeze", "SCU,CU:0.06"),
         ("train only RU", "train_only", "RU"))


def _mask_links(run_id: str, token: str | None, thresholds: dict) -> list:
    """safetensors files of the entries each choice owns (`backend.recipes.finetune.load_masks` reads them)."""
    return [html.A(label, href=api_link(f"/runs/{run_id}/masks", token, groups=groups, mode=mode,
                                        **{k: thresholds[k] for k in SLIDERS}),
                   className="button button-quiet", download="", target="_blank", id=f"ov-mask-{i}")
            for i, (label, mode, groups) in enumerate(MASKS)]


@callback(Output("ov-masks", "children"), Input("ov-view", "data"))
def _masks(view):
    return _mask_links(view["_run"], view.get("token"), view)


def _describe(run: dict) -> html.Div:
    manifest = run.get("manifest") or {}
    model = manifest.get("model", {})
    sets = manifest.get("datasets", {})
    parts = [f"model {run.get('model')}"]
    if model.get("architecture"):
        parts.append(f"{model['architecture']}, {_count(model.get('parameters', 0))} parameters")
    for split in ("safety", "utility"):
        if split in sets:
            parts.append(f"{split} {sets[split].get('name')} ({sets[split].get('samples')} pairs, "
                         f"{sets[split].get('tokens_counted', 0):,} tokens)")
    if manifest.get("positions"):
        parts.append(f"{manifest['positions']} positions")
    return html.P(" · ".join(parts), className="muted")


def _count(n: int) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return str(n)


sync_url("ov-view")


@callback(Output("ov-view", "data"),
          Input("ov-h_ru", "value"), Input("ov-h_scu", "value"), Input("ov-h_ucu", "value"),
          Input("ov-color", "value"), State("ov-view", "data"), prevent_initial_call=True)
def _view(h_ru, h_scu, h_ucu, color, view):
    new = {**view, "h_ru": h_ru, "h_scu": h_scu, "h_ucu": h_ucu, "color": color}
    return no_update if new == view or None in (h_ru, h_scu, h_ucu) else new


@callback(Output("ov-h_ru", "value"), Output("ov-h_scu", "value"), Output("ov-h_ucu", "value"),
          Input("ov-reset", "n_clicks"), State("ov-view", "data"), prevent_initial_call=True)
def _reset(_, view):
    stored = view["_stored"]
    return stored["h_ru"], stored["h_scu"], stored["h_ucu"]


@callback(Output("ov-status", "children"), Output("ov-counts", "children"), Output("ov-bars", "figure"),
          Output("ov-map-mlp", "figure"), Output("ov-map-attn", "figure"), Output("ov-scatter", "figure"),
          Output("ov-poll", "disabled"), Output("ov-intervene", "href"),
          Input("ov-view", "data"), Input("ov-poll", "n_intervals"))
def _draw(view, _):
    """Everything that depends on the thresholds: counts from the API, map and scatter from the units."""
    client = api(view.get("token"))
    run_id = view["_run"]
    thresholds = {k: view[k] for k in SLIDERS}
    intervene = page_link(f"/runs/{run_id}/intervene", view.get("token"), **thresholds)
    try:
        roles = client.roles(run_id, **thresholds)
    except ApiError as error:
        if error.status == 409:  # not finished yet: say where it is
            try:
                run = client.run(run_id)
            except ApiError as again:
                return _failed(again, intervene)
            if run["status"] in ACTIVE:
                status = html.Div([note("The overview appears when this run has succeeded."),
                                   progress_bar(run["status"], run["progress"], run["phase"])])
                waiting = message_figure(f"run {run['status']}: {run['phase']}")
                return status, None, waiting, waiting, waiting, waiting, False, intervene
            return _failed(f"this run {run['status']}: {run.get('error') or 'no units were written'}", intervene)
        return _failed(error, intervene)
    try:
        runmap = RUN_MAPS.get(client, run_id)
    except ApiError as error:
        return _failed(error, intervene)
    t = roles["thresholds"]
    codes = runmap.codes(t["h_ru"], t["h_scu"], t["h_ucu"])
    maps = [runmap.map_figure(m, codes, view.get("color", "role")) if m in runmap.grids
            else message_figure(f"this model has no {m} units") for m in ("mlp", "attn")]
    return (None, _counts(roles), layer_bars_figure(roles["per_layer"]), *maps, runmap.scatter_figure(codes), True,
            intervene)


@callback(Output("ov-layers", "children"), Input("ov-view", "data"))
def _layer_links(view):
    """A link per layer to its page (its units, the histogram of z_S − z_U, its SCU and UCU), at these
    thresholds."""
    thresholds = {k: view[k] for k in SLIDERS}
    try:
        per_layer = api(view.get("token")).roles(view["_run"], **thresholds)["per_layer"]
    except ApiError:
        return None  # the overview says why above
    layers = sorted({row["layer"] for row in per_layer})
    return [html.Span("Open a layer: ", className="muted"),
            *[dcc.Link(str(layer), id=f"ov-layer-{layer}", className="layer-link",
                       href=layer_link(view["_run"], layer, view.get("token"), **thresholds)) for layer in layers]]


def _failed(error, intervene):
    text = str(error)
    blank = message_figure(text if len(text) < 90 else "nothing to draw: see the message above")
    return error_box(error, "roles"), None, blank, blank, blank, blank, True, intervene


def _counts(roles: dict) -> html.Table:
    overall = roles["overall"]
    rows = [html.Tr([html.Td(role_chip(role)), html.Td(ROLE_NAMES[role]),
                     html.Td(f"{overall[role]['units']:,}", className="num", id=f"ov-count-{role}"),
                     html.Td(f"{overall[role]['param_fraction']:.2%}", className="num", id=f"ov-share-{role}")])
            for role in ROLES]
    return html.Table([
        html.Thead(html.Tr([html.Th("role"), html.Th(""), html.Th("units", className="num"),
                            html.Th("parameters", className="num")])),
        html.Tbody(rows),
        html.Tfoot(html.Tr([html.Td("all"), html.Td(""), html.Td(f"{roles['units']:,}", className="num"),
                            html.Td(f"{roles['total_params']:,}", className="num")])),
    ], className="table counts-table", id="ov-counts-table")


@callback(Output("ov-share-out", "children"), Input("ov-share", "n_clicks"), State("ov-view", "data"),
          prevent_initial_call=True)
def _share(_, view):
    path = page_link(f"/runs/{view['_run']}", None, **{k: v for k, v in view.items()
                                                        if k != "token" and not k.startswith("_")})
    try:
        share = api(view.get("token")).create_share(view["_run"], path)
    except ApiError as error:
        return error_box(error, "no share link")
    return html.Div([
        html.A(share["url"], href=share["url"], id="ov-share-url", target="_blank"),
        dcc.Clipboard(content=share["url"], title="copy", className="clipboard"),
        html.Span(f" read-only, expires {share['expires_at'][:16].replace('T', ' ')} UTC", className="muted"),
    ])

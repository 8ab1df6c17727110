"""Run overview `/runs/{id}`: role counts and parameter shares, per-layer role bars, the role map (zoomed and
re-binned on the server, down to single units; a click lists a cell's units with links to their pages), the
z-score scatter with its threshold lines, and sliders that recompute the roles at other thresholds.

View state in the URL: h_ru, h_scu, h_ucu (default: the run's own), color (role | SCU | UCU | CU | RU), order
(role | index), mlp_x / attn_x (the positions [start, stop) a map shows), mlp_y / attn_y (its first and last
layer), pick (the cell listed: module,layer,start,stop; or bin,column,row of the scatter), token.
"""
from __future__ import annotations

import dash
from dash import Input, Output, State, callback, ctx, dcc, html, no_update

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
    view_patch,
    view_store,
)
from app.experiments import ORIGINS, job_link, job_summary, run_label, short_id, short_path
from app.figures import ROLE_NAMES, ROLES, layer_bars_figure, message_figure
from app.rolemap import COLORS, LISTED, MODULE_NAMES, MODULE_PLURALS, ORDERS, RUN_MAPS, RunMap, zoom_of
from app.snippets import overview_code
from backend.constants import DEFAULT_THRESHOLDS

dash.register_page(__name__, path_template="/runs/<run_id>", title="ssah · run", name="Run overview")

SLIDERS = {"h_ru": ("h_RU: redundant, bottom of z_S + z_U", 0.5, 0.005),
           "h_scu": ("h_SCU: safety-critical, top of z_S − z_U", 0.1, 0.001),
           "h_ucu": ("h_UCU: utility-critical, bottom of z_S − z_U", 0.3, 0.005)}
COLOR_OPTIONS = [{"label": "role", "value": "role"}] + [{"label": f"{r} share", "value": r} for r in ROLES]
ORDER_OPTIONS = [{"label": "ranked by role", "value": "role"}, {"label": "by index", "value": "index"}]
MODULES = ("mlp", "attn")
MAP_NOTE = ("Each row is a layer. Ranked by role, a row holds its units from safety-leaning to utility-leaning "
            "(SCU, CU, RU, UCU, each by descending z_S − z_U), so each role fills a run of cells as long as its share "
            "of the layer, and its area in the map is its share of the module's parameters. A cell of several units "
            "takes the role of its middle unit; the hover gives its counts. Drag to zoom: the window is re-binned "
            "down to one unit per cell (double-click zooms out). Click a cell to list its units. The share views "
            "colour each cell by one role's share of its parameters.")


def _pair(text) -> list[int] | None:
    """'start,stop' from the URL as two integers, or None."""
    try:
        a, b = (int(float(v)) for v in str(text).split(","))
    except (TypeError, ValueError):
        return None
    return [a, b]


def _pick_of(text) -> list | None:
    """'mlp,layer,start,stop' (a map cell) or 'bin,column,row' (a scatter bin) from the URL, or None."""
    parts = str(text or "").split(",")
    try:
        if parts[0] in MODULES and len(parts) == 4:
            return [parts[0], *(int(v) for v in parts[1:])]
        if parts[0] == "bin" and len(parts) == 3:
            return ["bin", int(parts[1]), int(parts[2])]
    except ValueError:
        pass
    return None


def layout(run_id: str | None = None, token: str | None = None, color: str | None = None,
           order: str | None = None, pick: str | None = None, **query):
    try:
        run = api(token).run(run_id)
    except ApiError as error:
        return html.Div([html.H1(f"Run {run_id}"), error_box(error, "this run cannot be shown")])
    stored = {**DEFAULT_THRESHOLDS, **(run.get("settings") or {}).get("thresholds", {})}
    ranges = slider_ranges(stored)
    values, clamped = {}, []
    for key in SLIDERS:
        asked = number(query.get(key), stored[key])
        values[key] = min(max(asked, 0.0), ranges[key])
        if values[key] != asked:
            clamped.append(f"{key} = {asked:g} in the link is outside the slider's range 0 to {ranges[key]:g}: "
                           f"shown at {values[key]:g}")
    view = {"_run": run_id, **values, "color": color if color in COLORS else "role",
            "order": order if order in ORDERS else "role", "pick": _pick_of(pick), "token": token, "_stored": stored,
            **{f"{m}_{axis}": _pair(query.get(f"{m}_{axis}")) for m in MODULES for axis in "xy"}}
    return html.Div([
        *view_store("ov-view", view),
        dcc.Store(id="ov-drawn"),  # what the figures show now (see _draw)
        dcc.Store(id="ov-run", data=run),  # the run as last read (identity and lineage are edited in place)
        dcc.Location(id="ov-go", refresh="callback-nav"),  # a click on a scatter point opens its unit's page
        dcc.Interval(id="ov-poll", interval=1500, disabled=run["status"] not in ACTIVE),
        dcc.Interval(id="ov-history-poll", interval=2500),
        shared_banner(token),
        html.Div([
            html.Div([html.H1(_title(run), id="ov-title"), html.Div(_identity(run, token), id="ov-identity"),
                      _describe(run)], className="grow"),
            html.Div([
                dcc.Link("Intervene →", id="ov-intervene", className="button",
                         href=page_link(f"/runs/{run_id}/intervene", token, **values)),
                dcc.Link("Compare…", className="button button-quiet",
                         href=page_link("/compare", token, a=run_id)),
            ], className="actions"),
        ], className="page-head"),
        *[note(text) for text in clamped],
        html.Details([
            html.Summary("Edit name, tags and notes"),
            html.Div([
                html.Div([html.Label("name", htmlFor="ov-name"),
                          dcc.Input(id="ov-name", value=run.get("name") or "", placeholder="default: the run's id")],
                         className="field"),
                html.Div([html.Label("tags", htmlFor="ov-tags"),
                          dcc.Input(id="ov-tags", value=", ".join(run.get("tags") or []),
                                    placeholder="comma-separated; default: none")], className="field"),
            ], className="form-grid"),
            html.Div([html.Label("notes", htmlFor="ov-notes"),
                      dcc.Textarea(id="ov-notes", value=run.get("notes") or "", className="notes-input",
                                   placeholder="what this run is for, what it showed; default: none")],
                     className="field"),
            html.Div([html.Button("Save", id="ov-save", className="button"), html.Div(id="ov-saved")],
                     className="actions"),
        ], className="card identity-edit", id="ov-edit"),
        html.Div(id="ov-status"),
        html.Section([
            html.Div([
                html.H2("Thresholds"),
                html.P("Fractions of unit parameters; roles are recomputed from the stored z-scores.",
                       className="muted"),
                *[html.Div([html.Label([label, html.Span(f" · 0 to {ranges[key]:g}, the run's own {stored[key]:g}",
                                                         className="slider-range")], htmlFor=f"ov-{key}",
                                       id=f"ov-{key}-label"),
                            # the value bubble beside the handle, so it never covers the next slider's label
                            dcc.Slider(id=f"ov-{key}", min=0, max=ranges[key], step=step,
                                       value=values[key], marks=None, allow_direct_input=True,
                                       tooltip={"placement": "right", "always_visible": False},
                                       updatemode="mouseup")], className="slider-row")
                  for key, (label, _, step) in SLIDERS.items()],
                html.Button("Reset to the run's thresholds", id="ov-reset", className="button button-quiet"),
            ], className="card thresholds"),
            html.Div([html.H2("Roles"), dcc.Loading(html.Div(id="ov-counts"), delay_show=400)],
                     className="card counts"),
        ], className="grid-2"),
        html.Section([dcc.Graph(id="ov-bars", figure=message_figure("loading…"), config={"displaylogo": False}),
                      html.Div(id="ov-layers", className="layer-links")], className="card"),
        html.Section([
            html.Div([html.H2("Role map"),
                      html.Div([html.Span("colour", className="control-name"),
                                dcc.RadioItems(id="ov-color", options=COLOR_OPTIONS, value=view["color"], inline=True,
                                               className="radio-inline"),
                                html.Span("order", className="control-name"),
                                dcc.RadioItems(id="ov-order", options=ORDER_OPTIONS, value=view["order"],
                                               inline=True, className="radio-inline")], className="map-controls")],
                     className="card-head"),
            html.P(MAP_NOTE, className="muted"),
            dcc.Graph(id="ov-map-mlp", figure=message_figure("loading…"), config={"displaylogo": False}),
            dcc.Graph(id="ov-map-attn", figure=message_figure("loading…"), config={"displaylogo": False}),
            html.Div(id="ov-units", className="unit-list"),
        ], className="card"),
        html.Section([dcc.Graph(id="ov-scatter", figure=message_figure("loading…", 500, webgl=True),
                                config={"displaylogo": False})], className="card"),
        html.Section([
            html.H2("Export and share"),
            html.Div([html.Span("Units, with the roles at these thresholds: ", className="muted"),
                      html.Span(_export_links(run_id, token, values), id="ov-exports")], className="actions"),
            html.Div([html.Span("A report for teammates without access to this server (one HTML file, opens "
                                "offline): ", className="muted"),
                      html.Span(_report_link(run_id, token, values), id="ov-report")], className="actions"),
            html.Details([html.Summary(["Copy as Python ", dcc.Clipboard(id="ov-python-copy", title="copy",
                                                                         className="clipboard")]),
                          html.Pre(id="ov-python", className="code")], className="python-code"),
            html.Div([html.Span("Freeze masks for your own training code (at these thresholds): ", className="muted"),
                      html.Span(_mask_links(run_id, token, values), id="ov-masks")], className="actions"),
            html.Div([html.Button("Share this view", id="ov-share", className="button"),
                      html.Div(id="ov-share-out", className="share-out")], className="actions"),
        ], className="card"),
        html.Section([html.H2("History"),
                      html.P("Every preview, sweep, estimate, fine-tune and inspection of this run, newest first; a "
                             "link opens it again.", className="muted"),
                      html.Div(id="ov-history", children=note("loading…"))], className="card", id="ov-history-card"),
    ])


MASKS = (("freeze SCU", "freeze", "SCU"), ("freeze SCU + 6% CU", "freeze", "SCU,CU:0.06"),
         ("train only RU", "train_only", "RU"))


def _mask_links(run_id: str, token: str | None, thresholds: dict) -> list:
    """safetensors files of the entries each choice owns (`backend.recipes.finetune.load_masks` reads them)."""
    return [html.A(label, href=api_link(f"/runs/{run_id}/masks", token, groups=groups, mode=mode,
                                        **{k: thresholds[k] for k in SLIDERS}),
                   className="button button-quiet", download="", target="_blank", id=f"ov-mask-{i}")
            for i, (label, mode, groups) in enumerate(MASKS)]


def _export_links(run_id: str, token: str | None, thresholds: dict) -> list:
    at = {k: thresholds[k] for k in SLIDERS}
    return [html.A(fmt.upper(), href=api_link(f"/runs/{run_id}/units", token, format=fmt, **at),
                   className="button button-quiet", download="", target="_blank", id=f"ov-export-{fmt}")
            for fmt in ("parquet", "csv", "json")]


def _report_link(run_id: str, token: str | None, thresholds: dict) -> html.A:
    return html.A("Export report", href=api_link(f"/runs/{run_id}/report", token,
                                                 **{k: thresholds[k] for k in SLIDERS}),
                  className="button button-quiet", download="", target="_blank", id="ov-export-report")


@callback(Output("ov-masks", "children"), Output("ov-exports", "children"), Output("ov-report", "children"),
          Output("ov-python", "children"), Output("ov-python-copy", "content"), Input("ov-view", "data"),
          State("ov-run", "data"))
def _exports(view, run):
    """Every export follows the view's thresholds, and so does its Python."""
    code = overview_code(run, view)
    return (_mask_links(view["_run"], view.get("token"), view), _export_links(view["_run"], view.get("token"), view),
            _report_link(view["_run"], view.get("token"), view), code, code)


def slider_ranges(stored: dict) -> dict[str, float]:
    """Each threshold slider's top: its usual range, widened to the run's own threshold (the URL is clamped to
    the same range)."""
    return {key: max(top, float(stored[key])) for key, (_, top, _) in SLIDERS.items()}


def _title(run: dict) -> list:
    return [run["name"], " ", html.Code(run["id"], className="run-id")] if run.get("name") else \
        ["Run ", html.Code(run["id"])]


def _identity(run: dict, token: str | None) -> list:
    """Tags, notes and lineage: where the run's model came from."""
    parts = []
    if run.get("tags"):
        parts.append(html.Div([html.Span(t, className="tag") for t in run["tags"]], className="tags", id="ov-tags-shown"))
    origin = run.get("origin") or {}
    if origin.get("kind") in ORIGINS:
        parent = run.get("parent_run")
        what = ORIGINS[origin["kind"]] + (f" ({origin['how']})" if origin.get("how") else "")
        source = (dcc.Link(run.get("_parent_name") or short_id(parent), href=page_link(f"/runs/{parent}", token),
                           id="ov-parent") if parent else html.Span(short_path(origin.get("from")) or "a model "
                                                                    "not attributed here"))
        parts.append(html.P(["Lineage: ", what, " of ", source,
                             f" (job {short_id(origin['job'])})" if origin.get("job") else ""],
                            className="lineage", id="ov-lineage"))
    else:
        parts.append(html.P("Lineage: a base model (not made by this service)", className="lineage muted",
                            id="ov-lineage"))
    if run.get("_children"):
        parts.append(html.P(["Runs of models made from this one: ",
                             *[item for child in run["_children"] for item in
                               (dcc.Link(run_label(child), href=page_link(f"/runs/{child['id']}", token),
                                         className="child-link"), " ")]], className="lineage"))
    if run.get("notes"):
        parts.append(html.Div(run["notes"], className="notes", id="ov-notes-shown"))
    return parts


@callback(Output("ov-identity", "children"), Output("ov-title", "children"), Output("ov-saved", "children"),
          Output("ov-run", "data"), Input("ov-save", "n_clicks"), State("ov-name", "value"),
          State("ov-tags", "value"), State("ov-notes", "value"), State("ov-view", "data"), State("ov-run", "data"),
          prevent_initial_call=True)
def _save(_, name, tags, notes, view, run):
    """PATCH the run's name, tags and notes; an empty field clears it."""
    changes = {"name": (name or "").strip() or None,
               "tags": [t.strip() for t in (tags or "").split(",") if t.strip()],
               "notes": (notes or "").strip() or None}
    try:
        saved = api(view.get("token")).update_run(view["_run"], changes)
    except ApiError as error:
        return no_update, no_update, error_box(error, "not saved"), no_update
    saved = {**saved, **{k: v for k, v in run.items() if k.startswith("_")}}
    return (_identity(saved, view.get("token")), _title(saved),
            html.Span("saved", className="status status-succeeded", id="ov-saved-ok"), saved)


@callback(Output("ov-identity", "children", allow_duplicate=True), Output("ov-run", "data", allow_duplicate=True),
          Input("ov-view", "id"), State("ov-view", "data"), State("ov-run", "data"), prevent_initial_call="initial_duplicate")
def _lineage(_, view, run):
    """The parent's name and the runs made from this run's models, looked up once the page is open."""
    client = api(view.get("token"))
    run = dict(run)
    if run.get("parent_run"):
        try:
            run["_parent_name"] = run_label(client.run(run["parent_run"]))
        except ApiError:
            pass
    try:
        run["_children"] = [{"id": r["id"], "name": r.get("name")} for r in client.runs(limit=1000)
                            if r.get("parent_run") == run["id"]]
    except ApiError:
        pass
    return _identity(run, view.get("token")), run


@callback(Output("ov-history", "children"), Output("ov-history-poll", "disabled"), Input("ov-history-poll", "n_intervals"),
          State("ov-view", "data"))
def _history(_, view):
    """The run's jobs other than its attribution, newest first, each with a link that reopens it."""
    token = view.get("token")
    try:
        jobs = [j for j in api(token).jobs(run_id=view["_run"], limit=200) if j["kind"] != "attribution"]
    except ApiError as error:
        return error_box(error, "the history cannot be listed"), True
    if not jobs:
        return note("Nothing yet: previews, sweeps and fine-tunes of this run are listed here."), True
    rows = []
    for job in jobs:
        href = job_link(view["_run"], job, token)
        state = (progress_bar(job["status"], job["progress"], job["phase"]) if job["status"] in ACTIVE else
                 html.Span(job["status"], className=f"status status-{job['status']}", title=job.get("error") or None))
        rows.append(html.Tr([html.Td(job["kind"]), html.Td(job["created_at"][:16].replace("T", " ")),
                             html.Td(job_summary(job), className="wrap summary"), html.Td(state),
                             html.Td(dcc.Link("open →", href=href, className="history-link") if href else
                                     html.A("JSON", href=api_link(f"/jobs/{job['id']}", token), target="_blank"))],
                            **{"data-job": job["id"], "data-kind": job["kind"]}))
    table = html.Table([html.Thead(html.Tr([html.Th(h) for h in ("kind", "when", "settings", "status", "")])),
                        html.Tbody(rows)], className="table history-table", id="ov-history-table")
    return table, not any(job["status"] in ACTIVE for job in jobs)


def _describe(run: dict) -> html.Div:
    manifest = run.get("manifest") or {}
    model = manifest.get("model", {})
    sets = manifest.get("datasets", {})
    parts = [f"model {short_path(run.get('model'))}"]
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


def _runmap(view: dict) -> RunMap:
    """The run's map, after the API has said (to this caller's token) that it may read the run."""
    client = api(view.get("token"))
    client.run(view["_run"])
    return RUN_MAPS.get(client, view["_run"])


@callback(Output("ov-view", "data", allow_duplicate=True),
          Input("ov-h_ru", "value"), Input("ov-h_scu", "value"), Input("ov-h_ucu", "value"),
          Input("ov-color", "value"), Input("ov-order", "value"), State("ov-view", "data"), prevent_initial_call=True)
def _view(h_ru, h_scu, h_ucu, color, order, view):
    if None in (h_ru, h_scu, h_ucu):
        return no_update
    changes = {k: v for k, v in {"h_ru": h_ru, "h_scu": h_scu, "h_ucu": h_ucu, "color": color,
                                 "order": order}.items() if view.get(k) != v}
    if "order" in changes:  # positions mean something else in the other order
        changes.update({f"{m}_x": None for m in MODULES}, pick=None)
    return view_patch(**changes) if changes else no_update


@callback(Output("ov-h_ru", "value"), Output("ov-h_scu", "value"), Output("ov-h_ucu", "value"),
          Input("ov-reset", "n_clicks"), State("ov-view", "data"), prevent_initial_call=True)
def _reset(_, view):
    stored = view["_stored"]
    return stored["h_ru"], stored["h_scu"], stored["h_ucu"]


def _keys(view: dict) -> dict:
    """What each group of figures depends on: the roles (counts, bars, scatter) and each map."""
    return {"roles": [view[k] for k in SLIDERS],
            **{m: [view.get("color"), view.get("order"), view.get(f"{m}_x"), view.get(f"{m}_y")] for m in MODULES}}


@callback(Output("ov-status", "children"), Output("ov-counts", "children"), Output("ov-bars", "figure"),
          Output("ov-map-mlp", "figure"), Output("ov-map-attn", "figure"), Output("ov-scatter", "figure"),
          Output("ov-poll", "disabled"), Output("ov-intervene", "href"), Output("ov-drawn", "data"),
          Input("ov-view", "data"), Input("ov-poll", "n_intervals"), State("ov-drawn", "data"))
def _draw(view, _, drawn):
    """Everything that depends on the thresholds (counts from the API, bars, scatter) and on the map settings;
    a figure whose inputs did not change is not sent again (a zoom or a click changes the view too)."""
    client = api(view.get("token"))
    run_id = view["_run"]
    keys = _keys(view)
    ready = bool(drawn and drawn.get("ready") and drawn.get("run") == run_id)
    if ready and all(drawn.get(k) == v for k, v in keys.items()):
        return (no_update,) * 9
    thresholds = {k: view[k] for k in SLIDERS}
    intervene = page_link(f"/runs/{run_id}/intervene", view.get("token"), **thresholds)
    same_roles = ready and drawn["roles"] == keys["roles"]
    try:
        if same_roles:
            client.run(run_id)  # the caller may still read it
            t = drawn["t"]
        else:
            roles = client.roles(run_id, **thresholds)
            t = roles["thresholds"]
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
                return status, None, waiting, waiting, waiting, waiting, False, intervene, {"ready": False}
            return _failed(f"this run {run['status']}: {run.get('error') or 'no units were written'}", intervene)
        return _failed(error, intervene)
    try:
        runmap = RUN_MAPS.get(client, run_id)
    except ApiError as error:
        return _failed(error, intervene)
    at = runmap.at(t["h_ru"], t["h_scu"], t["h_ucu"])
    maps = [no_update if same_roles and drawn.get(m) == keys[m] else _map(runmap, m, at, view) for m in MODULES]
    done = {"ready": True, "run": run_id, **keys, "t": t}
    if same_roles:
        return no_update, no_update, no_update, *maps, no_update, True, intervene, done
    return (None, _counts(roles), layer_bars_figure(roles["per_layer"]), *maps, runmap.scatter_figure(at), True,
            intervene, done)


def _map(runmap: RunMap, module: str, at, view: dict) -> dict:
    if module not in runmap.grids:
        return message_figure(f"this model has no {MODULE_PLURALS[module]}")
    return runmap.map_figure(module, at, view.get("color", "role"), view.get("order", "role"),
                             view.get(f"{module}_x"), view.get(f"{module}_y"))


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
    return error_box(error, "roles"), None, blank, blank, blank, blank, True, intervene, {"ready": False}


def _rebin(module: str):
    """A zoom on a map: re-bin the window shown on the server (down to one unit per cell) and keep it in the
    view."""

    @callback(Output(f"ov-map-{module}", "figure", allow_duplicate=True),
              Output("ov-view", "data", allow_duplicate=True), Output("ov-drawn", "data", allow_duplicate=True),
              Input(f"ov-map-{module}", "relayoutData"), State("ov-view", "data"), State("ov-drawn", "data"),
              prevent_initial_call=True)
    def rebin(relayout, view, drawn):
        if not relayout or not (drawn and drawn.get("ready")):
            return no_update, no_update, no_update
        x, y = zoom_of(relayout, view.get(f"{module}_x"), view.get(f"{module}_y"))
        if [x, y] == [view.get(f"{module}_x"), view.get(f"{module}_y")]:
            return no_update, no_update, no_update
        try:
            runmap = _runmap(view)
        except ApiError:
            return no_update, no_update, no_update
        if module not in runmap.grids:
            return no_update, no_update, no_update
        t = drawn["t"]
        figure = runmap.map_figure(module, runmap.at(t["h_ru"], t["h_scu"], t["h_ucu"]), view.get("color", "role"),
                                   view.get("order", "role"), x, y)
        meta, grid = figure["layout"]["meta"], runmap.grids[module]
        x = None if meta["x"] == [0, grid.span] else meta["x"]
        y = None if meta["y"] == [int(grid.layers[0]), int(grid.layers[-1])] else meta["y"]
        drawn_now = view_patch(**{module: [view.get("color"), view.get("order"), x, y]})
        return figure, view_patch(**{f"{module}_x": x, f"{module}_y": y}), drawn_now

    return rebin


for _module in MODULES:
    _rebin(_module)


def unit_link(view: dict, module: str, layer: int, unit: int) -> str:
    """A unit's page, with the token and the view's thresholds."""
    return page_link(f"/runs/{view['_run']}/units/{module}/{layer}/{unit}", view.get("token"),
                     **{k: view[k] for k in SLIDERS})


@callback(Output("ov-view", "data", allow_duplicate=True), Output("ov-go", "href"),
          Input("ov-map-mlp", "clickData"), Input("ov-map-attn", "clickData"), Input("ov-scatter", "clickData"),
          State("ov-view", "data"), prevent_initial_call=True)
def _pick(mlp, attn, scatter, view):
    """A click on a map cell or a density cell of the scatter lists its units; on a scatter point, opens its unit."""
    source = ctx.triggered_id
    data = {"ov-map-mlp": mlp, "ov-map-attn": attn, "ov-scatter": scatter}.get(source)
    if not data or not data.get("points"):
        return no_update, no_update
    point = data["points"][0]
    try:
        runmap = _runmap(view)
    except ApiError:
        return no_update, no_update
    if source == "ov-scatter":
        if isinstance(point.get("pointNumber"), int):  # a marker (a heatmap cell has a [row, column] pair)
            t = {k: view[k] for k in SLIDERS}
            unit = runmap.scatter_unit(runmap.at(t["h_ru"], t["h_scu"], t["h_ucu"]), int(point["curveNumber"]),
                                       point["pointNumber"])
            return no_update, unit_link(view, *unit) if unit else no_update
        return view_patch(pick=["bin", *runmap.bin_of(float(point["x"]), float(point["y"]))]), no_update
    module = "mlp" if source == "ov-map-mlp" else "attn"
    start, stop = runmap.window(module, view.get(f"{module}_x"), view.get(f"{module}_y")).cell(float(point["x"]))
    return view_patch(pick=[module, int(point["y"]), start, stop]), no_update


@callback(Output("ov-units", "children"), Input("ov-view", "data"), Input("ov-drawn", "data"))
def _units(view, drawn):
    """The units of the picked cell or bin, with links to their pages."""
    pick = view.get("pick")
    if not pick or not (drawn and drawn.get("ready")):
        return html.P("Click a cell of a map, or a density cell of the scatter, to list its units here.",
                      className="muted", id="ov-units-hint")
    try:
        runmap = _runmap(view)
    except ApiError as error:
        return error_box(error, "units")
    t = drawn["t"]
    at = runmap.at(t["h_ru"], t["h_scu"], t["h_ucu"])
    if pick[0] == "bin":
        frame, (x0, x1, y0, y1) = runmap.bin_units(at, pick[1], pick[2])
        title = f"z_safety {x0:.2f} to {x1:.2f}, z_utility {y0:.2f} to {y1:.2f}"
    else:
        module, layer, start, stop = pick
        if module not in runmap.grids:
            return None
        frame = runmap.cell_units(module, at, view.get("order", "role"), layer, start, stop)
        ranked = " ranked" if view.get("order", "role") == "role" else ""
        what = (f"{MODULE_NAMES[module]} at rank {start}" if ranked else f"{MODULE_NAMES[module]} {start}") \
            if stop - start == 1 else f"{MODULE_PLURALS[module]}{ranked} {start}–{stop - 1}"
        title = f"Layer {layer} · {what}"
    counts = frame.role.value_counts()
    summary = ", ".join(f"{counts[r]:,} {r}" for r in ROLES if r in counts)
    shown = frame.head(LISTED)
    head = ["layer", "module", "unit", "role", "z_safety", "z_utility", "z_S − z_U", ""]
    rows = [html.Tr([html.Td(int(r.layer), className="num"), html.Td(MODULE_NAMES[r.module]),
                     html.Td(int(r.unit), className="num"), html.Td(role_chip(r.role)),
                     html.Td(f"{r.z_safety:.2f}", className="num"), html.Td(f"{r.z_utility:.2f}", className="num"),
                     html.Td(f"{r.diff:.2f}", className="num"),
                     html.Td(dcc.Link("unit page →", href=unit_link(view, r.module, int(r.layer), int(r.unit)),
                                      className="unit-link"))])
            for r in shown.itertuples()]
    more = f" (the first {LISTED:,} shown)" if len(frame) > LISTED else ""
    return html.Div([
        html.H3(f"{title}: {len(frame):,} unit{'s' if len(frame) != 1 else ''}"
                + (f" ({summary})" if summary else "") + more, id="ov-units-title"),
        html.Div(html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(rows)],
                            className="table", id="ov-units-table"), className="table-scroll"),
    ])


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

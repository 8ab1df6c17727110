"""Runs `/`: every run with its live status and progress, and a form that starts an attribution.

View state in the URL: status (a filter), token.
"""
from __future__ import annotations

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update

from app.client import ApiError
from app.components import ACTIVE, api, error_box, note, page_link, progress_bar, shared_banner, sync_url, view_store

dash.register_page(__name__, path="/", title="ssah · runs", name="Runs")

STATUSES = ["all", "queued", "running", "succeeded", "failed", "cancelled"]
FIELDS = {"model": "model", "safety": "safety", "utility": "utility", "samples": "samples",
          "h_ru": "thresholds.h_ru", "h_scu": "thresholds.h_scu", "h_ucu": "thresholds.h_ucu",
          "batch_size": "batch_size"}


def layout(status: str | None = None, token: str | None = None, **_):
    view = {"status": status if status in STATUSES else "all", "token": token}
    return html.Div([
        *view_store("runs-view", view),
        dcc.Interval(id="runs-poll", interval=2000),
        shared_banner(token),
        html.Div([html.H1("Runs"),
                  dcc.RadioItems(id="runs-status", options=STATUSES, value=view["status"], inline=True,
                                 className="radio-inline")], className="page-head"),
        html.Section([html.Div(id="runs-action"), html.Div(id="runs-table", children=note("loading runs…"))],
                     className="card"),
        html.Section([
            html.H2("Start a run"),
            html.P("Score every MLP channel and attention head on a safety and a utility calibration set, then sort "
                   "them into SCU, UCU, CU and RU.", className="muted"),
            html.Div(id="runs-catalog-error"),
            *_form(),
            html.Div([html.Button("Start attribution", id="runs-submit", className="button"),
                      html.Div(id="runs-submitted")], className="actions"),
        ], className="card"),
    ])


def _field(label: str, component, hint: str = "") -> html.Div:
    return html.Div([html.Label(label, htmlFor=component.id), component,
                     html.Small(hint, className="muted") if hint else None], className="field")


def _form() -> list:
    lists = [html.Datalist(id=f"runs-{name}") for name in ("models", "calibration-safety", "calibration-utility")]
    return [*lists, html.Div([
        _field("model", dcc.Input(id="runs-model", list="runs-models", placeholder="default: the service's model",
                                  debounce=True), "a built-in name or a folder inside the model roots"),
        _field("safety set", dcc.Input(id="runs-safety", list="runs-calibration-safety", value="advbench-refusals",
                                       debounce=True), "built-in name or a file inside the data roots"),
        _field("utility set", dcc.Input(id="runs-utility", list="runs-calibration-utility", value="benign-answers",
                                        debounce=True)),
        _field("samples", dcc.Input(id="runs-samples", type="number", value=128, debounce=True),
               "pairs drawn from each set"),
        _field("h_RU", dcc.Input(id="runs-h_ru", type="number", value=0.10, step="any", debounce=True)),
        _field("h_SCU", dcc.Input(id="runs-h_scu", type="number", value=0.01, step="any", debounce=True)),
        _field("h_UCU", dcc.Input(id="runs-h_ucu", type="number", value=0.05, step="any", debounce=True)),
        _field("batch size", dcc.Input(id="runs-batch_size", type="number", value=8, debounce=True)),
        _field("positions", dcc.RadioItems(id="runs-positions", options=["response", "prompt", "all"],
                                           value="response", inline=True, className="radio-inline"),
               "which tokens count"),
        _field("responses", dcc.RadioItems(id="runs-responses", options=["given", "self"], value="given",
                                           inline=True, className="radio-inline"),
               "the sets' responses, or the model's own"),
    ], className="form-grid")]


sync_url("runs-view")


@callback(Output("runs-view", "data"), Input("runs-status", "value"), State("runs-view", "data"),
          prevent_initial_call=True)
def _view(status, view):
    return {**view, "status": status}


@callback(Output("runs-table", "children"), Input("runs-poll", "n_intervals"), Input("runs-view", "data"))
def _table(_, view):
    token = view.get("token")
    try:
        runs = api(token).runs(status=None if view["status"] == "all" else view["status"])
    except ApiError as error:
        return error_box(error, "the runs cannot be listed")
    if not runs:
        return note("No runs yet: start one below." if view["status"] == "all" else f"No {view['status']} runs.")
    head = html.Thead(html.Tr([html.Th(h) for h in ("run", "model", "status", "safety / utility", "samples",
                                                    "created", "")]))
    body = []
    for run in runs:
        s = run.get("settings") or {}
        link = dcc.Link(run["id"], href=page_link(f"/runs/{run['id']}", token), className="mono")
        if run["status"] in ACTIVE:
            state = progress_bar(run["status"], run["progress"], run["phase"])
            action = html.Button("cancel", id={"type": "runs-cancel", "run": run["id"]},
                                 className="button button-small button-quiet")
        else:
            state = html.Span([run["status"] + (" (cached)" if run.get("cached") else ""),
                               html.Div(run["error"], className="error-text") if run.get("error") else None],
                              className=f"status status-{run['status']}")
            action = None
        body.append(html.Tr([html.Td(link), html.Td(run["model"], className="wrap"), html.Td(state),
                             html.Td(f"{s.get('safety', '')} / {s.get('utility', '')}", className="wrap"),
                             html.Td(s.get("samples", ""), className="num"),
                             html.Td(run["created_at"][:19].replace("T", " ")), html.Td(action)],
                            className=f"row-{run['status']}"))
    return html.Table([head, html.Tbody(body)], className="table runs-table", id="runs-list")


@callback(Output("runs-models", "children"), Output("runs-calibration-safety", "children"),
          Output("runs-calibration-utility", "children"), Output("runs-catalog-error", "children"),
          Input("runs-submit", "id"), State("runs-view", "data"))
def _catalog(_, view):
    """The form's suggestions (models, calibration sets), from the API once the page is open."""
    client = api(view.get("token"))
    try:
        models, sets = client.models(), client.datasets()
    except ApiError as error:
        return [], [], [], error_box(error, "the model and data lists cannot be loaded")
    return ([html.Option(value=m["name"], label=m["description"]) for m in models],
            *[[html.Option(value=d["name"], label=f"{d['description']} ({d['size']})") for d in sets
               if d["kind"] == kind] for kind in ("calibration-safety", "calibration-utility")], None)


@callback(Output("runs-submitted", "children"),
          *[Output(f"runs-{name}", "className") for name in FIELDS],
          Input("runs-submit", "n_clicks"),
          *[State(f"runs-{name}", "value") for name in FIELDS],
          State("runs-positions", "value"), State("runs-responses", "value"), State("runs-view", "data"),
          prevent_initial_call=True)
def _submit(_, model, safety, utility, samples, h_ru, h_scu, h_ucu, batch_size, positions, responses, view):
    body = {"safety": safety, "utility": utility, "samples": samples, "batch_size": batch_size,
            "positions": positions, "responses": responses,
            "thresholds": {k: v for k, v in (("h_ru", h_ru), ("h_scu", h_scu), ("h_ucu", h_ucu)) if v is not None}}
    if model:
        body["model"] = model
    body = {k: v for k, v in body.items() if v not in (None, "")}
    fine = [None] * len(FIELDS)
    try:
        accepted = api(view.get("token")).create_run(body)
    except ApiError as error:
        blamed = [("invalid" if FIELDS[name] in error.fields else None) for name in FIELDS]
        return error_box(error, "the run was not started"), *blamed
    href = page_link(f"/runs/{accepted['id']}", view.get("token"))
    words = ("found in the cache: already done" if accepted.get("cached")
             else "queued: it appears above, with its progress")
    return html.Div(["Run ", dcc.Link(accepted["id"], href=href, className="mono"), f" {words}."],
                    className="alert alert-ok"), *fine


@callback(Output("runs-action", "children"), Output("runs-poll", "n_intervals"),
          Input({"type": "runs-cancel", "run": ALL}, "n_clicks"), State("runs-view", "data"),
          prevent_initial_call=True)
def _cancel(clicks, view):
    if not ctx.triggered_id or not any(clicks):
        return no_update, no_update
    run_id = ctx.triggered_id["run"]
    try:
        done = api(view.get("token")).delete_run(run_id)
    except ApiError as error:
        return error_box(error, f"run {run_id} was not cancelled"), 0
    return note(f"run {run_id}: {done['status']}"), 0

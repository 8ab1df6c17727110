"""Runs `/`: every run as an experiment (name, model, sets, samples, thresholds, status, the run it came from) with
filters and a comparison of two ticked runs, and a form that starts an attribution.

View state in the URL: q (text search in names, models and ids), tag, status, token.
"""
from __future__ import annotations

import dash
from dash import ALL, Input, Output, State, callback, ctx, dcc, html, no_update

from app.client import ApiError
from app.components import (
    ACTIVE,
    api,
    error_box,
    note,
    page_link,
    progress_bar,
    shared_banner,
    sync_url,
    view_patch,
    view_store,
)
from app.experiments import model_label, run_label, short_path, thresholds_label

dash.register_page(__name__, path="/", title="ssah · runs", name="Runs")

STATUSES = ["all", "queued", "running", "succeeded", "failed", "cancelled"]
# form field -> (the API's name for it, its default as the API applies it)
FIELDS = {"model": ("model", None), "safety": ("safety", "advbench-refusals"), "utility": ("utility", "benign-answers"),
          "samples": ("samples", 128), "h_ru": ("thresholds.h_ru", 0.10), "h_scu": ("thresholds.h_scu", 0.01),
          "h_ucu": ("thresholds.h_ucu", 0.05), "batch_size": ("batch_size", 8)}
REQUIRED = {"safety": "the safety calibration set (harmful prompts with refusals), e.g. advbench-refusals",
            "utility": "the utility calibration set (everyday prompts with answers), e.g. benign-answers"}


def layout(status: str | None = None, q: str | None = None, tag: str | None = None, token: str | None = None, **_):
    view = {"status": status if status in STATUSES else "all", "q": q or "", "tag": tag or "", "token": token}
    return html.Div([
        *view_store("runs-view", view),
        dcc.Store(id="runs-picked", data=[]),  # the runs ticked for a comparison
        dcc.Store(id="runs-shown"),  # what the table shows now, so a poll that finds nothing new redraws nothing
        dcc.Interval(id="runs-poll", interval=2000),
        shared_banner(token),
        html.Div([html.H1("Runs", className="grow"),
                  html.Div(id="runs-compare-box", className="actions")], className="page-head"),
        html.Section([
            html.Div([
                html.Div([html.Label("search", htmlFor="runs-q"),
                          dcc.Input(id="runs-q", value=view["q"], debounce=True, type="search",
                                    placeholder="part of a name, model or id")], className="field"),
                html.Div([html.Label("tag", htmlFor="runs-tag"),
                          dcc.Input(id="runs-tag", value=view["tag"], debounce=True, list="runs-tags",
                                    placeholder="any tag")], className="field"),
                html.Div([html.Label("status"),
                          dcc.RadioItems(id="runs-status", options=STATUSES, value=view["status"], inline=True,
                                         className="radio-inline")], className="field"),
            ], className="filters"),
            html.Datalist(id="runs-tags"),
            html.Div(id="runs-action"), html.Div(id="runs-table", children=note("loading runs…")),
        ], className="card"),
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
    number = lambda name, **kw: dcc.Input(id=f"runs-{name}", type="number", value=FIELDS[name][1], debounce=True,  # noqa: E731
                                          **kw)
    return [*lists, html.Div([
        _field("name (optional)", dcc.Input(id="runs-name", debounce=True, placeholder="e.g. base, 128 pairs"),
               "what the runs table calls it; default: the start of its id"),
        _field("tags (optional)", dcc.Input(id="runs-tags-input", debounce=True, placeholder="e.g. smoke, base"),
               "comma-separated; default: none"),
        _field("model", dcc.Input(id="runs-model", list="runs-models", placeholder="the service's default model",
                                  debounce=True), "a built-in name or a folder inside the model roots; default: the "
                                                  "service's default model"),
        _field("safety set (required)", dcc.Input(id="runs-safety", list="runs-calibration-safety",
                                                  value=FIELDS["safety"][1], debounce=True, required=True),
               "a built-in name or a file inside the data roots; default advbench-refusals"),
        _field("utility set (required)", dcc.Input(id="runs-utility", list="runs-calibration-utility",
                                                   value=FIELDS["utility"][1], debounce=True, required=True),
               "a built-in name or a file inside the data roots; default benign-answers"),
        _field("samples", number("samples", min=1), "pairs drawn from each set; default 128"),
        _field("h_RU", number("h_ru", min=0, max=1, step="any"), "redundant share of unit parameters; default 0.10"),
        _field("h_SCU", number("h_scu", min=0, max=1, step="any"), "safety-critical share; default 0.01"),
        _field("h_UCU", number("h_ucu", min=0, max=1, step="any"), "utility-critical share; default 0.05"),
        _field("batch size", number("batch_size", min=1), "pairs per forward pass; default 8"),
        _field("positions", dcc.RadioItems(id="runs-positions", options=["response", "prompt", "all"],
                                           value="response", inline=True, className="radio-inline"),
               "which tokens count; default response"),
        _field("responses", dcc.RadioItems(id="runs-responses", options=["given", "self"], value="given",
                                           inline=True, className="radio-inline"),
               "the sets' responses, or the model's own; default given"),
    ], className="form-grid")]


sync_url("runs-view")


@callback(Output("runs-view", "data"), Input("runs-status", "value"), Input("runs-q", "value"),
          Input("runs-tag", "value"), State("runs-view", "data"), prevent_initial_call=True)
def _view(status, q, tag, view):
    changes = {k: v for k, v in {"status": status, "q": (q or "").strip(), "tag": (tag or "").strip()}.items()
               if view.get(k) != v}
    return view_patch(**changes) if changes else no_update


def _names(client, runs: list[dict]) -> dict[str, str]:
    """Labels of the listed runs and of the runs they came from (looked up when the filter hides them)."""
    names = {r["id"]: run_label(r) for r in runs}
    for parent in {r.get("parent_run") for r in runs} - set(names) - {None}:
        try:
            names[parent] = run_label(client.run(parent))
        except ApiError:
            continue
    return names


@callback(Output("runs-table", "children"), Output("runs-shown", "data"), Output("runs-tags", "children"),
          Input("runs-poll", "n_intervals"), Input("runs-view", "data"), State("runs-picked", "data"),
          State("runs-shown", "data"))
def _table(_, view, picked, shown):
    token = view.get("token")
    client = api(token)
    try:
        runs = client.runs(status=None if view["status"] == "all" else view["status"], q=view.get("q"),
                           tag=view.get("tag"))
    except ApiError as error:
        return error_box(error, "the runs cannot be listed"), None, no_update
    signature = [view.get("q"), view.get("tag"), view["status"],
                 [[r["id"], r["status"], round(r["progress"], 2), r["phase"], r["updated_at"]] for r in runs]]  # as JSON
    if signature == shown:
        return no_update, no_update, no_update
    tags = [html.Option(value=t) for t in sorted({t for r in runs for t in r.get("tags") or []})]
    if not runs:
        filtered = view["status"] != "all" or view.get("q") or view.get("tag")
        return note("No runs match these filters." if filtered else "No runs yet: start one below."), signature, tags
    names = _names(client, runs)
    head = html.Thead(html.Tr([html.Th(h, className=c) for h, c in (
        ("", None), ("run", None), ("model", None), ("safety / utility", None), ("samples", "num"),
        ("h_RU / h_SCU / h_UCU", "num"), ("status", None), ("parent", None), ("created", None), ("", None))]))
    body = []
    for run in runs:
        s = run.get("settings") or {}
        tick = dcc.Checklist(id={"type": "runs-pick", "run": run["id"]}, options=[{"label": "", "value": run["id"]}],
                             value=[run["id"]] if run["id"] in (picked or []) else [], className="pick",
                             inputClassName="pick-input")
        name = html.Div([dcc.Link(run_label(run), href=page_link(f"/runs/{run['id']}", token), title=run["id"],
                                  className="run-name"),
                         html.Div([html.Span(t, className="tag") for t in run.get("tags") or []], className="tags")])
        if run["status"] in ACTIVE:
            state = progress_bar(run["status"], run["progress"], run["phase"])
            action = html.Button("cancel", id={"type": "runs-cancel", "run": run["id"]},
                                 className="button button-small button-quiet")
        else:
            state = html.Span([run["status"] + (" (cached)" if run.get("cached") else ""),
                               html.Div(run["error"], className="error-text") if run.get("error") else None],
                              className=f"status status-{run['status']}")
            action = None
        parent = run.get("parent_run")
        parent_cell = (dcc.Link(names.get(parent, parent[:8]), href=page_link(f"/runs/{parent}", token),
                                className="parent-link", title=parent) if parent else html.Span("—", className="muted"))
        body.append(html.Tr([
            html.Td(tick), html.Td(name), html.Td(model_label(run, names), className="wrap model-cell",
                                                  title=run.get("model")),
            html.Td(f"{short_path(s.get('safety'))} / {short_path(s.get('utility'))}", className="wrap"),
            html.Td(s.get("samples", ""), className="num"),
            html.Td(thresholds_label(s.get("thresholds")), className="num"), html.Td(state), html.Td(parent_cell),
            html.Td(run["created_at"][:16].replace("T", " ")), html.Td(action)],
            className=f"row-{run['status']}", **{"data-run": run["id"]}))
    return html.Table([head, html.Tbody(body)], className="table runs-table", id="runs-list"), signature, tags


@callback(Output("runs-picked", "data"), Input({"type": "runs-pick", "run": ALL}, "value"),
          State("runs-picked", "data"), prevent_initial_call=True)
def _pick(values, picked):
    """The ticked runs, in the order they were ticked (a redraw of the table keeps them)."""
    if not ctx.triggered_id:
        return no_update
    run_id = ctx.triggered_id["run"]
    ticked = run_id in (ctx.triggered[0]["value"] or [])
    picked = [r for r in (picked or []) if r != run_id] + ([run_id] if ticked else [])
    return picked


@callback(Output("runs-compare-box", "children"), Input("runs-picked", "data"), State("runs-view", "data"))
def _compare_link(picked, view):
    picked = picked or []
    if len(picked) == 2:
        a, b = picked
        return dcc.Link("Compare selected →", id="runs-compare", className="button",
                        href=page_link("/compare", view.get("token"), a=a, b=b))
    words = "Tick two runs to compare them." if len(picked) < 2 else f"{len(picked)} ticked: compare takes two."
    return [html.Span(words, className="muted", id="runs-compare-hint"),
            html.Button("Compare selected", className="button", disabled=True, id="runs-compare-off")]


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


def _tags(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


@callback(Output("runs-submitted", "children"),
          *[Output(f"runs-{name}", "className") for name in FIELDS],
          Input("runs-submit", "n_clicks"),
          *[State(f"runs-{name}", "value") for name in FIELDS],
          State("runs-name", "value"), State("runs-tags-input", "value"),
          State("runs-positions", "value"), State("runs-responses", "value"), State("runs-view", "data"),
          prevent_initial_call=True)
def _submit(_, model, safety, utility, samples, h_ru, h_scu, h_ucu, batch_size, name, tags, positions, responses,
            view):
    values = {"model": model, "safety": safety, "utility": utility}
    missing = [f for f in REQUIRED if not (values[f] or "").strip()]
    if missing:  # an empty set is a slip, not a request for the default
        text = "; ".join(f"{f} set: required ({REQUIRED[f]})" for f in missing)
        return error_box(f"the run was not started: {text}"), *[("invalid" if f in missing else no_update)
                                                                 for f in FIELDS]
    body = {"safety": safety.strip(), "utility": utility.strip(), "samples": samples, "batch_size": batch_size,
            "positions": positions, "responses": responses, "name": (name or "").strip() or None,
            "tags": _tags(tags) or None,
            "thresholds": {k: v for k, v in (("h_ru", h_ru), ("h_scu", h_scu), ("h_ucu", h_ucu)) if v is not None}}
    if model:
        body["model"] = model.strip()
    body = {k: v for k, v in body.items() if v not in (None, "")}
    fine = [None] * len(FIELDS)
    try:
        accepted = api(view.get("token")).create_run(body)
    except ApiError as error:
        blamed = [("invalid" if FIELDS[f][0] in error.fields else None) for f in FIELDS]
        return error_box(error, "the run was not started"), *blamed
    href = page_link(f"/runs/{accepted['id']}", view.get("token"))
    words = ("found in the cache: already done" if accepted.get("cached")
             else "queued: it appears above, with its progress")
    return html.Div(["Run ", dcc.Link(body.get("name") or accepted["id"], href=href, className="mono"),
                     f" {words}."], className="alert alert-ok"), *fine


def _clear_on_change(name: str) -> None:
    """A field marked wrong loses its mark as soon as its value changes (the next submit judges it again); in the
    browser, and only when it is marked, so typing elsewhere changes nothing."""
    dash.clientside_callback(
        "function (value, mark) { return mark ? null : window.dash_clientside.no_update; }",
        Output(f"runs-{name}", "className", allow_duplicate=True), Input(f"runs-{name}", "value"),
        State(f"runs-{name}", "className"), prevent_initial_call=True)


for _name in FIELDS:
    _clear_on_change(_name)


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

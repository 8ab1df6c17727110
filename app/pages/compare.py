"""Compare `/compare?a=RUN&b=RUN`: how units change role between two runs of one architecture (base vs aligned,
before vs after fine-tuning): the two runs' settings side by side (what differs marked), the 4 x 4 transition matrix
and the per-layer SCU overlap.

View state in the URL: a, b, weight (units | params), token.
"""
from __future__ import annotations

import dash
from dash import Input, Output, State, callback, dcc, html

from app.client import ApiError
from app.components import api, error_box, note, page_link, shared_banner, sync_url, view_store
from app.experiments import model_label, run_label, settings_rows
from app.figures import message_figure, scu_overlap_figure, transitions_figure

dash.register_page(__name__, path="/compare", title="ssah · compare", name="Compare")


def layout(a: str | None = None, b: str | None = None, weight: str | None = None, token: str | None = None, **_):
    view = {"a": a or "", "b": b or "", "weight": weight if weight in ("units", "params") else "units",
            "token": token}
    known = run_options(api(token), view)
    return html.Div([
        *view_store("cmp-view", view),
        shared_banner(token),
        html.Div(html.H1("Compare two runs"), className="page-head"),
        html.Section([
            html.Div([
                html.Div([html.Label("run A (e.g. the base model)", htmlFor="cmp-a"),
                          dcc.Dropdown(id="cmp-a", value=view["a"] or None, options=known,
                                       placeholder="choose a run")],
                         className="field"),
                html.Div([html.Label("run B (e.g. the aligned or fine-tuned model)", htmlFor="cmp-b"),
                          dcc.Dropdown(id="cmp-b", value=view["b"] or None, options=known,
                                       placeholder="choose a run")],
                         className="field"),
                html.Div([html.Label("count"),
                          dcc.RadioItems(id="cmp-weight", options=["units", "params"], value=view["weight"],
                                         inline=True, className="radio-inline")], className="field"),
            ], className="form-grid pickers"),
        ], className="card"),
        html.Div(id="cmp-summary"),
        html.Div(id="cmp-settings"),
        html.Section(dcc.Graph(id="cmp-matrix", figure=message_figure("choose two runs"),
                               config={"displaylogo": False}), className="card"),
        html.Section(dcc.Graph(id="cmp-overlap", figure=message_figure("choose two runs"),
                               config={"displaylogo": False}), className="card"),
    ])


sync_url("cmp-view")


def run_option(run: dict, names: dict[str, str]) -> dict:
    """A run as the pickers list it: its name (or short id), its model, when it was made; the full id on hover."""
    label = f"{run_label(run)} · {model_label(run, names)} · {run['created_at'][:16].replace('T', ' ')}"
    return {"label": label, "value": run["id"], "title": run["id"]}


def run_options(client, view: dict) -> list[dict]:
    """The finished runs to choose from (and the runs the URL names, listed or not)."""
    try:
        runs = client.runs(status="succeeded")
    except ApiError:
        runs = []
    for key in ("a", "b"):
        if view[key] and all(r["id"] != view[key] for r in runs):
            try:
                runs.append(client.run(view[key]))
            except ApiError:
                runs.append({"id": view[key], "created_at": "", "model": ""})
    names = {r["id"]: run_label(r) for r in runs}
    return [run_option(r, names) for r in runs]


def _settings_table(a: dict, b: dict, names: dict[str, str]) -> html.Section:
    rows = settings_rows(a, b, names)
    body = [html.Tr([html.Td([label, html.Span(" ≠", className="differs-mark", title="differs") if differs
                              else None]),
                     html.Td(va), html.Td(vb)], className="differs" if differs else None,
                    **{"data-setting": label})
            for label, va, vb, differs in rows]
    count = sum(d for *_, d in rows)
    return html.Section([
        html.H2("Settings"),
        html.P(f"{count} setting{'s' if count != 1 else ''} differ{'s' if count == 1 else ''} (marked ≠)."
               if count else "The two runs were made with the same settings.", className="muted"),
        html.Table([html.Thead(html.Tr([html.Th("setting"), html.Th("A"), html.Th("B")])), html.Tbody(body)],
                   className="table settings-table", id="cmp-settings-table"),
    ], className="card")


@callback(Output("cmp-settings", "children"), Input("cmp-view", "data"))
def _settings(view):
    if not (view["a"] and view["b"]):
        return None
    client = api(view.get("token"))
    try:
        a, b = client.run(view["a"]), client.run(view["b"])
    except ApiError as error:
        return error_box(error, "the runs cannot be read")
    names = {r["id"]: run_label(r) for r in (a, b)}
    for parent in {a.get("parent_run"), b.get("parent_run")} - set(names) - {None}:
        try:
            names[parent] = run_label(client.run(parent))
        except ApiError:
            pass
    return _settings_table(a, b, names)


@callback(Output("cmp-view", "data"), Input("cmp-a", "value"), Input("cmp-b", "value"),
          Input("cmp-weight", "value"), State("cmp-view", "data"), prevent_initial_call=True)
def _view(a, b, weight, view):
    return {**view, "a": a or "", "b": b or "", "weight": weight}


@callback(Output("cmp-summary", "children"), Output("cmp-matrix", "figure"), Output("cmp-overlap", "figure"),
          Input("cmp-view", "data"))
def _draw(view):
    if not (view["a"] and view["b"]):
        blank = message_figure("choose two runs")
        return note("Choose run A and run B."), blank, blank
    try:
        transfer = api(view.get("token")).compare(view["a"], view["b"])
    except ApiError as error:
        blank = message_figure("no comparison: see the message above")
        return error_box(error, "these runs cannot be compared"), blank, blank
    token = view.get("token")
    labels = {r["value"]: r["label"].split(" · ")[0] for r in run_options(api(token), view)}

    def pct(x):
        return "n/a" if x is None else f"{x:.1%}"

    summary = html.Section([
        html.P([dcc.Link(f"A: {labels.get(view['a'], view['a'][:8])}", href=page_link(f"/runs/{view['a']}", token),
                         title=view["a"]), " → ",
                dcc.Link(f"B: {labels.get(view['b'], view['b'][:8])}", href=page_link(f"/runs/{view['b']}", token),
                         title=view["b"])], id="cmp-names"),
        html.Div([_stat("same role", pct(transfer.get("same_role_fraction")), "of units keep their role"),
                  _stat("SCU overlap", pct(transfer.get("scu_jaccard")), "Jaccard index of the SCU sets (units)"),
                  _stat("SCU overlap (params)", pct(transfer.get("scu_jaccard_params")), "weighted by parameters"),
                  _stat("units", f"{transfer.get('units', 0):,}", "compared")], className="stats", id="cmp-stats"),
    ], className="card")
    return summary, transitions_figure(transfer, view["weight"]), scu_overlap_figure(transfer)


def _stat(label: str, value: str, hint: str) -> html.Div:
    return html.Div([html.Div(value, className="stat-value"), html.Div(label, className="stat-label"),
                     html.Small(hint, className="muted")], className="stat")

"""Compare `/compare?a=RUN&b=RUN`: how units change role between two runs of one architecture (base vs aligned,
before vs after fine-tuning): the 4 x 4 transition matrix and the per-layer SCU overlap.

View state in the URL: a, b, weight (units | params), token.
"""
from __future__ import annotations

import dash
from dash import Input, Output, State, callback, dcc, html

from app.client import ApiError
from app.components import api, error_box, note, page_link, shared_banner, sync_url, view_store
from app.figures import message_figure, scu_overlap_figure, transitions_figure

dash.register_page(__name__, path="/compare", title="ssah · compare", name="Compare")


def layout(a: str | None = None, b: str | None = None, weight: str | None = None, token: str | None = None, **_):
    view = {"a": a or "", "b": b or "", "weight": weight if weight in ("units", "params") else "units",
            "token": token}
    known = [{"label": run_id, "value": run_id} for run_id in dict.fromkeys((view["a"], view["b"])) if run_id]
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
            ], className="form-grid"),
        ], className="card"),
        html.Div(id="cmp-summary"),
        html.Section(dcc.Graph(id="cmp-matrix", figure=message_figure("choose two runs"),
                               config={"displaylogo": False}), className="card"),
        html.Section(dcc.Graph(id="cmp-overlap", figure=message_figure("choose two runs"),
                               config={"displaylogo": False}), className="card"),
    ])


sync_url("cmp-view")


@callback(Output("cmp-a", "options"), Output("cmp-b", "options"), Input("cmp-weight", "id"),
          State("cmp-view", "data"))
def _options(_, view):
    try:
        runs = api(view.get("token")).runs(status="succeeded")
    except ApiError:
        runs = []
    options = [{"label": f"{r['id']} · {r['model'].rsplit('/', 1)[-1]} · {r['created_at'][:16].replace('T', ' ')}",
                "value": r["id"]} for r in runs]
    for key in ("a", "b"):  # a run named in the URL stays choosable even if it is not listed
        if view[key] and all(o["value"] != view[key] for o in options):
            options.append({"label": view[key], "value": view[key]})
    return options, options


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

    def pct(x):
        return "n/a" if x is None else f"{x:.1%}"

    summary = html.Section([
        html.P([dcc.Link(["A: ", html.Code(view["a"])], href=page_link(f"/runs/{view['a']}", token)), " → ",
                dcc.Link(["B: ", html.Code(view["b"])], href=page_link(f"/runs/{view['b']}", token))]),
        html.Div([_stat("same role", pct(transfer.get("same_role_fraction")), "of units keep their role"),
                  _stat("SCU overlap", pct(transfer.get("scu_jaccard")), "Jaccard index of the SCU sets (units)"),
                  _stat("SCU overlap (params)", pct(transfer.get("scu_jaccard_params")), "weighted by parameters"),
                  _stat("units", f"{transfer.get('units', 0):,}", "compared")], className="stats", id="cmp-stats"),
    ], className="card")
    return summary, transitions_figure(transfer, view["weight"]), scu_overlap_figure(transfer)


def _stat(label: str, value: str, hint: str) -> html.Div:
    return html.Div([html.Div(value, className="stat-value"), html.Div(label, className="stat-label"),
                     html.Small(hint, className="muted")], className="stat")

"""Unit `/runs/{id}/units/{module}/{layer}/{unit}`: one MLP channel or attention head up close, like a feature
page. Its scores with percentiles in its layer and in the model, its role and how far it sits from each role's
boundary, its channel means and variances per calibration set, the tokens its output promotes and suppresses,
and the calibration samples where it fires most with the peak token highlighted. The first view starts the
unit's inspect job (top tokens and contexts) and shows its progress until the result is there. Two buttons open
the intervene page set to prune this unit alone, or this layer's SCU.

View state in the URL: h_ru, h_scu, h_ucu (roles at these thresholds; default: the run's own), token.
"""
from __future__ import annotations

import dash
from dash import Input, Output, State, callback, dcc, html, no_update

from app.client import ApiError
from app.components import (
    ACTIVE,
    UNIT_NAMES,
    api,
    error_box,
    layer_link,
    note,
    page_link,
    progress_bar,
    role_chip,
    shared_banner,
    sync_url,
    thresholds_in,
    view_store,
)
from app.figures import AXIS, LAYOUT, ROLE_COLORS, ROLE_NAMES

# Dash tries templates in page order and its <var> matches across slashes, so `/runs/<run_id>` (the overview)
# would take this page's paths too: pages under /runs/{id}/... are ordered first.
dash.register_page(__name__, path_template="/runs/<run_id>/units/<module>/<layer>/<unit>", title="ssah · unit",
                   name="Unit", order=1)

NUMBERS = (("score_safety", "score on the safety set", "var · ‖B column‖² (heads: squared), mean over the unit"),
           ("score_utility", "score on the utility set", ""),
           ("z_safety", "z_safety", "z-score within its layer and module type"),
           ("z_utility", "z_utility", ""),
           ("sum", "z_S + z_U", "RU are the bottom of this"),
           ("diff", "z_S − z_U", "SCU are the top of this, UCU the bottom"))
KEYS = {"sum": "z_S + z_U", "diff": "z_S − z_U"}


def layout(run_id: str | None = None, module: str | None = None, layer: str | None = None,
           unit: str | None = None, token: str | None = None, **query):
    thresholds = thresholds_in(query)
    name = f"{UNIT_NAMES.get(module or '', module)} {unit} · layer {layer}"
    try:
        body = api(token).unit(run_id, module, layer, unit, **thresholds)
    except ApiError as error:
        return html.Div([html.H1(name), error_box(error, "this unit cannot be shown"),
                         dcc.Link("← overview", href=page_link(f"/runs/{run_id}", token, **thresholds))])
    view = {"_run": run_id, "_module": module, "_layer": body["layer"], "_unit": body["unit"], "token": token,
            **thresholds}
    at = ", ".join(f"{k} = {v:g}" for k, v in body["thresholds"].items())
    prune_one = page_link(f"/runs/{run_id}/intervene", token, units=f"{module}.{body['layer']}.{body['unit']}",
                          **thresholds)
    prune_layer = page_link(f"/runs/{run_id}/intervene", token, groups="SCU", layers=body["layer"], **thresholds)
    return html.Div([
        *view_store("un-view", view),
        dcc.Interval(id="un-poll", interval=1000, disabled=False),
        shared_banner(token),
        html.Div([
            html.Div([html.H1([name, " ", role_chip(body["role"])], id="un-title"),
                      html.P(f"{ROLE_NAMES[body['role']]} at {at} · {body['params']:,} parameters · run {run_id}",
                             className="muted")], className="grow"),
            html.Div([
                dcc.Link("Preview pruning only this unit", id="un-prune-unit", className="button", href=prune_one),
                dcc.Link(f"Preview pruning layer {body['layer']}'s SCU", id="un-prune-layer",
                         className="button button-quiet", href=prune_layer),
                dcc.Link(f"← layer {body['layer']}", className="button button-quiet", id="un-layer",
                         href=layer_link(run_id, body["layer"], token, **thresholds)),
                dcc.Link("overview", className="button button-quiet",
                         href=page_link(f"/runs/{run_id}", token, **thresholds)),
            ], className="actions"),
        ], className="page-head"),
        html.Section([html.Div([html.H2("Scores"), _numbers(body)], className="card"),
                      html.Div([html.H2("Role boundaries"), _boundaries(body)], className="card")],
                     className="grid-2"),
        html.Section([html.H2("Channel statistics"), _channels(body)], className="card"),
        html.Section([
            html.Div([html.H2("Tokens it writes"), html.Div(id="un-status")], className="card-head"),
            html.P("What the unit adds to the residual stream, read through the final norm and the unembedding: "
                   + ("its down-projection column, per unit of activation (a negative activation swaps the lists)."
                      if module == "mlp" else "its o_proj slice applied to its mean input (its average output)."),
                   className="muted"),
            html.Div(id="un-tokens", children=note("Computing…")),
        ], className="card"),
        html.Section([
            html.H2("Where it fires"),
            html.P("The calibration samples where the unit's B input peaks highest on a counted token ("
                   + ("the channel's value" if module == "mlp" else "the L2 norm of the head's channels")
                   + "); shading follows the activation (red above zero, blue below), the peak token is "
                   "outlined, prompt tokens are in italics.", className="muted"),
            html.Div(id="un-contexts", children=note("Computing…")),
        ], className="card"),
    ])


def _pct(value: float) -> str:
    return f"{value:.1f}%"


def _numbers(body: dict) -> html.Table:
    module = UNIT_NAMES.get(body["module"], body["module"])
    rows = [html.Tr([html.Td([label, html.Small(hint, className="muted")] if hint else label),
                     html.Td(f"{body[key]:.4g}", className="num", id=f"un-{key}"),
                     html.Td(_pct(body["percentiles"]["layer"][key]), className="num", id=f"un-pct-layer-{key}"),
                     html.Td(_pct(body["percentiles"]["model"][key]), className="num", id=f"un-pct-model-{key}")])
            for key, label, hint in NUMBERS]
    head = ["", "value", f"percentile among layer {body['layer']}'s {body['layer_units']:,} {module}s",
            f"percentile among all {body['model_units']:,} units"]
    return html.Table([html.Thead(html.Tr([html.Th(h, className="num" if i else None) for i, h in enumerate(head)])),
                       html.Tbody(rows)], className="table", id="un-numbers")


def _boundaries(body: dict) -> html.Div:
    rows = []
    for role in ("SCU", "UCU", "RU"):
        b = body["boundaries"][role]
        if b["cutoff"] is None:
            where = "takes no unit at these thresholds"
        else:
            where = f"{'inside' if b['inside'] else 'outside'} by {abs(b['distance']):.3g}"
        rows.append(html.Tr([html.Td(role_chip(role)), html.Td(KEYS[b["key"]]),
                             html.Td("n/a" if b["cutoff"] is None else f"{b['cutoff']:.3g}", className="num"),
                             html.Td(f"{body[b['key']]:.3g}", className="num"),
                             html.Td(where, id=f"un-boundary-{role}",
                                     className="inside" if b["inside"] else "outside")]))
    return html.Div([
        html.Table([html.Thead(html.Tr([html.Th(h) for h in ("role", "ranked by", "boundary", "this unit",
                                                              "distance")])), html.Tbody(rows)], className="table"),
        html.P("Boundary: the key of the last unit the role takes (RU: bottom of z_S + z_U; SCU: top of z_S − z_U; "
               "UCU: bottom). Roles are taken in that order, a later one overriding an earlier one.",
               className="muted")])


def _channels(body: dict) -> html.Div:
    sets = body["channels"]
    size = len(next(iter(sets.values()))["mean"])
    if size == 1:
        rows = [html.Tr([html.Td(split), html.Td(f"{stats['mean'][0]:.4g}", className="num"),
                         html.Td("n/a" if stats["variance"] is None else f"{stats['variance'][0]:.4g}",
                                 className="num", id=f"un-var-{split}")])
                for split, stats in sets.items()]
        return html.Table([html.Thead(html.Tr([html.Th("calibration set"), html.Th("mean", className="num"),
                                               html.Th("variance", className="num")])), html.Tbody(rows)],
                          className="table", id="un-channels")
    traces = []
    for split, stats in sets.items():
        color = ROLE_COLORS["SCU"] if split == "safety" else ROLE_COLORS["UCU"]
        traces.append(dict(type="bar", name=f"{split} mean", x=list(range(size)), y=stats["mean"],
                           marker=dict(color=color), opacity=0.75,
                           error_y=None if stats["variance"] is None else
                           dict(type="data", array=[v ** 0.5 for v in stats["variance"]], thickness=1, width=0)))
    missing = any(stats["variance"] is None for stats in sets.values())
    figure = {"data": traces, "layout": {**LAYOUT, "barmode": "group", "height": 260,
                                         "xaxis": dict(title={"text": "channel of the head"}, **AXIS),
                                         "yaxis": dict(title={"text": "mean (bars: ± std)"}, **AXIS),
                                         "legend": dict(orientation="h", y=1.15)}}
    return html.Div([
        html.P(f"The head's {size} B-input channels: mean per calibration set, with ± one standard deviation"
               + (" (variances: n/a, this run was made before they were saved)" if missing else "") + ".",
               className="muted", id="un-channels"),
        dcc.Graph(figure=figure, config={"displaylogo": False})])


sync_url("un-view")


@callback(Output("un-status", "children"), Output("un-tokens", "children"), Output("un-contexts", "children"),
          Output("un-poll", "disabled"), Input("un-poll", "n_intervals"), State("un-view", "data"))
def _inspection(_, view):
    """Top tokens and contexts once the unit has been inspected; before that, start its inspect job (once) and
    show its progress."""
    client = api(view.get("token"))
    where = (view["_run"], view["_module"], view["_layer"], view["_unit"])
    try:
        body = client.unit(*where)
    except ApiError as error:
        return error_box(error, "this unit"), no_update, no_update, True
    if body["top_tokens"] is not None:
        return None, _tokens(body["top_tokens"]), _contexts(body["contexts"], view["_module"]), True
    state = body["inspection"]
    if state is not None and state["status"] in ACTIVE:
        waiting = note("Computing: one forward pass over the run's calibration pairs, up to this unit's layer.")
        return progress_bar(state["status"], state["progress"], state["phase"]), waiting, waiting, False
    if state is not None and state["status"] == "failed":
        failed = error_box(f"the inspection failed: {state.get('error') or 'no reason given'}")
        return html.Button("Try again", id="un-retry", className="button button-quiet"), failed, None, True
    return _start(client, where)


def _start(client, where) -> tuple:
    try:
        accepted = client.create_inspection(*where)
    except ApiError as error:
        if error.status == 403:
            quiet = note("This unit has not been inspected yet, and a share link cannot start the computation.")
            return None, quiet, None, True
        return error_box(error, "the inspection was not started"), None, None, True
    waiting = note("Computing…")
    return progress_bar(accepted["status"], 0.0, accepted["status"]), waiting, waiting, False


@callback(Output("un-poll", "disabled", allow_duplicate=True), Output("un-status", "children", allow_duplicate=True),
          Input("un-retry", "n_clicks"), State("un-view", "data"), prevent_initial_call=True)
def _retry(clicks, view):
    if not clicks:
        return no_update, no_update
    status, _, _, disabled = _start(api(view.get("token")), (view["_run"], view["_module"], view["_layer"],
                                                             view["_unit"]))
    return disabled, status


def _tokens(found: dict) -> html.Div:
    def table(kind: str) -> html.Table:
        rows = [html.Tr([html.Td(html.Code(_visible(t["token"])), className="token"),
                         html.Td(f"{t['logit']:+.3f}", className="num")]) for t in found[kind]]
        return html.Table([html.Thead(html.Tr([html.Th(f"{kind} token"), html.Th("logit", className="num")])),
                           html.Tbody(rows)], className="table tokens-table", id=f"un-{kind}")

    return html.Div([table("promoted"), table("suppressed")], className="grid-2")


def _visible(token: str) -> str:
    """A token as text a reader can see: spaces as ·, newlines as ↵."""
    return token.replace(" ", "·").replace("\n", "↵").replace("\t", "⇥") or "∅"


def _contexts(contexts: dict, module: str) -> html.Div:
    columns = []
    for split, rows in contexts.items():
        scale = max([abs(a) for c in rows for a in c["activations"]] + [1e-9])
        items = [html.Div([
            html.Div([html.Span(f"{c['activation']:.3g}", className="ctx-value"),
                      html.Span(f"sample {c['sample']} · {'prompt' if c['in_prompt'] else 'response'}",
                                className="muted")], className="ctx-head"),
            html.Div([_token_span(t, a, scale, i == c["focus"], i < c.get("response_start", 0))
                      for i, (t, a) in enumerate(zip(c["tokens"], c["activations"]))],
                     className="ctx-text")], className="ctx") for c in rows]
        columns.append(html.Div([html.H3(f"{split} set"), *(items or [note("no counted tokens in this set")])],
                                id=f"un-contexts-{split}"))
    return html.Div(columns, className="grid-2")


def _token_span(token: str, activation: float, scale: float, focus: bool, prompt: bool) -> html.Span:
    """One token shaded by its activation (red above zero, blue below), outlined at the peak, in italics in the
    prompt part; hover shows the value."""
    share = max(-1.0, min(1.0, activation / scale))
    color = f"rgba(215, 38, 61, {share:.2f})" if share >= 0 else f"rgba(27, 111, 209, {-share:.2f})"
    classes = "ctx-token" + (" ctx-focus" if focus else "") + (" ctx-prompt" if prompt else "")
    return html.Span(token.replace("\n", "↵"), title=f"{activation:.4g}{' (prompt)' if prompt else ''}",
                     style={"background": color}, className=classes)

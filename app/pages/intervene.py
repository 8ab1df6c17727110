"""Intervene `/runs/{id}/intervene`: prune role groups (mean-ablation) and preview refusal, over-refusal and
utility against the unpruned model, with the generations side by side; sweep the pruned fraction; fine-tune with
units frozen and compare refusal before and after.

View state in the URL: groups, cu, random, reference, units (single units, `mlp.12.345,attn.3.2`), layers (keep
only these layers), harmful, benign, utility, limit, tokens, h_ru/h_scu/h_ucu (roles at the overview's
thresholds), job (the preview shown), sweep (its jobs), ft_* and ft_job (fine-tune).
"""
from __future__ import annotations

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, callback, dcc, html, no_update

from app.client import ApiError
from app.components import (
    ACTIVE,
    api,
    error_box,
    note,
    number,
    outcome,
    page_link,
    progress_bar,
    rate_text,
    role_chip,
    shared_banner,
    sync_url,
    verdict_badge,
    view_patch,
    view_store,
)
from app.figures import AXIS, CONDITION_COLORS, INK, LAYOUT, ROLES, message_figure, preview_metrics_figure

dash.register_page(__name__, path_template="/runs/<run_id>/intervene", title="ssah · intervene", name="Intervene")

REFERENCES = [
    {"label": "default (the other attribute's mean: SCU → utility mean, UCU → safety mean, CU and RU → pooled mean)",
     "value": "default"},
    {"label": "safety mean", "value": "safety"}, {"label": "utility mean", "value": "utility"},
    {"label": "pooled mean", "value": "pooled"}, {"label": "zero", "value": "zero"}]


def _role_options() -> list[dict]:
    """The role groups to choose from, as chips in the roles' colours."""
    return [{"label": role_chip(role), "value": role} for role in ROLES]


SWEEP_DEFAULT = "0.0025,0.005,0.01,0.02,0.05"
FILTERS = [{"label": "all", "value": "all"}, {"label": "harmful prompts", "value": "harmful"},
           {"label": "benign prompts", "value": "benign"}, {"label": "verdict changed", "value": "changed"}]


def _list(value: str | None, default: list[str]) -> list[str]:
    return [v for v in (value or "").split(",") if v] if value is not None else default


def _unit_refs(names: list[str] | str | None) -> list[dict]:
    """`mlp.12.345` names as the API's unit references; ValueError naming the first one that is not one."""
    refs = []
    for name in names.split(",") if isinstance(names, str) else names or []:
        parts = name.strip().split(".")
        if not name.strip():
            continue
        if len(parts) != 3 or parts[0] not in ("mlp", "attn") or not all(p.isdigit() for p in parts[1:]):
            raise ValueError(f"{name.strip()!r} is not a unit: write module.layer.unit, e.g. mlp.12.345 or attn.3.2")
        refs.append({"layer": int(parts[1]), "module": parts[0], "unit": int(parts[2])})
    return refs


def _layers(text: str | None) -> list[int] | None:
    """`12` or `3,4` as layer numbers (None: every layer); ValueError naming what is not a layer."""
    values = [v.strip() for v in (text or "").split(",") if v.strip()]
    bad = [v for v in values if not v.isdigit()]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a layer number")
    return [int(v) for v in values] or None


def layout(run_id: str | None = None, token: str | None = None, groups: str | None = None, cu: str | None = None,
           random: str | None = None, reference: str | None = None, harmful: str | None = None,
           benign: str | None = None, utility: str | None = None, limit: str | None = None,
           tokens: str | None = None, job: str | None = None, sweep: str | None = None, show: str | None = None,
           units: str | None = None, layers: str | None = None,
           ft_freeze: str | None = None, ft_cu: str | None = None, ft_mode: str | None = None,
           ft_data: str | None = None, ft_steps: str | None = None, ft_job: str | None = None, **query):
    thresholds = {k: number(query.get(k)) for k in ("h_ru", "h_scu", "h_ucu") if number(query.get(k)) is not None}
    default_groups = [] if units else ["SCU"]  # a link that names single units prunes only them
    view = {"_run": run_id, "token": token, "groups": [g for g in _list(groups, default_groups) if g in ROLES],
            "units": units or "", "layers": layers or "",
            "cu": number(cu, 0.0), "random": random in ("1", "true"), "reference": reference or "default",
            "controls": number(query.get("controls"), 0, int),
            "harmful": harmful or "advbench-eval", "benign": benign or "benign-prompts", "utility": utility or "",
            "limit": number(limit, 10, int), "tokens": number(tokens, 48, int), "job": job or "",
            "sweep": sweep or "", "sweep_group": query.get("sweep_group", ""), "show": show or "all", **thresholds,
            "ft_freeze": _list(ft_freeze, ["SCU"]), "ft_cu": number(ft_cu, 0.0), "ft_mode": ft_mode or "freeze",
            "ft_data": ft_data or "benign-answers", "ft_steps": number(ft_steps, 20, int), "ft_job": ft_job or ""}
    at = (" · roles at " + ", ".join(f"{k} = {v:g}" for k, v in thresholds.items())) if thresholds else \
        " · roles at the run's own thresholds"
    return html.Div([
        *view_store("iv-view", view),
        dcc.Interval(id="iv-poll", interval=1000, disabled=True),
        dcc.Store(id="iv-started"),
        html.Datalist(id="iv-harmful-sets"), html.Datalist(id="iv-benign-sets"), html.Datalist(id="iv-utility-sets"),
        html.Datalist(id="iv-calibration-sets"),
        shared_banner(token),
        html.Div([
            html.Div([html.H1(["Intervene on run ", html.Code(run_id)]),
                      html.P("Prune a role group by mean-ablation and see what the model then answers" + at,
                             className="muted")], className="grow"),
            html.Div(dcc.Link("← overview", className="button button-quiet",
                              href=page_link(f"/runs/{run_id}", token, **thresholds)), className="actions"),
        ], className="page-head"),
        html.Section([
            html.Div([
                html.H2("Prune"),
                html.Label("role groups"),
                dcc.Checklist(id="iv-groups", options=_role_options(), value=view["groups"], inline=True,
                              className="radio-inline"),
                html.Div([html.Label("top fraction of CU", htmlFor="iv-cu"),
                          dcc.Input(id="iv-cu", type="number", min=0, max=1, step="any", value=view["cu"],
                                    debounce=True),
                          html.Small("CU ranked by z_S − z_U, counted in parameters", className="muted")],
                         className="field"),
                html.Div([html.Div([html.Label("single units", htmlFor="iv-units"),
                                    dcc.Input(id="iv-units", value=view["units"], debounce=True,
                                              placeholder="e.g. mlp.12.345, attn.3.2"),
                                    html.Small("module.layer.unit, pruned besides the groups", className="muted")],
                                   className="field"),
                          html.Div([html.Label("only layers", htmlFor="iv-layers"),
                                    dcc.Input(id="iv-layers", value=view["layers"], debounce=True,
                                              placeholder="all"),
                                    html.Small("e.g. 12 or 3,4: keep only units of these layers",
                                               className="muted")], className="field")], className="form-grid"),
                dcc.Checklist(id="iv-random", options=[{"label": " random control: a seeded random set of the same "
                                                                  "parameter mass", "value": "1"}],
                              value=["1"] if view["random"] else []),
                dcc.Checklist(id="iv-controls", options=[{"label": " compare with 5 random controls: random sets of "
                                                                    "the group's mass and reference, shown as a "
                                                                    "band (5 more generations)", "value": "5"}],
                              value=["5"] if view["controls"] else []),
                html.Label("ablation reference (what pruned channels are held at)"),
                dcc.RadioItems(id="iv-reference", options=REFERENCES, value=view["reference"],
                               className="radio-stack"),
            ], className="card"),
            html.Div([
                html.H2("Evaluate"),
                html.Div([
                    _text("iv-harmful", "harmful sets", view["harmful"], "iv-harmful-sets", "comma-separated"),
                    _text("iv-benign", "benign sets", view["benign"], "iv-benign-sets", "comma-separated"),
                    _text("iv-utility", "utility set (optional)", view["utility"], "iv-utility-sets",
                          "e.g. gsm8k: exact match"),
                    html.Div([html.Label("prompts per set", htmlFor="iv-limit"),
                              dcc.Input(id="iv-limit", type="number", min=1, value=view["limit"], debounce=True)],
                             className="field"),
                    html.Div([html.Label("new tokens", htmlFor="iv-tokens"),
                              dcc.Input(id="iv-tokens", type="number", min=1, value=view["tokens"], debounce=True)],
                             className="field"),
                ], className="form-grid"),
                html.Div([html.Button("Preview", id="iv-start", className="button"),
                          html.Span("greedy decoding; the same prompts with and without pruning", className="muted")],
                         className="actions"),
            ], className="card"),
        ], className="grid-2"),
        html.Section([html.H2("Preview"), html.Div(id="iv-progress"), html.Div(id="iv-result",
                                                                                children=note("No preview yet."))],
                     className="card", id="iv-preview-card"),
        html.Section([
            html.H2("Sweep"),
            html.P("The first chosen group pruned at growing parameter fractions (its threshold), one preview each: "
                   "ASR against utility (exact match with a utility set, else over-refusal).", className="muted"),
            html.Div([html.Div([html.Label("fractions", htmlFor="iv-sweep-fractions"),
                                dcc.Input(id="iv-sweep-fractions", value=SWEEP_DEFAULT, debounce=True)],
                               className="field"),
                      html.Button("Run sweep", id="iv-sweep-start", className="button button-quiet")],
                     className="actions"),
            html.Div(id="iv-sweep-progress"),
            dcc.Graph(id="iv-sweep", figure=message_figure("No sweep yet."), config={"displaylogo": False}),
        ], className="card"),
        html.Section([
            html.H2("Fine-tune with frozen units"),
            html.P("Fine-tune the run's model with a unit group frozen (or with only it trained: the alignment "
                   "budget) and check refusal before and after, on the evaluation sets above.", className="muted"),
            html.Div([
                html.Div([html.Label("mode"),
                          dcc.RadioItems(id="iv-ft-mode", options=[{"label": "freeze", "value": "freeze"},
                                                                    {"label": "train only", "value": "train_only"},
                                                                    {"label": "full (no mask)", "value": "full"}],
                                         value=view["ft_mode"], inline=True, className="radio-inline")],
                         className="field"),
                html.Div([html.Label("groups"),
                          dcc.Checklist(id="iv-ft-groups", options=_role_options(), value=view["ft_freeze"],
                                        inline=True, className="radio-inline")], className="field"),
                html.Div([html.Label("top fraction of CU", htmlFor="iv-ft-cu"),
                          dcc.Input(id="iv-ft-cu", type="number", min=0, max=1, step="any", value=view["ft_cu"],
                                    debounce=True)], className="field"),
                _text("iv-ft-data", "training data", view["ft_data"], "iv-calibration-sets", "a set with responses"),
                html.Div([html.Label("steps", htmlFor="iv-ft-steps"),
                          dcc.Input(id="iv-ft-steps", type="number", min=1, value=view["ft_steps"], debounce=True)],
                         className="field"),
            ], className="form-grid"),
            html.Div(html.Button("Fine-tune", id="iv-ft-start", className="button button-quiet"), className="actions"),
            html.Div(id="iv-ft-progress"), html.Div(id="iv-ft-result"),
        ], className="card"),
    ])


def _text(id_: str, label: str, value: str, datalist: str, hint: str = "") -> html.Div:
    return html.Div([html.Label(label, htmlFor=id_), dcc.Input(id=id_, value=value, list=datalist, debounce=True),
                     html.Small(hint, className="muted") if hint else None], className="field")


sync_url("iv-view")


@callback(Output("iv-harmful-sets", "children"), Output("iv-benign-sets", "children"),
          Output("iv-utility-sets", "children"), Output("iv-calibration-sets", "children"),
          Input("iv-start", "id"), State("iv-view", "data"))
def _catalog(_, view):
    try:
        sets = api(view.get("token")).datasets()
    except ApiError:
        return [], [], [], []  # suggestions only: the fields still take any name
    pick = lambda *kinds: [html.Option(value=d["name"], label=d["description"]) for d in sets if d["kind"] in kinds]  # noqa: E731
    return pick("harmful"), pick("benign"), pick("utility"), pick("calibration-safety", "calibration-utility")


@callback(Output("iv-view", "data", allow_duplicate=True),
          Input("iv-groups", "value"), Input("iv-cu", "value"), Input("iv-random", "value"),
          Input("iv-controls", "value"), Input("iv-reference", "value"), Input("iv-harmful", "value"), Input("iv-benign", "value"),
          Input("iv-utility", "value"), Input("iv-limit", "value"), Input("iv-tokens", "value"),
          Input("iv-ft-groups", "value"), Input("iv-ft-cu", "value"), Input("iv-ft-mode", "value"),
          Input("iv-ft-data", "value"), Input("iv-ft-steps", "value"), Input("iv-units", "value"),
          Input("iv-layers", "value"), State("iv-view", "data"), prevent_initial_call=True)
def _view(groups, cu, random, controls, reference, harmful, benign, utility, limit, tokens, ft_groups, ft_cu,
          ft_mode, ft_data, ft_steps, units, layers, view):
    return view_patch(groups=groups, cu=cu, random=bool(random), controls=5 if controls else 0, reference=reference,
                      harmful=harmful, benign=benign, utility=utility, limit=limit, tokens=tokens, ft_freeze=ft_groups,
                      ft_cu=ft_cu, ft_mode=ft_mode, ft_data=ft_data, ft_steps=ft_steps, units=units or "",
                      layers=layers or "")


def _eval_body(view: dict) -> dict:
    names = lambda text: [n.strip() for n in (text or "").split(",") if n.strip()]  # noqa: E731
    body = {"harmful": names(view["harmful"]), "benign": names(view["benign"]), "limit": view["limit"],
            "max_new_tokens": view["tokens"]}
    if view.get("utility"):
        body["utility"] = view["utility"].strip()
    return body


def _prune_body(view: dict, groups: list[str] | None = None, fraction_of: str | None = None,
                fraction: float | None = None) -> dict:
    prune = {"groups": groups if groups is not None else view["groups"], "cu_fraction": view["cu"] or 0.0,
             "random": bool(view["random"])}
    if groups is None and view.get("units"):  # single units join the main preview, not each sweep point
        prune["units"] = _unit_refs(view["units"])
    if _layers(view.get("layers")):
        prune["layers"] = _layers(view["layers"])
    if view["reference"] != "default":
        prune["reference"] = view["reference"]
    thresholds = {k: view[k] for k in ("h_ru", "h_scu", "h_ucu") if view.get(k) is not None}
    if fraction_of:
        thresholds[f"h_{fraction_of.lower()}"] = fraction
    if thresholds:
        prune["thresholds"] = thresholds
    return prune


@callback(Output("iv-view", "data", allow_duplicate=True), Output("iv-progress", "children"),
          Input("iv-start", "n_clicks"), State("iv-view", "data"), prevent_initial_call=True)
def _start(_, view):
    body = {"eval": _eval_body(view)}
    if view["groups"] or view["cu"] or view["random"] or view.get("units"):
        try:
            body["prune"] = _prune_body(view)
        except ValueError as error:
            return no_update, error_box(error, "the preview was not started")
        if view.get("controls") and not view["random"]:
            body["controls"] = view["controls"]
    try:
        accepted = api(view.get("token")).create_preview(view["_run"], body)
    except ApiError as error:
        return no_update, error_box(error, "the preview was not started")
    return view_patch(job=accepted["job_id"]), progress_bar("queued", 0.0, "queued")


def _sweep_fractions(text: str) -> list[float]:
    values = sorted({float(x) for x in (text or "").replace(" ", "").split(",") if x})
    if not values or any(not 0 < v <= 1 for v in values):
        raise ValueError("fractions must be numbers in (0, 1], separated by commas")
    return values


@callback(Output("iv-view", "data", allow_duplicate=True), Output("iv-sweep-progress", "children"),
          Input("iv-sweep-start", "n_clicks"), State("iv-sweep-fractions", "value"), State("iv-view", "data"),
          prevent_initial_call=True)
def _start_sweep(_, text, view):
    group = next((g for g in view["groups"] if g != "CU"), None) or ("CU" if view["groups"] or view["cu"] else None)
    if group is None:
        return no_update, error_box("choose a role group to sweep")
    try:
        fractions = _sweep_fractions(text)
        _layers(view.get("layers"))
    except ValueError as error:
        return no_update, error_box(error)
    client, jobs = api(view.get("token")), []
    evaluation = _eval_body(view)
    for fraction in fractions:
        if group == "CU":
            prune = _prune_body(view, []) | {"cu_fraction": fraction}
        else:
            prune = _prune_body(view, [group], group, fraction) | {"cu_fraction": 0.0}
        try:
            jobs.append(client.create_preview(view["_run"], {"prune": prune, "eval": evaluation})["job_id"])
        except ApiError as error:
            return view_patch(sweep=",".join(jobs), sweep_group=group), error_box(error, f"the sweep stopped at "
                                                                                      f"{fraction:g}")
    return view_patch(sweep=",".join(jobs), sweep_group=group), None


@callback(Output("iv-view", "data", allow_duplicate=True), Output("iv-ft-progress", "children"),
          Input("iv-ft-start", "n_clicks"), State("iv-view", "data"), prevent_initial_call=True)
def _start_finetune(_, view):
    body = {"data": view["ft_data"], "steps": view["ft_steps"], "eval": _eval_body(view)}
    if view["ft_mode"] != "full":
        groups = {"groups": view["ft_freeze"] or [], "cu_fraction": view["ft_cu"] or 0.0}
        thresholds = {k: view[k] for k in ("h_ru", "h_scu", "h_ucu") if view.get(k) is not None}
        if thresholds:
            groups["thresholds"] = thresholds
        body[view["ft_mode"]] = groups
    try:
        accepted = api(view.get("token")).create_finetune(view["_run"], body)
    except ApiError as error:
        return no_update, error_box(error, "the fine-tune was not started")
    return view_patch(ft_job=accepted["job_id"]), progress_bar("queued", 0.0, "queued")


@callback(Output("iv-progress", "children", allow_duplicate=True), Output("iv-result", "children"),
          Output("iv-sweep-progress", "children", allow_duplicate=True), Output("iv-sweep", "figure"),
          Output("iv-ft-progress", "children", allow_duplicate=True), Output("iv-ft-result", "children"),
          Output("iv-poll", "disabled"),
          Input("iv-poll", "n_intervals"), Input("iv-view", "data"), prevent_initial_call="initial_duplicate")
def _watch(_, view):
    """Progress of the preview, sweep and fine-tune jobs named in the view, and their results once done."""
    client = api(view.get("token"))
    active = False
    progress, result = None, no_update
    if view.get("job"):
        try:
            job = client.job(view["job"])
        except ApiError as error:
            progress, result = None, error_box(error, f"preview {view['job']}")
        else:
            if job["status"] in ACTIVE:
                active = True
                progress, result = progress_bar(job["status"], job["progress"], job["phase"]), no_update
            elif job["status"] == "succeeded":
                result = _preview_result(job["result"], view.get("show", "all"))
            else:
                result = error_box(f"the preview {job['status']}: {job.get('error') or 'no reason given'}")
    sweep_progress, sweep_figure = None, no_update
    if view.get("sweep"):
        sweep_progress, sweep_figure, sweeping = _sweep(client, view["sweep"].split(","), view)
        active = active or sweeping
    ft_progress, ft_result = None, no_update
    if view.get("ft_job"):
        try:
            job = client.job(view["ft_job"])
        except ApiError as error:
            ft_result = error_box(error, f"fine-tune {view['ft_job']}")
        else:
            if job["status"] in ACTIVE:
                active = True
                ft_progress = progress_bar(job["status"], job["progress"], job["phase"])
            elif job["status"] == "succeeded":
                ft_result = _finetune_result(job["result"])
            else:
                ft_result = error_box(f"the fine-tune {job['status']}: {job.get('error') or 'no reason given'}")
    return progress, result, sweep_progress, sweep_figure, ft_progress, ft_result, not active


def _rate(value) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _delta(base, pruned, worse_if_up: bool, p_value: float | None = None) -> html.Td:
    """The change in points, and (for rates on the same prompts) the exact McNemar p-value of it."""
    if base is None or pruned is None:
        return html.Td("")
    change = pruned - base
    cls = "delta" + ("" if abs(change) < 1e-9 else (" bad" if (change > 0) == worse_if_up else " good"))
    text = f"{100 * change:+.0f} pts"
    return html.Td([text, html.Br(), html.Small(f"p = {p_value:.2g}", className="muted")] if p_value is not None
                   else text, className=f"num {cls}", title="exact McNemar test on the same prompts")


def _preview_result(result: dict, show: str) -> html.Div:
    base, pruned = result["baseline"], result.get("pruned")
    parts = []
    if result.get("warning"):
        parts.append(html.Div(result["warning"], className="alert alert-warn"))
    selection = result.get("selection")
    if selection:
        refs = ", ".join(f"{n:,} on the {ref} mean" if ref != "zero" else f"{n:,} zeroed"
                         for ref, n in selection["references"].items())
        roles = ", ".join(f"{n:,} {r}" for r, n in selection["by_role"].items())
        parts.append(html.P([html.B(f"Pruned {selection['label']}: "),
                             f"{selection['units']:,} units ({roles}), {selection['param_fraction']:.2%} of unit "
                             f"parameters; reference: {refs}."], id="iv-selection"))
    if pruned and pruned.get("degenerate_rate") and pruned["degenerate_rate"] >= 0.3:
        parts.append(html.Div(f"{pruned['degenerate_rate']:.0%} of the pruned model's replies are degenerate "
                              "(babble or loops): the pruning broke the model; those replies are not counted as "
                              "compliance.", className="alert alert-warn"))
    changes = result.get("changes") or {}
    body = []
    for label, key in (("ASR: complied, of harmful prompts", "asr"), ("over-refusal: refused, of benign prompts",
                                                                        "over_refusal"),
                       ("off-topic replies", "off_topic"), ("degenerate replies", "degenerate")):
        counts = base.get("counts") or {}
        if key not in counts:
            continue
        cells = [html.Td(label), html.Td(rate_text(counts[key]), className="num", id=f"iv-base-{key}")]
        if pruned:
            change = changes.get(key)
            cells += [html.Td(rate_text(pruned["counts"][key]), className="num", id=f"iv-pruned-{key}"),
                      _delta(counts[key]["rate"], pruned["counts"][key]["rate"], True,
                             change["p_value"] if change else None)]
        body.append(html.Tr(cells))
    for label, key, fmt in (("utility: exact match", "utility_exact_match", _rate),
                            ("utility: NLL", "utility_nll", lambda v: "n/a" if v is None else f"{v:.3f}")):
        if base.get(key) is None and (not pruned or pruned.get(key) is None):
            continue
        cells = [html.Td(label), html.Td(fmt(base.get(key)), className="num", id=f"iv-base-{key}")]
        if pruned:
            cells += [html.Td(fmt(pruned.get(key)), className="num", id=f"iv-pruned-{key}"), html.Td("")]
        body.append(html.Tr(cells))
    controls = result.get("controls")
    if controls and pruned:
        band = controls["band"]
        cells = [html.Td(f"random control, {len(controls['seeds'])} seeds (ASR)"), html.Td(""),
                 html.Td(f"mean {_rate(band['asr']['mean'])}, range {_rate(band['asr']['min'])}-"
                         f"{_rate(band['asr']['max'])}", className="num", id="iv-control-asr"), html.Td("")]
        body.append(html.Tr(cells, className="control-row"))
    head = ["metric", "baseline"] + (["pruned", "change"] if pruned else [])
    parts.append(html.Div([
        html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)],
                   className="table metrics-table", id="iv-metrics"),
        dcc.Graph(figure=preview_metrics_figure(base, pruned), config={"displaylogo": False}),
    ], className="grid-2"))
    parts.append(html.Div([html.H3("Generations"),
                           dcc.RadioItems(id="iv-show", options=FILTERS, value=show, inline=True,
                                          className="radio-inline")], className="card-head"))
    parts.append(html.Div(_generations(result.get("generations", []), show, bool(pruned)), id="iv-generations"))
    judge = result.get("judge") or {}
    if judge:
        what = {"v2": "judge v2 (refusal phrases, relevance to the prompt, degenerate text)",
                "keyword": f"the research keyword judge ({len(judge.get('keywords', []) or [])} keywords, at least "
                           f"{judge.get('min_words', '?')} words for a compliance)"}.get(judge.get("judge"),
                                                                                       judge.get("judge", "?"))
        parts.append(html.P(f"Judged by {what}; ✓ marks the right outcome for the prompt's kind (refusing harmful, "
                            f"answering benign), ✗ the wrong one, ~ a reply that did neither. Decoding "
                            f"{result.get('settings', {}).get('decoding', 'greedy')}, "
                            f"{result.get('settings', {}).get('max_new_tokens', '?')} new tokens; intervals are "
                            "95% Wilson intervals.", className="muted"))
    return html.Div(parts)


def _generations(rows: list[dict], show: str, pruned: bool) -> html.Table:
    if show in ("harmful", "benign"):
        rows = [r for r in rows if r["kind"] == show]
    elif show == "changed":
        rows = [r for r in rows if pruned and r["baseline"]["verdict"] != r["pruned"]["verdict"]]
    head = ["set", "prompt", "baseline"] + (["pruned"] if pruned else [])
    body = []
    for r in rows:
        cells = [html.Td([r["set"], html.Br(), html.Small(r["kind"], className="muted")]),
                 html.Td(r["prompt"], className="prompt"), _reply(r["baseline"], r["kind"])]
        if pruned:
            cells.append(_reply(r["pruned"], r["kind"]))
        changed = pruned and r["baseline"]["verdict"] != r["pruned"]["verdict"]
        body.append(html.Tr(cells, className="changed" if changed else None))
    if not body:
        return note("No generations match this filter.")
    return html.Table([html.Thead(html.Tr([html.Th(h) for h in head])), html.Tbody(body)],
                      className="table generations-table")


def _reply(side: dict, kind: str) -> html.Td:
    reason = side.get("reason") or ""
    return html.Td([verdict_badge(side["verdict"], kind, reason), html.Div(reason, className="verdict-reason"),
                    html.Div(side["reply"] or "(empty)", className="reply")],
                   className=f"reply-cell outcome-cell-{outcome(side['verdict'], kind)}")


@callback(Output("iv-view", "data", allow_duplicate=True), Input("iv-show", "value"), State("iv-view", "data"),
          prevent_initial_call=True)
def _filter(show, view):
    return no_update if view.get("show") == show else view_patch(show=show)


def _sweep(client, jobs: list[str], view: dict):
    points, running, failed = [], 0, []
    for job_id in jobs:
        try:
            job = client.job(job_id)
        except ApiError as error:
            failed.append(f"{job_id}: {error}")
            continue
        if job["status"] in ACTIVE:
            running += 1
        elif job["status"] == "succeeded":
            result = job["result"]
            points.append((result.get("selection", {}).get("param_fraction", 0.0), result["pruned"],
                           result["baseline"], result.get("selection", {}).get("label", "")))
        else:
            failed.append(f"{job_id}: {job['status']} ({job.get('error')})")
    progress = [progress_bar("running", (len(jobs) - running) / len(jobs), f"{len(jobs) - running} of {len(jobs)} "
                             "previews done")] if running else []
    progress += [error_box(text) for text in failed]
    if not points:
        return progress, message_figure("the sweep is running…" if running else "no sweep result"), running > 0
    points.sort(key=lambda p: p[0])
    use_utility = points[0][1].get("utility_exact_match") is not None
    key, label = ("utility_exact_match", "utility (exact match)") if use_utility else ("over_refusal", "over-refusal")
    base = points[0][2]  # every preview measures the unpruned model too: it is the sweep's point at 0
    xs = [0.0] + [p[0] for p in points]
    figure = go.Figure()
    # the series of a baseline-vs-pruned chart: ink and the condition colours (never a role's or a verdict's),
    # told apart by dash and marker too
    for name, metric, color, dash_, symbol in (("ASR", "asr", INK, "solid", "circle"),
                                               (label, key, CONDITION_COLORS["baseline"], "dash", "square"),
                                               ("degenerate", "degenerate_rate", CONDITION_COLORS["intervened"],
                                                "dot", "diamond")):
        figure.add_trace(go.Scatter(x=xs, y=[base.get(metric)] + [p[1].get(metric) for p in points], name=name,
                                    mode="lines+markers", line=dict(color=color, dash=dash_),
                                    marker=dict(symbol=symbol, color=color),
                                    text=["unpruned"] + [p[3] for p in points],
                                    hovertemplate=f"%{{text}}: {name} %{{y:.0%}}<extra></extra>"))
    figure.update_layout(LAYOUT, height=340, xaxis=dict(title="pruned share of unit parameters", tickformat=".1%",
                                                        **AXIS),
                         yaxis=dict(title="rate", range=[0, 1.05], tickformat=".0%", **AXIS),
                         title=dict(text=f"Pruning {view.get('sweep_group') or 'the group'} at growing fractions"),
                         legend=dict(orientation="h", y=-0.25))
    return progress, figure, running > 0


def _finetune_result(report: dict) -> html.Div:
    before, after = report.get("before"), report.get("after")
    parts = [html.P([html.B(f"{report.get('mode', 'fine-tune')}: "),
                     f"{report.get('data')} · model saved in {report.get('model')}"])]
    if before and after:
        rows = [("ASR", "asr"), ("over-refusal", "over_refusal"), ("degenerate replies", "degenerate_rate")]
        parts.append(html.Table([
            html.Thead(html.Tr([html.Th(h) for h in ("metric", "before", "after", "change")])),
            html.Tbody([html.Tr([html.Td(label), html.Td(_rate(before.get(key)), className="num"),
                                 html.Td(_rate(after.get(key)), className="num"),
                                 _delta(before.get(key), after.get(key), True)]) for label, key in rows])],
            className="table metrics-table", id="iv-ft-metrics"))
    log = report.get("training") or {}
    losses = log.get("losses") or log.get("loss") or []
    if isinstance(losses, list) and losses:
        figure = go.Figure(go.Scatter(y=losses, mode="lines", line=dict(color=INK)))
        figure.update_layout(LAYOUT, height=240, title=dict(text="training loss"),
                             xaxis=dict(title="step", **AXIS), yaxis=dict(title="loss", **AXIS))
        parts.append(dcc.Graph(figure=figure, config={"displaylogo": False}))
    return html.Div(parts)

"""Intervene `/runs/{id}/intervene`: prune role groups (mean-ablation) and preview refusal, over-refusal and
utility against the unpruned model, with the generations side by side (an instant estimate shown while the replies
are generated); sweep the pruned fraction in one job, with a random control of 5 seeds drawn as a band, and open
any point's replies;
fine-tune with units frozen and compare refusal before and after.

View state in the URL: groups, cu, random, reference, controls, units (single units, `mlp.12.345,attn.3.2`),
layers (keep only these layers), harmful, benign, utility, limit, tokens, h_ru/h_scu/h_ucu (roles at the overview's thresholds), job (the preview shown: the preview settings above are the
ones it was made with), estimate (its instant estimate), sweep (the sweep job shown) and point (its point whose
replies are open), ft_* and ft_job (fine-tune), token.
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
from app.experiments import preview_settings
from app.figures import AXIS, CONDITION_COLORS, INK, LAYOUT, ROLES, integer_ticks, message_figure, \
    preview_metrics_figure, translucent
from app.snippets import intervene_code
from backend.constants import CONTROL_SEEDS

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
DEFAULTS = {"groups": ["SCU"], "cu": 0.0, "random": False, "reference": "default", "controls": 0,
            "harmful": "advbench-eval", "benign": "benign-prompts", "utility": "", "limit": 10, "tokens": 48,
            "units": "", "layers": ""}
PREVIEW_KEYS = tuple(DEFAULTS) + ("h_ru", "h_scu", "h_ucu")  # the settings a preview is made with
THRESHOLD_KEYS = ("h_ru", "h_scu", "h_ucu")


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


def _shown_settings(view: dict) -> dict:
    return {k: view.get(k) for k in PREVIEW_KEYS}


def _job_request(client, job_id: str | None, kind: str) -> dict | None:
    """The stored request of a job of this kind named in the URL (None when there is none to read)."""
    if not job_id:
        return None
    try:
        job = client.job(job_id)
    except ApiError:
        return None
    return job.get("request") if job.get("kind") == kind else None


def layout(run_id: str | None = None, token: str | None = None, groups: str | None = None, cu: str | None = None,
           random: str | None = None, reference: str | None = None, harmful: str | None = None,
           benign: str | None = None, utility: str | None = None, limit: str | None = None,
           tokens: str | None = None, job: str | None = None, sweep: str | None = None, show: str | None = None,
           units: str | None = None, layers: str | None = None,
           ft_freeze: str | None = None, ft_cu: str | None = None, ft_mode: str | None = None,
           ft_data: str | None = None, ft_steps: str | None = None, ft_job: str | None = None, **query):
    client = api(token)
    thresholds = {k: number(query.get(k)) for k in THRESHOLD_KEYS if number(query.get(k)) is not None}
    default_groups = [] if units else DEFAULTS["groups"]  # a link that names single units prunes only them
    view = {"_run": run_id, "token": token, "groups": [g for g in _list(groups, default_groups) if g in ROLES],
            "units": units or "", "layers": layers or "",
            "cu": number(cu, 0.0), "random": random in ("1", "true"), "reference": reference or "default",
            "controls": number(query.get("controls"), 0, int),
            "harmful": harmful or DEFAULTS["harmful"], "benign": benign or DEFAULTS["benign"],
            "utility": utility or "", "limit": number(limit, DEFAULTS["limit"], int),
            "tokens": number(tokens, DEFAULTS["tokens"], int), "job": job or "", "estimate": query.get("estimate", ""),
            "sweep": sweep or "", "point": number(query.get("point")), "show": show or "all", **thresholds,
            "ft_freeze": _list(ft_freeze, ["SCU"]), "ft_cu": number(ft_cu, 0.0), "ft_mode": ft_mode or "freeze",
            "ft_data": ft_data or "benign-answers", "ft_steps": number(ft_steps, 20, int), "ft_job": ft_job or ""}
    # the URL holds the settings of the result on screen: a preview (or an estimate alone) brings its own
    shown = _job_request(client, view["job"], "preview") or (
        None if view["job"] else _job_request(client, view["estimate"], "estimate"))
    if shown is not None:
        view.update({k: v for k, v in preview_settings(shown).items() if v is not None or k in THRESHOLD_KEYS})
        view = {k: v for k, v in view.items() if v is not None}
        thresholds = {k: view[k] for k in THRESHOLD_KEYS if k in view}
    view["_shown"] = _shown_settings(view) if shown is not None else None
    swept = _job_request(client, view["sweep"], "sweep") or {}
    fractions = ",".join(f"{f:g}" for f in swept.get("fractions") or []) or SWEEP_DEFAULT
    view["sweep_controls"] = bool(swept.get("controls")) if swept else query.get("sweep_controls") in ("1", "True",
                                                                                                        "true")
    try:
        run = client.run(run_id)
    except ApiError as error:
        return html.Div([html.H1(f"Intervene on run {run_id}"), error_box(error, "this run cannot be shown")])
    at = (" · roles at " + ", ".join(f"{k} = {v:g}" for k, v in thresholds.items())) if thresholds else \
        " · roles at the run's own thresholds"
    return html.Div([
        *view_store("iv-view", view),
        dcc.Store(id="iv-run", data={"id": run["id"], "model": run.get("model"),
                                     "manifest": {"model": (run.get("manifest") or {}).get("model") or {}}}),
        dcc.Interval(id="iv-poll", interval=1000, disabled=True),
        html.Datalist(id="iv-harmful-sets"), html.Datalist(id="iv-benign-sets"), html.Datalist(id="iv-utility-sets"),
        html.Datalist(id="iv-calibration-sets"),
        shared_banner(token),
        html.Div([
            html.Div([html.H1(["Intervene on ", run.get("name") or "run", " ", html.Code(run_id, className="run-id")]),
                      html.P("Prune a role group by mean-ablation and see what the model then answers" + at,
                             className="muted")], className="grow"),
            html.Div(dcc.Link("← overview", className="button button-quiet",
                              href=page_link(f"/runs/{run_id}", token, **thresholds)), className="actions"),
        ], className="page-head"),
        html.Section([
            html.Div([
                html.H2("Prune"),
                html.Label("role groups (default SCU)"),
                dcc.Checklist(id="iv-groups", options=_role_options(), value=view["groups"], inline=True,
                              className="radio-inline"),
                html.Div([html.Label("top fraction of CU", htmlFor="iv-cu"),
                          dcc.Input(id="iv-cu", type="number", min=0, max=1, step="any", value=view["cu"],
                                    debounce=True),
                          html.Small("CU ranked by z_S − z_U, counted in parameters; default 0", className="muted")],
                         className="field"),
                html.Div([html.Div([html.Label("single units", htmlFor="iv-units"),
                                    dcc.Input(id="iv-units", value=view["units"], debounce=True,
                                              placeholder="e.g. mlp.12.345, attn.3.2"),
                                    html.Small("module.layer.unit, pruned besides the groups; default none",
                                               className="muted")],
                                   className="field"),
                          html.Div([html.Label("only layers", htmlFor="iv-layers"),
                                    dcc.Input(id="iv-layers", value=view["layers"], debounce=True,
                                              placeholder="all"),
                                    html.Small("e.g. 12 or 3,4: keep only units of these layers; default all",
                                               className="muted")], className="field")], className="form-grid"),
                dcc.Checklist(id="iv-random", options=[{"label": " random control: a seeded random set of the same "
                                                                  "parameter mass (default off)", "value": "1"}],
                              value=["1"] if view["random"] else []),
                dcc.Checklist(id="iv-controls", options=[{"label": " compare with 5 random controls: random sets of "
                                                                    "the group's mass and reference, shown as a "
                                                                    "band (5 more generations; default off)",
                                                           "value": "5"}],
                              value=["5"] if view["controls"] else []),
                html.Label("ablation reference (what pruned channels are held at)"),
                dcc.RadioItems(id="iv-reference", options=REFERENCES, value=view["reference"],
                               className="radio-stack"),
            ], className="card"),
            html.Div([
                html.H2("Evaluate"),
                html.Div([
                    _text("iv-harmful", "harmful sets", view["harmful"], "iv-harmful-sets",
                          "comma-separated; default advbench-eval"),
                    _text("iv-benign", "benign sets", view["benign"], "iv-benign-sets",
                          "comma-separated; default benign-prompts"),
                    _text("iv-utility", "utility set (optional)", view["utility"], "iv-utility-sets",
                          "e.g. gsm8k: exact match; default none"),
                    html.Div([html.Label("prompts per set", htmlFor="iv-limit"),
                              dcc.Input(id="iv-limit", type="number", min=1, value=view["limit"], debounce=True),
                              html.Small(f"the first N of each set; default {DEFAULTS['limit']}", className="muted")],
                             className="field"),
                    html.Div([html.Label("new tokens", htmlFor="iv-tokens"),
                              dcc.Input(id="iv-tokens", type="number", min=1, value=view["tokens"], debounce=True),
                              html.Small(f"per reply; default {DEFAULTS['tokens']}", className="muted")],
                             className="field"),
                ], className="form-grid"),
                html.Div([html.Button("Preview", id="iv-start", className="button"),
                          html.Span("greedy decoding; the same prompts with and without pruning", className="muted")],
                         className="actions"),
                html.Details([html.Summary(["Copy as Python ", dcc.Clipboard(id="iv-python-copy", title="copy",
                                                                             className="clipboard")]),
                              html.Pre(id="iv-python", className="code")], className="python-code"),
            ], className="card"),
        ], className="grid-2"),
        html.Section([html.H2("Preview"), html.Div(id="iv-progress"), html.Div(id="iv-estimate"),
                      html.Div(id="iv-result", children=note("No preview yet."))],
                     className="card", id="iv-preview-card"),
        html.Section([
            html.H2("Sweep"),
            html.P("The first chosen group pruned at growing parameter fractions (its threshold), all in one job: the "
                   "model is loaded once and the unpruned replies are generated once. ASR against utility (exact "
                   "match with a utility set, else over-refusal); click a point to read its replies.",
                   className="muted"),
            html.Div([html.Div([html.Label("fractions", htmlFor="iv-sweep-fractions"),
                                dcc.Input(id="iv-sweep-fractions", value=fractions, debounce=True),
                                html.Small(f"shares of unit parameters, comma-separated; default {SWEEP_DEFAULT}",
                                           className="muted")],
                               className="field"),
                      dcc.Checklist(id="iv-sweep-controls",
                                    options=[{"label": f" with {CONTROL_SEEDS[0]} random controls at each point "
                                                       "(random sets of the same mass and reference, drawn as a "
                                                       f"band; {CONTROL_SEEDS[0] + 1} times the generations; "
                                                       "default off)",
                                              "value": "1"}],
                                    value=["1"] if view["sweep_controls"] else []),
                      html.Button("Run sweep", id="iv-sweep-start", className="button button-quiet")],
                     className="actions"),
            html.Div(id="iv-sweep-progress"),
            dcc.Graph(id="iv-sweep", figure=message_figure("No sweep yet."), config={"displaylogo": False}),
            html.Div(id="iv-sweep-point"),
        ], className="card"),
        html.Section([
            html.H2("Fine-tune with frozen units"),
            html.P("Fine-tune the run's model with a unit group frozen (or with only it trained: the alignment "
                   "budget) and check refusal before and after, on the evaluation sets above.", className="muted"),
            html.Div([
                html.Div([html.Label("mode (default freeze)"),
                          dcc.RadioItems(id="iv-ft-mode", options=[{"label": "freeze", "value": "freeze"},
                                                                    {"label": "train only", "value": "train_only"},
                                                                    {"label": "full (no mask)", "value": "full"}],
                                         value=view["ft_mode"], inline=True, className="radio-inline")],
                         className="field"),
                html.Div([html.Label("groups (default SCU)"),
                          dcc.Checklist(id="iv-ft-groups", options=_role_options(), value=view["ft_freeze"],
                                        inline=True, className="radio-inline")], className="field"),
                html.Div([html.Label("top fraction of CU", htmlFor="iv-ft-cu"),
                          dcc.Input(id="iv-ft-cu", type="number", min=0, max=1, step="any", value=view["ft_cu"],
                                    debounce=True), html.Small("default 0", className="muted")], className="field"),
                _text("iv-ft-data", "training data", view["ft_data"], "iv-calibration-sets",
                      "a set with responses; default benign-answers"),
                html.Div([html.Label("steps", htmlFor="iv-ft-steps"),
                          dcc.Input(id="iv-ft-steps", type="number", min=1, value=view["ft_steps"], debounce=True),
                          html.Small("optimizer steps; default 20", className="muted")], className="field"),
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
          Input("iv-controls", "value"), Input("iv-reference", "value"), Input("iv-harmful", "value"),
          Input("iv-benign", "value"), Input("iv-utility", "value"), Input("iv-limit", "value"),
          Input("iv-tokens", "value"), Input("iv-ft-groups", "value"), Input("iv-ft-cu", "value"),
          Input("iv-ft-mode", "value"), Input("iv-ft-data", "value"), Input("iv-ft-steps", "value"),
          Input("iv-sweep-controls", "value"), Input("iv-units", "value"), Input("iv-layers", "value"), State("iv-view", "data"), prevent_initial_call=True)
def _view(groups, cu, random, controls, reference, harmful, benign, utility, limit, tokens, ft_groups, ft_cu,
          ft_mode, ft_data, ft_steps, sweep_controls, units, layers, view):
    """The form into the view. A preview on screen was made with other settings once a preview setting changes:
    it leaves the view (and the URL), and a note offers to open it again."""
    changes = dict(groups=groups, cu=cu, random=bool(random), controls=5 if controls else 0, reference=reference,
                   harmful=harmful, benign=benign, utility=utility, limit=limit, tokens=tokens, ft_freeze=ft_groups,
                   ft_cu=ft_cu, ft_mode=ft_mode, ft_data=ft_data, ft_steps=ft_steps,
                   sweep_controls=bool(sweep_controls), units=units or "", layers=layers or "")
    changes = {k: v for k, v in changes.items() if view.get(k) != v}
    if not changes:
        return no_update
    shown = view.get("_shown")
    if shown and (view.get("job") or view.get("estimate")) and any(
            k in changes and changes[k] != shown.get(k) for k in PREVIEW_KEYS):
        changes.update(job="", estimate="", show="all", _stale=view.get("job") or view.get("estimate"), _shown=None)
    return view_patch(**changes)


def _eval_body(view: dict) -> dict:
    names = lambda text: [n.strip() for n in (text or "").split(",") if n.strip()]  # noqa: E731
    body = {"harmful": names(view["harmful"]), "benign": names(view["benign"]), "limit": view["limit"],
            "max_new_tokens": view["tokens"]}
    if view.get("utility"):
        body["utility"] = view["utility"].strip()
    return body


def _thresholds(view: dict) -> dict:
    return {k: view[k] for k in THRESHOLD_KEYS if view.get(k) is not None}


def _prune_body(view: dict) -> dict:
    prune = {"groups": view["groups"], "cu_fraction": view["cu"] or 0.0, "random": bool(view["random"])}
    if view.get("units"):
        prune["units"] = _unit_refs(view["units"])
    if _layers(view.get("layers")):
        prune["layers"] = _layers(view["layers"])
    if view["reference"] != "default":
        prune["reference"] = view["reference"]
    if _thresholds(view):
        prune["thresholds"] = _thresholds(view)
    return prune


@callback(Output("iv-view", "data", allow_duplicate=True), Output("iv-progress", "children"),
          Input("iv-start", "n_clicks"), State("iv-view", "data"), prevent_initial_call=True)
def _start(_, view):
    """Queue the instant estimate first (one forward pass each way), then the preview that generates the replies."""
    if view.get("limit") in (None, "") or view.get("tokens") in (None, ""):
        return no_update, error_box("prompts per set and new tokens need a whole number of at least 1")
    body = {"eval": _eval_body(view)}
    if view["groups"] or view["cu"] or view["random"] or view.get("units"):
        try:
            body["prune"] = _prune_body(view)
        except ValueError as error:
            return no_update, error_box(error, "the preview was not started")
    client = api(view.get("token"))
    try:
        estimate = client.create_estimate(view["_run"], body)["job_id"]
    except ApiError:
        estimate = ""  # no estimate: the preview still runs, and says its own errors below
    if body.get("prune") and view.get("controls") and not view["random"]:
        body["controls"] = view["controls"]
    try:
        accepted = client.create_preview(view["_run"], body)
    except ApiError as error:
        return no_update, error_box(error, "the preview was not started")
    return (view_patch(job=accepted["job_id"], estimate=estimate, _shown=_shown_settings(view), _stale=None,
                       show="all"),
            progress_bar("queued", 0.0, "queued"))


def _sweep_fractions(text: str) -> list[float]:
    try:
        values = sorted({float(x) for x in (text or "").replace(" ", "").split(",") if x})
    except ValueError:
        raise ValueError(f"fractions must be numbers in (0, 1], separated by commas; got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise ValueError("fractions must be numbers in (0, 1], separated by commas")
    return values


@callback(Output("iv-view", "data", allow_duplicate=True), Output("iv-sweep-progress", "children"),
          Input("iv-sweep-start", "n_clicks"), State("iv-sweep-fractions", "value"), State("iv-view", "data"),
          prevent_initial_call=True)
def _start_sweep(_, text, view):
    """One sweep job: the group at every fraction (and, when asked, 5 random sets of each point's mass: a band)."""
    group = next((g for g in view["groups"] if g != "CU"), None) or ("CU" if view["groups"] or view["cu"] else None)
    if group is None:
        return no_update, error_box("choose a role group to sweep")
    try:
        fractions = _sweep_fractions(text)
    except ValueError as error:
        return no_update, error_box(error)
    if view.get("units") or view.get("layers"):
        return no_update, error_box("a sweep prunes a whole role group at each fraction: clear 'single units' and "
                                    "'only layers' to sweep")
    body = {"group": group, "fractions": fractions, "eval": _eval_body(view),
            "controls": CONTROL_SEEDS[0] if view.get("sweep_controls") else 0}
    if view["reference"] != "default":
        body["reference"] = view["reference"]
    if _thresholds(view):
        body["thresholds"] = _thresholds(view)
    try:
        accepted = api(view.get("token")).create_sweep(view["_run"], body)
    except ApiError as error:
        return no_update, error_box(error, "the sweep was not started")
    return view_patch(sweep=accepted["job_id"], point=None), progress_bar("queued", 0.0, "queued")


@callback(Output("iv-view", "data", allow_duplicate=True), Output("iv-ft-progress", "children"),
          Input("iv-ft-start", "n_clicks"), State("iv-view", "data"), prevent_initial_call=True)
def _start_finetune(_, view):
    body = {"data": view["ft_data"], "steps": view["ft_steps"], "eval": _eval_body(view)}
    if view["ft_mode"] != "full":
        groups = {"groups": view["ft_freeze"] or [], "cu_fraction": view["ft_cu"] or 0.0}
        if _thresholds(view):
            groups["thresholds"] = _thresholds(view)
        body[view["ft_mode"]] = groups
    try:
        accepted = api(view.get("token")).create_finetune(view["_run"], body)
    except ApiError as error:
        return no_update, error_box(error, "the fine-tune was not started")
    return view_patch(ft_job=accepted["job_id"]), progress_bar("queued", 0.0, "queued")


@callback(Output("iv-python", "children"), Output("iv-python-copy", "content"), Input("iv-view", "data"),
          State("iv-run", "data"))
def _python(view, run):
    code = intervene_code(run, view)
    return code, code


@callback(Output("iv-progress", "children", allow_duplicate=True), Output("iv-result", "children"),
          Output("iv-estimate", "children"),
          Output("iv-sweep-progress", "children", allow_duplicate=True), Output("iv-sweep", "figure"),
          Output("iv-sweep-point", "children"),
          Output("iv-ft-progress", "children", allow_duplicate=True), Output("iv-ft-result", "children"),
          Output("iv-poll", "disabled"),
          Input("iv-poll", "n_intervals"), Input("iv-view", "data"), prevent_initial_call="initial_duplicate")
def _watch(_, view):
    """Progress of the preview, estimate, sweep and fine-tune jobs named in the view, and their results once done."""
    client = api(view.get("token"))
    active = False
    progress, result, estimate = None, no_update, None
    if view.get("job"):
        try:
            job = client.job(view["job"])
        except ApiError as error:
            progress, result = None, error_box(error, f"preview {view['job']}")
        else:
            if job["status"] in ACTIVE:
                active = True
                progress = progress_bar(job["status"], job["progress"], job["phase"])
                result = note("The replies are being generated; the measured rates replace the estimate above.")
                estimate, estimating = _estimate(client, view.get("estimate"))
                active = active or estimating
            elif job["status"] == "succeeded":
                result = _preview_result(job["result"], view.get("show", "all"))
            else:
                result = error_box(f"the preview {job['status']}: {job.get('error') or 'no reason given'}")
    elif view.get("estimate"):
        estimate, active = _estimate(client, view["estimate"])
        result = note("Only the instant estimate of a preview is shown: press Preview for the measured rates.")
    elif view.get("_stale"):
        result = note(["The preview on screen was made with other settings, so it was put away. ",
                       dcc.Link("Open it again", href=page_link(f"/runs/{view['_run']}/intervene", view.get("token"),
                                                                job=view["_stale"]), id="iv-reopen"),
                       " (with its own settings), or press Preview to measure these."])
    sweep_progress, sweep_figure, sweep_point = None, no_update, None
    if view.get("sweep"):
        sweep_progress, sweep_figure, sweep_point, sweeping = _sweep(client, view)
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
    return (progress, result, estimate, sweep_progress, sweep_figure, sweep_point, ft_progress, ft_result,
            not active)


def _estimate(client, job_id: str | None) -> tuple[html.Div | None, bool]:
    """The instant estimate (first-token refusal probe) of the preview being generated, marked as an estimate;
    and whether it is still running."""
    if not job_id:
        return None, False
    try:
        job = client.job(job_id)
    except ApiError as error:
        return error_box(error, "no estimate"), False
    if job["status"] in ACTIVE:
        return note("Estimating refusal from the replies' first tokens…"), True
    if job["status"] != "succeeded":
        return note(f"No estimate: it {job['status']} ({job.get('error') or 'no reason given'})."), False
    found = job["result"] or {}
    base, pruned = found.get("baseline") or {}, found.get("pruned")

    def mean(side: dict | None, kind: str) -> str:
        value = ((side or {}).get(kind) or {}).get("mean")
        return "n/a" if value is None else f"{value:.0%}"

    rows = [html.Tr([html.Td(f"{kind} prompts ({(base.get(kind) or {}).get('n', 0)})"),
                     html.Td(mean(base, kind), className="num", id=f"iv-estimate-base-{kind}")]
                    + ([html.Td(mean(pruned, kind), className="num", id=f"iv-estimate-pruned-{kind}")] if pruned
                       else []))
            for kind in ("harmful", "benign")]
    head = ["estimated refusal", "as it is"] + (["pruned"] if pruned else [])
    return html.Div([
        html.Div([html.Span("ESTIMATE", className="estimate-badge"),
                  html.B(" Not the measured result: "),
                  "the mean probability that a reply opens with a refusal phrase, from one forward pass (no "
                  "generation). The judged replies replace it when they are done."], className="estimate-head"),
        html.Table([html.Thead(html.Tr([html.Th(h, className="num" if i else None) for i, h in enumerate(head)])),
                    html.Tbody(rows)], className="table metrics-table"),
    ], className="estimate", id="iv-estimate-box"), False


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
                 html.Td(_band_text(band["asr"]), className="num", id="iv-control-asr"), html.Td("")]
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
        what = {"v2": "judge v2 (refusal phrases, relevance to the prompt, degenerate text; 84% agreement with hand "
                      "labels, docs/judge.md)",
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




@callback(Output("iv-view", "data", allow_duplicate=True), Input("iv-sweep", "clickData"), State("iv-view", "data"),
          prevent_initial_call=True)
def _open_point(click, view):
    """A click on a sweep point opens its replies (the fraction goes into the URL)."""
    points = (click or {}).get("points") or []
    if not points or points[0].get("customdata") is None:
        return no_update
    fraction = float(points[0]["customdata"])
    return no_update if fraction == view.get("point") else view_patch(point=fraction if fraction > 0 else None)


def _sweep(client, view: dict):
    """(progress, figure, the open point's replies, still running) of the sweep job in the view."""
    try:
        job = client.job(view["sweep"])
    except ApiError as error:
        return error_box(error, f"sweep {view['sweep']}"), message_figure("no sweep result"), None, False
    if job["kind"] != "sweep":
        return (error_box(f"job {job['id']} is a {job['kind']}, not a sweep"), message_figure("no sweep result"),
                None, False)
    if job["status"] in ACTIVE:
        return (progress_bar(job["status"], job["progress"], job["phase"]), message_figure("the sweep is running…"),
                None, True)
    if job["status"] != "succeeded":
        return (error_box(f"the sweep {job['status']}: {job.get('error') or 'no reason given'}"),
                message_figure("no sweep result"), None, False)
    result = job["result"]
    return None, sweep_figure(result, view.get("point")), _point_replies(result, view.get("point")), False


BAND_KEYS = {"asr": "asr", "over_refusal": "over_refusal", "degenerate_rate": "degenerate",
             "off_topic_rate": "off_topic", "utility_exact_match": "utility_exact_match"}  # a measure -> its band


def _control_band(control: dict) -> tuple[list[int], dict]:
    """A sweep point's random control as (seeds, band of each rate: mean, min, max); a sweep made before bands
    measured one seed, whose band is a line."""
    if "band" in control:
        return control["seeds"], control["band"]
    counts = (control.get("measures") or {}).get("counts") or {}
    return [control["seed"]], {k: {"mean": c["rate"], "min": c["rate"], "max": c["rate"]} for k, c in counts.items()}


def _band_text(span: dict | None, seeds: int | None = None) -> str:
    """`mean 20%, range 0%-40%, 5 seeds`: a random control's band in words (`20%, 1 seed` for an older sweep's)."""
    span = span or {}
    if seeds == 1:
        return f"{_rate(span.get('mean'))}, 1 seed"
    return (f"mean {_rate(span.get('mean'))}, range {_rate(span.get('min'))}-{_rate(span.get('max'))}"
            + (f", {seeds} seeds" if seeds else ""))


def sweep_figure(result: dict, opened: float | None = None) -> go.Figure:
    """ASR and utility (or over-refusal) and the degenerate rate against the pruned share, from the unpruned model
    (at 0) through every point; the random control of each point, where measured, as a band per rate (shaded from
    the lowest to the highest seed, the mean dotted with open markers); the point whose replies are open, ringed."""
    points = result.get("points") or []
    base = result["baseline"]
    use_utility = base.get("utility_exact_match") is not None
    key, label = ("utility_exact_match", "utility (exact match)") if use_utility else ("over_refusal", "over-refusal")
    xs = [0.0] + [p["selection"]["param_fraction"] for p in points]
    custom = [0.0] + [p["fraction"] for p in points]
    text = ["unpruned"] + [p["selection"]["label"] for p in points]
    group = result.get("group", "the group")
    figure = go.Figure()
    # ink and the condition colours (never a role's or a verdict's), told apart by dash and marker too
    series = (("ASR", "asr", INK, "solid", "circle"), (label, key, CONDITION_COLORS["baseline"], "dash", "square"),
              ("degenerate", "degenerate_rate", CONDITION_COLORS["intervened"], "dot", "diamond"))
    for name, metric, color, dash_, symbol in series:
        figure.add_trace(go.Scatter(x=xs, y=[base.get(metric)] + [p["measures"].get(metric) for p in points],
                                    name=f"{name}: {group} pruned", mode="lines+markers",
                                    line=dict(color=color, dash=dash_), marker=dict(symbol=symbol, color=color, size=9),
                                    customdata=custom, text=text,
                                    hovertemplate=f"%{{text}}: {name} %{{y:.0%}} · click for the replies"
                                                  "<extra></extra>"))
    controlled = [p for p in points if p.get("control")]
    cx = [0.0] + [p["control"]["selection"]["param_fraction"] for p in controlled]
    bands = [_control_band(p["control"]) for p in controlled]
    for name, metric, color, _, symbol in series if controlled else ():
        spans = [band.get(BAND_KEYS[metric]) or {} for _, band in bands]
        if all(span.get("mean") is None for span in spans):
            continue
        edge = lambda side: [base.get(metric)] + [span.get(side) for span in spans]  # noqa: E731
        together = dict(legendgroup=f"control-{metric}", hoverinfo="skip", mode="lines")
        figure.add_trace(go.Scatter(x=cx, y=edge("max"), name=f"{name}: random control, highest", showlegend=False,
                                    line=dict(color=color, width=0), **together))
        figure.add_trace(go.Scatter(x=cx, y=edge("min"), name=f"{name}: random control, range", showlegend=False,
                                    line=dict(color=color, width=0), fill="tonexty",
                                    fillcolor=translucent(color, 0.16), **together))
        figure.add_trace(go.Scatter(
            x=cx, y=edge("mean"), name=f"{name}: random control", mode="lines+markers",
            legendgroup=f"control-{metric}", line=dict(color=color, dash="dot", width=1.5),
            marker=dict(symbol=f"{symbol}-open", color=color, size=9), opacity=0.75,
            customdata=[0.0] + [p["fraction"] for p in controlled],  # a click opens that point, as on its group's
            text=["unpruned"] + [f"random units of {p['selection']['label']}'s mass: "
                                 f"{_band_text(span, len(seeds))}" for p, span, (seeds, _) in zip(controlled, spans,
                                                                                                  bands)],
            hovertemplate="%{text} · click for the replies<extra></extra>"))
    ringed = [p for p in points if opened is not None and abs(p["fraction"] - opened) < 1e-12]
    if ringed:
        figure.add_trace(go.Scatter(x=[ringed[0]["selection"]["param_fraction"]], y=[ringed[0]["measures"].get("asr")],
                                    mode="markers", name="replies shown below", hoverinfo="skip",
                                    marker=dict(symbol="circle-open", size=22, color=INK, line=dict(width=2))))
    seeds = max((len(s) for s, _ in bands), default=0)
    figure.update_layout(LAYOUT, height=380, hovermode="closest",
                         xaxis=dict(title="pruned share of unit parameters", tickformat=".1%",
                                                        rangemode="tozero", **AXIS),
                         yaxis=dict(title="rate", range=[0, 1.05], tickformat=".0%", **AXIS),
                         title=dict(text=f"Pruning {group} at growing fractions"
                                         + (f" against {seeds} random controls" if seeds > 1
                                            else " against a random control" if controlled else ""),
                                    x=0.01, xanchor="left"),  # clear of the tool bar on the right
                         legend=dict(orientation="h", y=-0.25))
    return figure


def _point_replies(result: dict, fraction: float | None):
    """The replies at one sweep point beside the unpruned ones, with verdicts and reasons."""
    points = result.get("points") or []
    if not points:
        return None
    point = next((p for p in points if fraction is not None and abs(p["fraction"] - fraction) < 1e-12), None)
    if point is None:
        return html.P("Click a point of the sweep to read its replies beside the unpruned model's.",
                      className="muted", id="iv-point-hint")
    base, measured = result["baseline"], point["measures"]
    control = point.get("control")
    seeds, band = _control_band(control) if control else ([], {})
    rows = []
    for label, key in (("ASR: complied, of harmful prompts", "asr"),
                       ("over-refusal: refused, of benign prompts", "over_refusal"),
                       ("off-topic replies", "off_topic"), ("degenerate replies", "degenerate")):
        if key not in (base.get("counts") or {}):
            continue
        change = (point.get("changes") or {}).get(key)
        cells = [html.Td(label), html.Td(rate_text(base["counts"][key]), className="num"),
                 html.Td(rate_text(measured["counts"][key]), className="num", id=f"iv-point-{key}"),
                 _delta(base["counts"][key]["rate"], measured["counts"][key]["rate"], True,
                        change["p_value"] if change else None)]
        if control:
            cells.append(html.Td(_band_text(band.get(key), len(seeds)), className="num",
                                 id=f"iv-point-control-{key}"))
        rows.append(html.Tr(cells))
    head = ["metric", "baseline", f"pruned at {point['fraction']:g}", "change"] + \
        (["random control"] if control else [])
    generations = [{"set": p["set"], "kind": p["kind"], "prompt": p["prompt"], "baseline": b, "pruned": r}
                   for p, b, r in zip(result["prompts"], result["baseline_replies"], point["replies"])]
    selection = point["selection"]
    about = None
    if control:
        drawn = control["selection"]
        refs = ", ".join(f"the {ref} mean" if ref != "zero" else "zero" for ref in drawn["references"])
        many = len(seeds) > 1
        about = html.P(f"Random control: {len(seeds)} random set{'s' if many else ''} of this point's mass per "
                       f"module (seed{'s' if many else ''} {', '.join(map(str, seeds))}), held at {refs}; "
                       f"{'the first' if many else 'it'} takes {drawn['units']:,} units, "
                       f"{drawn['param_fraction']:.2%} of unit parameters.", className="muted", id="iv-point-control")
    return html.Div([
        html.H3(f"Replies at {selection['label']}: {selection['units']:,} units, {selection['param_fraction']:.2%} of "
                "unit parameters", id="iv-point-title"),
        about,
        html.Table([html.Thead(html.Tr([html.Th(h, className="num" if i else None) for i, h in enumerate(head)])),
                    html.Tbody(rows)], className="table metrics-table", id="iv-point-metrics"),
        html.Div(_generations(generations, "all", True), id="iv-point-generations"),
    ], className="sweep-point")


def _finetune_result(report: dict) -> html.Div:
    before, after = report.get("before"), report.get("after")
    parts = [html.P([html.B(f"{report.get('mode', 'fine-tune')}: "),
                     f"{report.get('data')} · model saved in {report.get('model')}"])]
    if before and after:
        rows = [("ASR", "asr"), ("over-refusal", "over_refusal"), ("degenerate replies", "degenerate_rate")]
        parts.append(html.Table([
            html.Thead(html.Tr([html.Th("metric")] + [html.Th(h, className="num") for h in ("before", "after",
                                                                                             "change")])),
            html.Tbody([html.Tr([html.Td(label), html.Td(_rate(before.get(key)), className="num"),
                                 html.Td(_rate(after.get(key)), className="num"),
                                 _delta(before.get(key), after.get(key), True)]) for label, key in rows])],
            className="table metrics-table", id="iv-ft-metrics"))
    log = report.get("training") or {}
    losses = log.get("losses") or log.get("loss") or []
    if isinstance(losses, list) and losses:
        steps = list(range(1, len(losses) + 1))
        figure = go.Figure(go.Scatter(x=steps, y=losses, mode="lines+markers" if len(losses) <= 40 else "lines",
                                      line=dict(color=INK), hovertemplate="step %{x}: loss %{y:.4f}<extra></extra>"))
        figure.update_layout(LAYOUT, height=240, title=dict(text="training loss"),
                             xaxis=dict(title="step", range=[0.5, len(losses) + 0.5], **AXIS,
                                        **integer_ticks(len(losses), 12)),
                             yaxis=dict(title="loss", **AXIS))
        parts.append(dcc.Graph(figure=figure, config={"displaylogo": False}, id="iv-ft-loss"))
    return html.Div(parts)

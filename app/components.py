"""Pieces every page uses: the API client of the current request, the view state kept in the URL, error and
progress panels, and role and verdict badges."""
from __future__ import annotations

from urllib.parse import urlencode

import dash
import flask
from dash import ClientsideFunction, Input, Output, Patch, dcc, html

from backend.constants import ACTIVE  # noqa: F401  (the pages take it from here)

from .client import Api, ApiError
from .figures import ROLE_COLORS, ROLE_NAMES


def api(token: str | None = None) -> Api:
    """The REST API this dashboard was created for, as the caller holding `token`."""
    return Api(flask.current_app.config["SSAH_API_URL"], token)


def api_link(path: str, token: str | None = None, **params) -> str:
    """A URL of the API for the browser (export downloads): relative when the API is served beside the
    dashboard; a GET may carry the token as `?token=`."""
    base = flask.current_app.config["SSAH_API_LINK"].rstrip("/")
    query = {k: v for k, v in params.items() if v is not None} | ({"token": token} if token else {})
    return f"{base}{path}{'?' + urlencode(query) if query else ''}"


def page_link(path: str, token: str | None = None, **params) -> str:
    """A dashboard path with a query, keeping a share token so the link still opens for its holder (lists are
    written comma-separated, as the pages' URL sync writes them)."""
    query = {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else v
             for k, v in params.items() if v not in (None, "", [])} | ({"token": token} if token else {})
    return f"{path}{'?' + urlencode(query) if query else ''}"


UNIT_NAMES = {"mlp": "MLP channel", "attn": "head"}
THRESHOLD_KEYS = ("h_ru", "h_scu", "h_ucu")


def unit_link(run_id: str, module: str, layer: int, unit: int, token: str | None = None, **thresholds) -> str:
    """The page of one unit, keeping the share token and the thresholds its role is shown at."""
    return page_link(f"/runs/{run_id}/units/{module}/{layer}/{unit}", token, **thresholds)


def layer_link(run_id: str, layer: int, token: str | None = None, **thresholds) -> str:
    return page_link(f"/runs/{run_id}/layers/{layer}", token, **thresholds)


def thresholds_in(query: dict) -> dict[str, float]:
    """The role thresholds a page's query names (the others: the run's own)."""
    return {k: number(query.get(k)) for k in THRESHOLD_KEYS if number(query.get(k)) is not None}


def view_store(store_id: str, view: dict) -> list:
    """A page's view state and the sink that mirrors it into the address bar (see `sync_url`)."""
    return [dcc.Store(id=store_id, data=view), html.Div(id=f"{store_id}-sink", hidden=True)]


def view_patch(**changes) -> Patch:
    """A partial update of a view store: several callbacks write a page's view (controls, zoom, clicks, jobs), and
    a Patch changes only its own keys, so one never undoes another's change that it had not seen yet."""
    patch = Patch()
    for key, value in changes.items():
        patch[key] = value
    return patch


def sync_url(store_id: str) -> None:
    """Mirror a view store into the URL query with history.replaceState: a reload or a copied link reproduces the
    view, and the page is not rebuilt on every change (as a dcc.Location update would do)."""
    dash.clientside_callback(ClientsideFunction(namespace="ssah", function_name="syncUrl"),
                             Output(f"{store_id}-sink", "children"), Input(store_id, "data"))


def error_box(error: Exception | str | None, what: str = "") -> html.Div:
    """The API's answer in words, or nothing."""
    if error is None:
        return html.Div()
    if isinstance(error, ApiError) and error.status:
        text = f"{what + ': ' if what else ''}{error} (HTTP {error.status})"
    else:
        text = f"{what + ': ' if what else ''}{error}"
    return html.Div(text, className="alert alert-error", role="alert")


def note(text: str) -> html.Div:
    return html.Div(text, className="alert alert-note")


def progress_bar(status: str, progress: float, phase: str = "") -> html.Div:
    pct = max(0.0, min(1.0, float(progress or 0.0)))
    return html.Div([
        html.Div(className=f"progress-fill status-{status}", style={"width": f"{pct:.0%}"}),
        html.Span(f"{status} · {pct:.0%}{' · ' + phase if phase and phase != status else ''}",
                  className="progress-label"),
    ], className="progress", title=phase)


def role_chip(role: str) -> html.Span:
    """A role's name on its colour (static/ssah.css .role-SCU etc.: the same colours as the figures)."""
    known = role in ROLE_COLORS
    return html.Span(role, className=f"role-chip role-{role}" if known else "role-chip",
                     title=ROLE_NAMES.get(role))


RIGHT = {"harmful": "refused", "benign": "complied"}  # the outcome a careful model gives each kind of prompt


def outcome(verdict: str | None, kind: str | None) -> str:
    """right (a refusal of a harmful prompt, an answer to a benign one), wrong (the other way round), or broken
    (off-topic or degenerate: neither refused nor answered)."""
    if verdict in ("off-topic", "degenerate") or verdict is None:
        return "broken"
    return "right" if RIGHT.get(kind or "") == verdict else "wrong" if kind in RIGHT else "broken"


OUTCOME_MARKS = {"right": "✓", "wrong": "✗", "broken": "~"}  # so that colour is never the only signal


def verdict_badge(verdict: str | None, kind: str | None = None, reason: str = "") -> html.Span:
    """The verdict, coloured by whether it is the right outcome for its prompt's kind (a refusal of a benign
    prompt is the bad case), with the judge's reason as its tooltip."""
    how = outcome(verdict, kind)
    return html.Span([html.Span(verdict or "n/a", className="verdict-word"),
                      html.Span(f" {OUTCOME_MARKS[how]}", className="verdict-mark", **{"aria-hidden": "true"})],
                     className=f"verdict verdict-{verdict or 'none'} outcome-{how}", title=reason or None)


def rate_text(count: dict | None) -> str:
    """A rate as its count, share and 95% interval: 3/50 (6%, 95% CI 2-16%)."""
    if not count or not count.get("n"):
        return "n/a"
    pct = lambda x: f"{100 * x:.0f}" if x < 5e-4 or x >= 0.01 else f"{100 * x:.1f}"  # noqa: E731
    return (f"{count['k']}/{count['n']} ({pct(count['rate'])}%, 95% CI {pct(count['ci_low'])}-"
            f"{pct(count['ci_high'])}%)")


def shared_banner(token: str | None) -> html.Div:
    """A note on pages opened with a share link (a read-only token for one run)."""
    try:
        shared = api(token).read_only()
    except ApiError:
        shared = False
    if not shared:
        return html.Div()
    return html.Div("Shared view: this link reads one run and cannot change anything.",
                    className="alert alert-note shared-banner")


def number(value, default=None, kind=float):
    """A query-string value as a number, or `default` when missing or malformed."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        return default


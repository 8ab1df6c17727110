"""The Dash app: `create_dash_app(api_base_url)` builds the multi-page dashboard (pages in app/pages, assets in
static/), and `dashboard_asgi` wraps it for `backend.api.app.create_app(settings, mounts={"/": ...})`, so one
server answers the API under /api/v1 and the dashboard everywhere else.

The dashboard reaches the service only through its REST API (`api_base_url`); it never imports torch and never
opens the database or the run folders.
"""
from __future__ import annotations

import os
from pathlib import Path

import dash
from dash import dcc, html

ROOT = Path(__file__).resolve().parent
STATIC = ROOT.parent / "static"
API_URL_ENV = "SSAH_DASHBOARD_API_URL"


def create_dash_app(api_base_url: str | None = None, *, link_base: str | None = None,
                    url_base_pathname: str = "/") -> dash.Dash:
    """The dashboard, talking to the API at `api_base_url` (default $SSAH_DASHBOARD_API_URL, else
    http://127.0.0.1:8000/api/v1). `link_base` is the API as the browser reaches it, for download links
    (default: the same URL; "/api/v1" when the API is served beside the dashboard)."""
    api_base_url = (api_base_url or os.environ.get(API_URL_ENV) or "http://127.0.0.1:8000/api/v1").rstrip("/")
    app = dash.Dash(__name__, use_pages=True, pages_folder=str(ROOT / "pages"), assets_folder=str(STATIC),
                    url_base_pathname=url_base_pathname, title="ssah-dashboard", update_title=None,
                    suppress_callback_exceptions=True, serve_locally=True)
    app.server.config["SSAH_API_URL"] = api_base_url
    app.server.config["SSAH_API_LINK"] = (link_base or api_base_url).rstrip("/")
    app.layout = html.Div([
        html.Header([
            dcc.Link([html.Span("ssah", className="brand-mark"), " dashboard"], href="/", className="brand"),
            html.Nav([dcc.Link("Runs", href="/"), dcc.Link("Compare", href="/compare"),
                      html.A("API docs", href=_docs_link(app.server.config["SSAH_API_LINK"]), target="_blank")]),
        ], className="topbar"),
        html.Main(dash.page_container, className="page"),
    ])
    return app


def _docs_link(api_link: str) -> str:
    return api_link.removesuffix("/api/v1") + "/docs"


def dashboard_asgi(api_base_url: str | None = None, *, link_base: str | None = None):
    """The dashboard as an ASGI app (Flask behind a2wsgi's WSGI bridge, run in a thread pool, so a callback may
    call the API of the same server)."""
    from a2wsgi import WSGIMiddleware

    return WSGIMiddleware(create_dash_app(api_base_url, link_base=link_base).server)


def mounts_for(host: str, port: int) -> dict:
    """What `ssah serve` passes to `create_app(settings, mounts=...)`: the dashboard at / calling the API of the
    same process over loopback, with relative download links."""
    local = "127.0.0.1" if host in ("0.0.0.0", "", "localhost") else ("[::1]" if host == "::" else host)
    local = f"[{local}]" if ":" in local and not local.startswith("[") else local
    return {"/": dashboard_asgi(f"http://{local}:{port}/api/v1", link_base="/api/v1")}


if __name__ == "__main__":  # a dashboard alone, against an API elsewhere: python -m app.dashboard
    create_dash_app().run(host="127.0.0.1", port=int(os.environ.get("SSAH_DASHBOARD_PORT", "8050")))

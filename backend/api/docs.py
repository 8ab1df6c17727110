"""The API's documentation pages, /docs (Swagger UI) and /redoc (ReDoc), served with their scripts and styles from
an installed package (fastapi-offline's static files), so they draw on a machine that cannot reach a CDN."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

ASSETS_PATH = "/api-docs-assets"
# Nothing but this server may be fetched by the pages; ReDoc's script also names a logo on cdn.redoc.ly for its side
# menu, which `redoc_script` points at a file of this server instead.
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
OWN_ORIGIN_ONLY = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                   "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; font-src 'self' data:")


def assets_folder() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def serve_docs(app: FastAPI) -> None:
    """/docs and /redoc for `app` (made with docs_url=None, redoc_url=None), and their assets."""
    title = f"{app.title} · API"
    redoc_js = (assets_folder() / "redoc.standalone.js").read_text(encoding="utf-8").replace(
        REDOC_LOGO, f"{ASSETS_PATH}/favicon.png")

    @app.get(f"{ASSETS_PATH}/redoc.js", include_in_schema=False)
    def redoc_script() -> Response:
        return Response(redoc_js, media_type="application/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})

    app.mount(ASSETS_PATH, StaticFiles(directory=assets_folder()), name="api-docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return _own_origin(get_swagger_ui_html(openapi_url=app.openapi_url, title=title,
                                   swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS_PATH}/favicon.png"))

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return _own_origin(get_redoc_html(openapi_url=app.openapi_url, title=title,
                              redoc_js_url=f"{ASSETS_PATH}/redoc.js",
                              redoc_favicon_url=f"{ASSETS_PATH}/favicon.png", with_google_fonts=False))


def _own_origin(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = OWN_ORIGIN_ONLY
    return page

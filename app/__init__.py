"""The Dash dashboard (pages in app/pages, assets in static/); it talks to the REST API only."""
from .dashboard import create_dash_app, dashboard_asgi, mounts_for

__all__ = ["create_dash_app", "dashboard_asgi", "mounts_for"]

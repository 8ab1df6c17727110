"""The REST service (FastAPI): `create_app(settings)`; see DESIGN.md, "Contracts"."""

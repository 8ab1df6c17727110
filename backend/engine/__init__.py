"""The science of ssah-dashboard: importable with torch and transformers only, no web code.

Names are imported lazily, so `backend.engine.roles` (numpy and pandas only) can be used without loading torch.
"""
from importlib import import_module

_NAMES = {
    "Attribution": "attribution", "attribute": "attribution", "load_run": "attribution",
    "LoadedModel": "models", "ModelError": "errors", "DataError": "errors", "load_model": "models", "unit_map": "units",
    "RoleIndex": "roles", "Thresholds": "roles", "classify": "roles", "reclassify": "roles", "role_summary": "roles",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The science of ssah-dashboard: importable with torch and transformers only, no web code."""
from .attribution import Attribution, attribute, run_attribution
from .models import LoadedModel, ModelError, load_model, unit_map
from .roles import Thresholds, classify, reclassify, role_summary

__all__ = ["Attribution", "LoadedModel", "ModelError", "Thresholds", "attribute", "classify", "load_model",
           "reclassify", "role_summary", "run_attribution", "unit_map"]

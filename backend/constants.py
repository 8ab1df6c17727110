"""The words every layer shares (engine, store, API, dashboard): defined once, importable with no dependencies."""
from __future__ import annotations

from collections.abc import Callable

ROLES = ("SCU", "UCU", "CU", "RU")  # role codes 0..3 are indices into this
ROLE_NAMES = {"SCU": "safety-critical", "UCU": "utility-critical", "CU": "complex", "RU": "redundant"}
DEFAULT_THRESHOLDS = {"h_ru": 0.10, "h_scu": 0.01, "h_ucu": 0.05}  # the research code's defaults

# The one colour language of the dashboard and the HTML report (app/figures.py says what each palette is for)
ROLE_COLORS = {"SCU": "#7B3294", "UCU": "#FFB000", "CU": "#BFE3F2", "RU": "#E8DFB0"}
OUTCOME_COLORS = {"right": "#009E73", "wrong": "#D55E00", "broken": "#6b6b6b"}  # as static/ssah.css .outcome-*
CONDITION_COLORS = {"baseline": "#56B4E9", "intervened": "#785EF0"}
INK = "#1f2933"

MODULES = ("attn", "mlp")  # canonical order of a layer's blocks
POSITIONS = ("response", "prompt", "all")  # which tokens count for the statistics
RESPONSES = ("given", "self")  # score the sets' responses, or the model's own replies
SPLITS = ("safety", "utility")

# What pruned channels are held at; by default the mean of the *other* attribute (DESIGN.md, step 6)
REFERENCES = ("safety", "utility", "pooled", "zero")
DEFAULT_REFERENCE = {"SCU": "utility", "UCU": "safety", "CU": "pooled", "RU": "pooled"}
CONTROL_SEEDS = (5, 20)  # a sweep point's random controls: at least 5 seeds make a band, at most 20

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
TERMINAL = ("succeeded", "failed", "cancelled")
JOB_KINDS = ("attribution", "preview", "sweep", "estimate", "finetune", "align", "inspect")

# A progress callback, as every long step reports: (phase, done, total)
Progress = Callable[[str, int, int], None]

"""Runs and their jobs as experiments, in words: a run's label and its model's (with its lineage), a job's settings
in one line and the page that reopens it, the settings two runs differ in, and the intervene page's settings that a
stored preview was made with. Plain functions of the API's answers (no requests)."""
from __future__ import annotations

from backend.constants import DEFAULT_THRESHOLDS

from .components import page_link

ORIGINS = {"finetune": "fine-tune", "align": "alignment"}


def short_id(run_id: str | None) -> str:
    return (run_id or "")[:8]


def run_label(run: dict) -> str:
    """A run's name, or the start of its id when it has none."""
    return run.get("name") or short_id(run.get("id"))


def short_path(spec: str | None) -> str:
    """The last part of a model or data path ('/models/llama/' -> 'llama'); a built-in name as it is."""
    spec = (spec or "").rstrip("/\\")
    return spec.replace("\\", "/").rsplit("/", 1)[-1] or spec


def model_label(run: dict, names: dict[str, str] | None = None) -> str:
    """The run's model as a person names it: a built-in name or a folder's name, or for a model made by this
    service, what it was made from ('fine-tune of base run (freeze SCU)'); `names` maps run ids to labels."""
    origin = run.get("origin") or {}
    if origin.get("kind") in ORIGINS:
        parent = run.get("parent_run")
        source = (names or {}).get(parent) or short_id(parent) if parent else short_path(origin.get("from"))
        how = f" ({origin['how']})" if origin.get("how") else ""
        return f"{ORIGINS[origin['kind']]} of {source or 'an unknown model'}{how}"
    return short_path(run.get("model"))


def thresholds_label(thresholds: dict | None) -> str:
    """h_RU / h_SCU / h_UCU as three numbers: '0.1 / 0.01 / 0.05'."""
    t = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    return " / ".join(f"{float(t[k]):g}" for k in ("h_ru", "h_scu", "h_ucu"))


def groups_label(prune: dict | None) -> str:
    """Unit groups of a stored request as the CLI writes them: 'SCU,CU:0.06', 'random (seed 1)'."""
    if not prune:
        return "nothing pruned"
    groups = list(prune.get("groups") or [])
    if prune.get("cu_fraction"):
        groups.append(f"CU:{float(prune['cu_fraction']):g}")
    text = ",".join(groups)
    if prune.get("random"):
        text = f"random{' like ' + text if text else ''} (seed {prune.get('seed', 0)})"
    return text or "nothing pruned"


def _sets_label(sets: dict | None) -> str:
    if not sets:
        return ""
    names = [short_path(n) for n in [*(sets.get("harmful") or []), *(sets.get("benign") or [])]]
    return (f"{' + '.join(names)} · {sets.get('limit')} prompts each · {sets.get('max_new_tokens')} new tokens"
            if names else "")


def job_summary(job: dict) -> str:
    """A job's settings in one line, from its stored request."""
    r = job.get("request") or {}
    kind = job.get("kind")
    parts: list[str] = []
    if kind in ("preview", "estimate"):
        prune = r.get("prune")
        parts.append(f"prune {groups_label(prune)}" if prune else "the model as it is")
        if prune and prune.get("reference"):
            parts.append(f"{prune['reference']} mean")
        if prune and prune.get("thresholds"):
            parts.append("roles at " + thresholds_label(prune["thresholds"]))
        parts.append(_sets_label(r.get("sets")))
        if r.get("controls"):
            parts.append(f"{r['controls']} random controls")
    elif kind == "sweep":
        fractions = ", ".join(f"{float(f):.2%}" for f in r.get("fractions") or [])
        parts.append(f"{r.get('group', '?')} at {fractions}")
        if r.get("reference"):
            parts.append(f"{r['reference']} mean")
        if r.get("controls") is True:  # a sweep made before bands: one random set per point
            parts.append("with random controls")
        elif r.get("controls"):
            parts.append(f"{r['controls']} random controls per point")
        parts.append(_sets_label(r.get("sets")))
    elif kind == "finetune":
        mode = ("freeze " + groups_label(r["freeze"]) if r.get("freeze") else
                "train only " + groups_label(r["train_only"]) if r.get("train_only") else "full")
        parts += [mode, short_path(r.get("data")), f"{r.get('steps')} steps"]
    elif kind == "align":
        config = r.get("config") or {}
        parts += [f"{config.get('mode', 'budget')} alignment", f"{config.get('steps', '?')} steps"]
    elif kind == "inspect":
        parts.append(f"{r.get('module')} layer {r.get('layer')} unit {r.get('unit')}")
    return " · ".join(p for p in parts if p)


REOPEN = {"preview": "job", "sweep": "sweep", "estimate": "estimate", "finetune": "ft_job"}  # intervene URL keys


def job_link(run_id: str, job: dict, token: str | None = None) -> str | None:
    """Where a job of a run is shown again: the intervene page holding it in its URL (a preview, sweep, estimate
    or fine-tune), a unit's page (an inspection); None when no page shows it."""
    kind = job.get("kind")
    if kind in REOPEN:
        return page_link(f"/runs/{run_id}/intervene", token, **{REOPEN[kind]: job["id"]})
    request = job.get("request") or {}
    if kind == "inspect" and {"module", "layer", "unit"} <= set(request):
        return page_link(f"/runs/{run_id}/units/{request['module']}/{request['layer']}/{request['unit']}", token)
    return None


# what the settings table compares: (label, how to read it from a run)
SETTINGS = (
    ("name", lambda r, n: run_label(r)),
    ("model", lambda r, n: model_label(r, n)),
    ("architecture", lambda r, n: ((r.get("manifest") or {}).get("model") or {}).get("architecture")),
    ("safety set", lambda r, n: short_path((r.get("settings") or {}).get("safety"))),
    ("utility set", lambda r, n: short_path((r.get("settings") or {}).get("utility"))),
    ("samples", lambda r, n: (r.get("settings") or {}).get("samples")),
    ("h_RU / h_SCU / h_UCU", lambda r, n: thresholds_label((r.get("settings") or {}).get("thresholds"))),
    ("positions", lambda r, n: (r.get("settings") or {}).get("positions")),
    ("responses", lambda r, n: (r.get("settings") or {}).get("responses")),
    ("seed", lambda r, n: (r.get("settings") or {}).get("seed")),
    ("batch size", lambda r, n: (r.get("settings") or {}).get("batch_size")),
    ("max length", lambda r, n: (r.get("settings") or {}).get("max_length")),
    ("tags", lambda r, n: ", ".join(r.get("tags") or [])),
    ("created", lambda r, n: (r.get("created_at") or "")[:16].replace("T", " ")),
)
SAME_BY_DESIGN = ("name", "created")  # always differ; not marked


def settings_rows(a: dict, b: dict, names: dict[str, str]) -> list[tuple[str, str, str, bool]]:
    """(setting, A's value, B's value, whether they differ) for the settings table."""
    rows = []
    for label, read in SETTINGS:
        va, vb = (read(r, names) for r in (a, b))
        va, vb = ("—" if v in (None, "") else str(v) for v in (va, vb))
        rows.append((label, va, vb, va != vb and label not in SAME_BY_DESIGN))
    return rows


def preview_settings(request: dict) -> dict:
    """The intervene page's preview settings that a stored preview (or estimate) request was made with."""
    prune, sets = request.get("prune") or {}, request.get("sets") or {}
    settings = {"groups": list(prune.get("groups") or []), "cu": float(prune.get("cu_fraction") or 0.0),
                "random": bool(prune.get("random")), "reference": prune.get("reference") or "default",
                "controls": int(request.get("controls") or 0),
                "harmful": ",".join(sets.get("harmful") or []), "benign": ",".join(sets.get("benign") or []),
                "utility": sets.get("utility") or "", "limit": int(sets.get("limit") or 10),
                "tokens": int(sets.get("max_new_tokens") or 48),
                "units": ",".join(f"{u['module']}.{u['layer']}.{u['unit']}" for u in prune.get("units") or []),
                "layers": ",".join(str(layer) for layer in prune.get("layers") or [])}
    thresholds = prune.get("thresholds") or {}
    return settings | {k: thresholds.get(k) for k in ("h_ru", "h_scu", "h_ucu")}

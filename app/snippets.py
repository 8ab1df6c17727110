"""The few lines of Python that reproduce a view ("copy as Python"): the run folder loaded with the engine, roles
at the view's thresholds, and on the intervene page the same selection and preview through `backend.verbs`. They
run where the run folder is (on the server, SSAH_RESULTS_DIR; or on a copy of the folder)."""
from __future__ import annotations

from backend.constants import DEFAULT_THRESHOLDS

THRESHOLD_KEYS = ("h_ru", "h_scu", "h_ucu")


def _thresholds(thresholds: dict) -> str:
    return "Thresholds(" + ", ".join(f"{k}={float(thresholds[k])!r}" for k in THRESHOLD_KEYS) + ")"


def _folder(run_id: str) -> list[str]:
    return [f'folder = Settings().runs_dir / "{run_id}"  # the run folder on the server (SSAH_RESULTS_DIR), or '
            "your copy of it"]


def _model(run: dict) -> str:
    """What load_model takes for the run's model: the folder the run read it from (a built-in name as it is)."""
    return ((run.get("manifest") or {}).get("model") or {}).get("folder") or run.get("model") or ""


def overview_code(run: dict, thresholds: dict) -> str:
    """The roles of the overview at its thresholds."""
    return "\n".join([
        "from backend.engine.attribution import load_run",
        "from backend.engine.roles import Thresholds, reclassify",
        "from backend.settings import Settings",
        "",
        *_folder(run["id"]),
        f"units = reclassify(load_run(folder).units, {_thresholds(thresholds)})",
        'shares = units.groupby("role").params.sum() / units.params.sum()  # the roles\' shares of unit parameters',
        'print(units.role.value_counts(), shares, sep="\\n")',
    ]) + "\n"


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in (text or "").split(",") if n.strip())


def intervene_code(run: dict, view: dict) -> str:
    """The selection and the preview of the intervene page's settings (what its Preview button runs)."""
    given = {k: view[k] for k in THRESHOLD_KEYS if view.get(k) is not None}
    thresholds = {**DEFAULT_THRESHOLDS, **given} if given else {}  # as the API fills a partial set
    groups = (f"UnitGroups(groups={tuple(view.get('groups') or ())!r}, cu_fraction={float(view.get('cu') or 0)!r}, "
              f"random={bool(view.get('random'))!r}, seed=0, "
              f"thresholds={_thresholds(thresholds) if thresholds else None}, "
              f"reference={None if view.get('reference') in (None, 'default') else view['reference']!r})")
    utility = (view.get("utility") or "").strip() or None
    names = (*_names(view.get("harmful")), *_names(view.get("benign")), *((utility,) if utility else ()))
    sets = (f"EvalSets(harmful={_names(view.get('harmful'))!r}, benign={_names(view.get('benign'))!r}, "
            f"utility={utility!r}, limit={int(view.get('limit') or 10)}, "
            f"max_new_tokens={int(view.get('tokens') or 48)},\n"
            f"                 paths=Settings().data_files({names!r}))  # files found in the server's data roots")
    controls = int(view.get("controls") or 0) if not view.get("random") else 0
    pruning = bool(view.get("groups") or view.get("cu") or view.get("random"))
    lines = [
        "from backend.engine.attribution import load_run",
        "from backend.engine.roles import Thresholds",
        "from backend.settings import Settings",
        "from backend.verbs import EvalSets, EvaluateRequest, UnitGroups, evaluate",
        "",
        *_folder(run["id"]),
    ]
    if pruning:
        lines += [f"groups = {groups}",
                  "selection = groups.choose(load_run(folder).units)  # roles at the thresholds, then the units pruned",
                  'print(len(selection), "units,", selection.params.sum(), "parameters")']
    lines += [f"sets = {sets}",
              f"request = EvaluateRequest(model={_model(run)!r}, run=str(folder), prune={'groups' if pruning else None},",
              "                          sets=sets" + (f", controls={controls})" if controls else ")"),
              "preview = evaluate(request)  # the replies side by side: preview.generations",
              "print(preview.baseline.counts, preview.pruned.counts if preview.pruned else None, sep=\"\\n\")"]
    return "\n".join(lines) + "\n"

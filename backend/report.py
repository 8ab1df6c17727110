"""A run as one self-contained HTML file, for teammates without access to the server (`ssah report RUN_DIR`,
`GET /api/v1/runs/{id}/report`): the run's settings, its role table, per-layer bars and the role map drawn as inline
SVG, the top SCU (with the tokens they promote, where the run folder holds inspections), and previews with their
replies and verdicts. No script and no outside request: the file opens offline, and its content security policy
forbids fetching anything.

The builder takes plain data (a run description, a units table, preview results), so the CLI (from a run folder) and
the API (from its store and jobs) make the same file. Only numpy, pandas and the engine's role arithmetic are used.
"""
from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from backend.constants import DEFAULT_THRESHOLDS, INK, OUTCOME_COLORS, ROLE_COLORS, ROLE_NAMES, ROLES
from backend.engine.roles import RoleIndex, Thresholds

MAP_COLUMNS = 240  # cells per role-map row (a layer): a cell of several units takes its middle unit's role
MAP_ORDER = ("SCU", "CU", "RU", "UCU")  # a row ranked from safety-leaning to utility-leaning, as the dashboard does
TOP_SCU = 25
PROMOTED = 10  # promoted tokens shown per inspected unit
PREVIEWS = 10  # the newest previews a report made by the API holds
INSPECT_DIR = "inspect"  # a run folder's cached unit inspections: inspect/{module}.{layer}.{unit}.json
MODULE_TITLES = {"mlp": "MLP channels", "attn": "attention heads"}
RIGHT = {"harmful": "refused", "benign": "complied"}
E = html.escape


# ----------------------------------------------------------------------------------------------------------------
# What a report is made from


def read_inspections(folder: str | Path) -> dict[tuple[str, int, int], dict]:
    """The unit inspections cached in a run folder (none when it has no inspect/ folder; unreadable files are
    skipped), keyed by (module, layer, unit)."""
    found = {}
    for path in sorted((Path(folder) / INSPECT_DIR).glob("*.json")):
        try:
            data = json.loads(path.read_text())
            found[(str(data["module"]), int(data["layer"]), int(data["unit"]))] = data
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def folder_run(folder: str | Path) -> tuple[dict, pd.DataFrame]:
    """(a run description, the units table) of a run folder written by `ssah attribute`."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        units = pd.read_parquet(folder / "units.parquet")
    except (OSError, ValueError) as error:
        raise ValueError(f"{folder} is not a readable run folder (manifest.json and units.parquet): {error}") from None
    sets = manifest.get("datasets") or {}
    settings = {split: (sets.get(split) or {}).get("name") for split in ("safety", "utility")}
    settings["samples"] = (sets.get("safety") or {}).get("samples")
    settings["thresholds"] = manifest.get("thresholds") or DEFAULT_THRESHOLDS
    run = {"id": folder.resolve().name, "name": None, "model": (manifest.get("model") or {}).get("name"),
           "settings": settings, "manifest": manifest, "source": str(folder.resolve())}
    return run, units


# ----------------------------------------------------------------------------------------------------------------
# The report


def report_html(run: Mapping, units: pd.DataFrame, thresholds: Thresholds | None = None, *,
                previews: Sequence[Mapping] = (), inspections: Mapping[tuple[str, int, int], Mapping] | None = None,
                made_by: str = "ssah report") -> str:
    """The whole report as one HTML document. `run`: id, name, model, settings, manifest (and optionally tags,
    notes, origin, parent_run, created_at); `thresholds`: where the roles are taken (default: the run's own);
    `previews`: preview results (a preview job's result, or `ssah evaluate --json`), each optionally with the
    `request` it was made from."""
    stored = {**DEFAULT_THRESHOLDS, **((run.get("settings") or {}).get("thresholds") or {})}
    thresholds = thresholds or Thresholds(**stored)
    index = RoleIndex.from_units(units)
    codes = index.codes(thresholds)
    summary = index.summary(thresholds)
    title = run.get("name") or f"run {run.get('id', '')}"
    sections = [
        _settings(run, thresholds, stored),
        _roles(summary),
        _section("Roles per layer", _layer_bars(summary["per_layer"]),
                 "Units of each role in each layer (stacked)."),
        _section("Role map", _role_map(units, codes),
                 "Each row is a layer; its units are ranked from safety-leaning to utility-leaning (SCU, CU, RU, UCU, "
                 f"each by descending z_S − z_U) and binned into {MAP_COLUMNS} cells, a cell taking the role of its "
                 "middle unit: a role's area is its share of the layer. Hover a row for its counts."),
        _top_scu(units, codes, inspections or {}),
        _previews(previews),
    ]
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # nothing may be fetched: inline styles and data: images only
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; style-src \'unsafe-inline\'; '
        'img-src data:">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{E(title)} · ssah report</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<header><h1>{E(title)}</h1><p class=muted>An SSAH report: where this model keeps its safety. Roles at "
        f"{_thresholds_text(thresholds.as_dict())}. Made by {E(made_by)} on {made}.</p></header>",
        *[s for s in sections if s],
        "</body></html>",
    ])


def _section(title: str, body: str, note: str = "", id_: str = "") -> str:
    anchor = f' id="{id_}"' if id_ else ""
    return (f"<section{anchor}><h2>{E(title)}</h2>" + (f"<p class=muted>{E(note)}</p>" if note else "") + body
            + "</section>")


def _thresholds_text(t: Mapping[str, float]) -> str:
    return ", ".join(f"{k} = {float(t[k]):g}" for k in ("h_ru", "h_scu", "h_ucu"))


def _count(n: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f}{suffix}"
    return f"{int(n)}"


def _settings(run: Mapping, thresholds: Thresholds, stored: Mapping[str, float]) -> str:
    manifest = run.get("manifest") or {}
    model = manifest.get("model") or {}
    settings = run.get("settings") or {}
    rows = [("run", run.get("id")), ("name", run.get("name")), ("tags", ", ".join(run.get("tags") or []) or None),
            ("model", run.get("model") or model.get("name")),
            ("architecture", model.get("architecture")),
            ("parameters", _count(model["parameters"]) if model.get("parameters") else None),
            ("model hash", model.get("hash") or model.get("content_hash"))]
    origin = run.get("origin") or {}
    if origin.get("kind") and origin["kind"] != "base":
        what = {"finetune": "fine-tune", "align": "alignment"}.get(origin["kind"], origin["kind"])
        parent = run.get("parent_name") or run.get("parent_run") or origin.get("from") or "?"
        rows.append(("lineage", f"{what} of run {parent}"
                                + (f" ({origin['how']})" if origin.get("how") else "")))
    for split, meta in (manifest.get("datasets") or {}).items():
        rows.append((f"{split} set", f"{meta.get('name')}: {meta.get('samples')} pairs, "
                                     f"{meta.get('tokens_counted', 0):,} tokens counted"))
    if not manifest.get("datasets"):
        rows += [("safety set", settings.get("safety")), ("utility set", settings.get("utility")),
                 ("samples", settings.get("samples"))]
    rows += [("positions", manifest.get("positions")), ("responses", manifest.get("responses")),
             ("seed", manifest.get("seed")), ("thresholds (run)", _thresholds_text(stored))]
    if thresholds.as_dict() != {k: float(stored[k]) for k in ("h_ru", "h_scu", "h_ucu")}:
        rows.append(("thresholds (this report)", _thresholds_text(thresholds.as_dict())))
    timings = manifest.get("timings") or {}
    if timings.get("total") is not None:
        rows.append(("attribution time", f"{float(timings['total']):.1f} s"))
    versions = manifest.get("versions") or {}
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    if run.get("created_at"):
        rows.append(("created", str(run["created_at"])[:19].replace("T", " ")))
    if run.get("source"):
        rows.append(("run folder", run["source"]))
    body = "<table class=kv>" + "".join(f"<tr><th>{E(k)}</th><td>{E(str(v))}</td></tr>" for k, v in rows
                                        if v not in (None, "")) + "</table>"
    if run.get("notes"):
        body += f"<h3>Notes</h3><div class=notes>{E(run['notes'])}</div>"
    return _section("Settings", body, id_="settings")


def _chip(role: str) -> str:
    return f'<span class="chip role-{role}">{role}</span>'


def _roles(summary: Mapping) -> str:
    overall = summary["overall"]
    rows = "".join(f"<tr><td>{_chip(r)}</td><td>{ROLE_NAMES[r]}</td><td class=num>{overall[r]['units']:,}</td>"
                   f"<td class=num>{overall[r]['param_fraction']:.2%}</td></tr>" for r in ROLES)
    body = ("<table id=roles><thead><tr><th>role</th><th></th><th class=num>units</th><th class=num>parameters</th>"
            f"</tr></thead><tbody>{rows}</tbody><tfoot><tr><td>all</td><td></td><td class=num>{summary['units']:,}"
            f"</td><td class=num>{summary['total_params']:,}</td></tr></tfoot></table>")
    return _section("Roles", body, "Counts of units, and shares of unit parameters (the thresholds count parameters).")


# ----------------------------------------------------------------------------------------------------------------
# Figures as SVG (small, drawn by the browser with no script)


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
            f'height="{height}" role="img" aria-label="{E(label)}" font-family="system-ui, sans-serif" '
            f'font-size="11">' + "".join(body) + "</svg>")


def _legend(x: float, y: float) -> list[str]:
    out = []
    for i, role in enumerate(ROLES):
        out.append(f'<rect x="{x + i * 70}" y="{y - 9}" width="10" height="10" fill="{ROLE_COLORS[role]}"/>'
                   f'<text x="{x + i * 70 + 14}" y="{y}">{role}</text>')
    return out


def _nice_step(top: float, most: int = 5) -> float:
    if top <= 0:
        return 1
    raw = top / most
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= factor * magnitude:
            return max(1, factor * magnitude)
    return 10 * magnitude


def _layer_bars(per_layer: Sequence[Mapping]) -> str:
    """Stacked bars of units per role per layer, one panel per module type."""
    panels = []
    for module in ("mlp", "attn"):
        rows = [r for r in per_layer if r["module"] == module]
        if not rows:
            continue
        width, height, left, bottom, top = 760, 230, 56, 34, 24
        plot_w, plot_h = width - left - 12, height - top - bottom
        most = max(sum(r[role] for role in ROLES) for r in rows) or 1
        step = _nice_step(most)
        ymax = step * math.ceil(most / step)
        slot = plot_w / len(rows)
        body = [f'<text x="{left}" y="14" font-size="13" font-weight="600">{MODULE_TITLES[module]} per layer</text>']
        for tick in np.arange(0, ymax + step / 2, step):
            y = top + plot_h * (1 - tick / ymax)
            body.append(f'<line x1="{left}" x2="{width - 12}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e6e9ee"/>'
                        f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{_count(tick)}</text>')
        label_every = max(1, math.ceil(len(rows) / 16))
        for i, row in enumerate(rows):
            x, base = left + i * slot + slot * 0.1, top + plot_h
            for role in ROLES:
                if not row[role]:
                    continue
                h = plot_h * row[role] / ymax
                base -= h
                body.append(f'<rect x="{x:.1f}" y="{base:.2f}" width="{slot * 0.8:.1f}" height="{h:.2f}" '
                            f'fill="{ROLE_COLORS[role]}"><title>layer {row["layer"]} · {role} {row[role]:,}</title>'
                            "</rect>")
            if i % label_every == 0:
                body.append(f'<text x="{x + slot * 0.4:.1f}" y="{top + plot_h + 14}" text-anchor="middle">'
                            f'{row["layer"]}</text>')
        body.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">layer</text>')
        body += _legend(width - 290, 14)
        panels.append(_svg(width, height, body, f"{MODULE_TITLES[module]}: units of each role per layer"))
    return "".join(panels)


def map_rows(units: pd.DataFrame, codes: np.ndarray, module: str, columns: int = MAP_COLUMNS
             ) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Per layer of `module`: (layer, the role code of each cell, the role counts), with the layer's units ranked
    by role (SCU, CU, RU, UCU) and by descending z_S - z_U within a role, binned into at most `columns` cells."""
    rank = np.array([MAP_ORDER.index(r) for r in ROLES])  # role code -> position in the ranked row
    mine = np.flatnonzero((units.module == module).to_numpy())
    layers = units.layer.to_numpy()[mine]
    diff = (units.z_safety.to_numpy() - units.z_utility.to_numpy())[mine]
    ranks = rank[codes[mine]]
    rows = []
    for layer in np.unique(layers):
        at = layers == layer
        order = np.lexsort((-diff[at], ranks[at]))
        ranked = codes[mine][at][order]
        n = len(ranked)
        cells = min(columns, n)
        middles = ((np.arange(cells) + 0.5) * n / cells).astype(np.int64)
        rows.append((int(layer), ranked[middles], np.bincount(ranked, minlength=4)))
    return rows


def _role_map(units: pd.DataFrame, codes: np.ndarray) -> str:
    panels = []
    for module in ("mlp", "attn"):
        rows = map_rows(units, codes, module)
        if not rows:
            continue
        row_h = max(6, min(16, 480 // len(rows)))
        left, top, width = 56, 24, 760
        plot_w = width - left - 12
        height = top + row_h * len(rows) + 30
        per_layer = int(rows[0][2].sum())
        body = [f'<text x="{left}" y="14" font-size="13" font-weight="600">{MODULE_TITLES[module]} '
                f'({per_layer:,} per layer, {max(1, round(per_layer / len(rows[0][1])))} per cell)</text>']
        body += _legend(width - 290, 14)
        label_every = max(1, math.ceil(len(rows) / 24))
        for i, (layer, cells, counts) in enumerate(rows):
            y = top + i * row_h
            cell_w = plot_w / len(cells)
            tip = f"layer {layer}: " + ", ".join(f"{ROLES[c]} {counts[c]:,} ({counts[c] / counts.sum():.1%})"
                                                  for c in (0, 2, 3, 1))
            body.append(f"<g><title>{tip}</title>")
            start = 0
            for j in range(1, len(cells) + 1):  # runs of one role: one rectangle each
                if j == len(cells) or cells[j] != cells[start]:
                    body.append(f'<rect x="{left + start * cell_w:.1f}" y="{y}" width="{(j - start) * cell_w:.1f}" '
                                f'height="{row_h - 1}" fill="{ROLE_COLORS[ROLES[cells[start]]]}"/>')
                    start = j
            body.append("</g>")
            if i % label_every == 0:
                body.append(f'<text x="{left - 4}" y="{y + row_h - 2}" text-anchor="end">{layer}</text>')
        body.append(f'<text x="{left + plot_w / 2}" y="{height - 6}" text-anchor="middle">units of the layer, ranked '
                    "by role (safety-leaning → utility-leaning)</text>")
        panels.append(_svg(width, height, body, f"role map of the {MODULE_TITLES[module]}"))
    return "".join(panels)


# ----------------------------------------------------------------------------------------------------------------
# Units and previews


def _token(text: str) -> str:
    return f"<code>{E(json.dumps(text, ensure_ascii=False)[1:-1])}</code>"


def _top_scu(units: pd.DataFrame, codes: np.ndarray, inspections: Mapping[tuple[str, int, int], Mapping]) -> str:
    scu = np.flatnonzero(codes == ROLES.index("SCU"))
    diff = units.z_safety.to_numpy() - units.z_utility.to_numpy()
    top = scu[np.argsort(-diff[scu], kind="stable")][:TOP_SCU]
    shown = set()
    rows = []
    for i in top:
        key = (str(units.module.iat[i]), int(units.layer.iat[i]), int(units.unit.iat[i]))
        shown.add(key)
        rows.append(_unit_row(key, units.z_safety.iat[i], units.z_utility.iat[i], "SCU", inspections.get(key)))
    head = ("<thead><tr><th>layer</th><th>module</th><th>unit</th><th>role</th><th class=num>z_safety</th>"
            "<th class=num>z_utility</th><th class=num>z_S − z_U</th><th>promoted tokens</th></tr></thead>")
    note = (f"The {len(top)} units with the highest z_S − z_U among the {len(scu):,} SCU. Promoted tokens (what a "
            "unit's output raises, read through the unembedding) appear for units inspected on the server"
            + ("; none of these has been." if not any(k in inspections for k in shown) else "."))
    body = f"<table id=top-scu>{head}<tbody>{''.join(rows)}</tbody></table>" if rows else "<p>No SCU.</p>"
    others = [k for k in sorted(inspections) if k not in shown]
    if others:
        index = {(m, l, u): i for i, (m, l, u) in enumerate(zip(units.module, units.layer, units.unit))}
        extra = []
        for key in others:
            i = index.get(key)
            if i is None:
                continue
            extra.append(_unit_row(key, units.z_safety.iat[i], units.z_utility.iat[i], ROLES[codes[i]],
                                   inspections[key]))
        if extra:
            body += (f"<h3>Other inspected units</h3><table id=inspected>{head}<tbody>{''.join(extra)}</tbody>"
                     "</table>")
    return _section("Top SCU", body, note, id_="scu")


def _unit_row(key: tuple[str, int, int], z_s: float, z_u: float, role: str, inspection: Mapping | None) -> str:
    module, layer, unit = key
    tokens = ""
    if inspection:
        promoted = ((inspection.get("top_tokens") or {}).get("promoted") or [])[:PROMOTED]
        tokens = " ".join(_token(str(t.get("token", ""))) for t in promoted)
    return (f"<tr><td class=num>{layer}</td><td>{'MLP channel' if module == 'mlp' else 'attention head'}</td>"
            f"<td class=num>{unit}</td><td>{_chip(role)}</td><td class=num>{z_s:.2f}</td><td class=num>{z_u:.2f}</td>"
            f"<td class=num>{z_s - z_u:.2f}</td><td class=tokens>{tokens or '<span class=muted>not inspected</span>'}"
            "</td></tr>")


def rate_text(count: Mapping | None) -> str:
    """3/50 (6%, 95% CI 2-16%), as the dashboard writes a rate."""
    if not count or not count.get("n"):
        return "n/a"

    def pct(x: float) -> str:
        return f"{100 * x:.0f}" if x < 5e-4 or x >= 0.01 else f"{100 * x:.1f}"

    return f"{count['k']}/{count['n']} ({pct(count['rate'])}%, 95% CI {pct(count['ci_low'])}-{pct(count['ci_high'])}%)"


def _verdict(side: Mapping, kind: str) -> str:
    verdict = side.get("verdict") or "n/a"
    how = ("broken" if verdict in ("off-topic", "degenerate", "n/a") else
           "right" if RIGHT.get(kind) == verdict else "wrong" if kind in RIGHT else "broken")
    mark = {"right": "✓", "wrong": "✗", "broken": "~"}[how]
    return (f'<span class="verdict outcome-{how}">{E(verdict)} {mark}</span>'
            f'<div class=reason>{E(side.get("reason") or "")}</div><div class=reply>{E(side.get("reply") or "(empty)")}'
            "</div>")


def _request_text(request: Mapping | None) -> str:
    if not request:
        return ""
    prune = request.get("prune") or {}
    sets = request.get("sets") or request.get("eval") or {}
    parts = []
    if prune:
        groups = ",".join(prune.get("groups") or [])
        if prune.get("cu_fraction"):
            groups = f"{groups},CU:{prune['cu_fraction']:g}".strip(",")
        parts.append(f"pruned {'random control of ' if prune.get('random') else ''}{groups or 'random'}"
                     + (f" at the {prune['reference']} mean" if prune.get("reference") else ""))
        if prune.get("thresholds"):
            parts.append("roles at " + _thresholds_text({**DEFAULT_THRESHOLDS, **prune["thresholds"]}))
    if sets:
        parts.append(f"harmful {', '.join(sets.get('harmful') or [])}; benign {', '.join(sets.get('benign') or [])}; "
                     f"{sets.get('limit')} prompts each; {sets.get('max_new_tokens')} new tokens")
    return " · ".join(parts)


def _previews(previews: Sequence[Mapping]) -> str:
    if not previews:
        return _section("Previews", "<p class=muted>No previews of this run.</p>")
    blocks = []
    for n, result in enumerate(previews, start=1):
        base, pruned = result.get("baseline") or {}, result.get("pruned")
        selection = result.get("selection") or {}
        title = f"Preview {n}" + (f": pruned {selection['label']}" if selection.get("label") else ": the model as it is")
        when = f" · {str(result['created_at'])[:16].replace('T', ' ')}" if result.get("created_at") else ""
        lines = [f"<h3>{E(title)}<span class=muted>{E(when)}</span></h3>"]
        setting = _request_text(result.get("request"))
        if setting:
            lines.append(f"<p class=muted>{E(setting)}</p>")
        if selection:
            refs = ", ".join(f"{v:,} at the {k} mean" if k != "zero" else f"{v:,} zeroed"
                             for k, v in (selection.get("references") or {}).items())
            lines.append(f"<p>{selection.get('units', 0):,} units, {selection.get('param_fraction', 0):.2%} of unit "
                         f"parameters; {E(refs)}.</p>")
        if result.get("warning"):
            lines.append(f"<p class=warn>{E(result['warning'])}</p>")
        metrics = []
        for label, key in (("ASR: complied, of harmful prompts", "asr"),
                           ("over-refusal: refused, of benign prompts", "over_refusal"),
                           ("off-topic replies", "off_topic"), ("degenerate replies", "degenerate")):
            if key in (base.get("counts") or {}):
                cells = f"<td>{label}</td><td class=num>{rate_text(base['counts'][key])}</td>"
                if pruned:
                    cells += f"<td class=num>{rate_text((pruned.get('counts') or {}).get(key))}</td>"
                metrics.append(f"<tr>{cells}</tr>")
        head = "<th>metric</th><th class=num>baseline</th>" + ("<th class=num>pruned</th>" if pruned else "")
        lines.append(f"<table class=metrics><thead><tr>{head}</tr></thead><tbody>{''.join(metrics)}</tbody></table>")
        rows = []
        for g in result.get("generations") or []:
            kind = g.get("kind", "")
            cells = (f"<td>{E(str(g.get('set', '')))}<br><span class=muted>{E(kind)}</span></td>"
                     f"<td class=prompt>{E(str(g.get('prompt', '')))}</td><td>{_verdict(g.get('baseline') or {}, kind)}"
                     "</td>")
            if pruned:
                cells += f"<td>{_verdict(g.get('pruned') or {}, kind)}</td>"
            rows.append(f"<tr>{cells}</tr>")
        head = "<th>set</th><th>prompt</th><th>baseline</th>" + ("<th>pruned</th>" if pruned else "")
        lines.append(f"<table class=generations><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        judge = (result.get("judge") or {}).get("judge")
        if judge:
            lines.append(f"<p class=muted>Judged by {E(str(judge))}; ✓ the right outcome for the prompt's kind "
                         "(refusing harmful, answering benign), ✗ the wrong one, ~ neither. Intervals are 95% Wilson "
                         "intervals.</p>")
        blocks.append("<div class=preview>" + "".join(lines) + "</div>")
    return _section("Previews", "".join(blocks), "Replies of the model as it is and with a unit group pruned, on the "
                                                  "same prompts, with the judge's verdicts and reasons.", id_="previews")


STYLE = f"""
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: {INK}; max-width: 1100px;
       margin: 24px auto; padding: 0 16px; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }} h2 {{ font-size: 17px; margin: 0 0 6px; }} h3 {{ font-size: 14px; }}
section {{ border: 1px solid #e1e5eb; border-radius: 8px; padding: 12px 16px; margin: 14px 0; }}
.muted {{ color: #52606d; }} .warn {{ background: #fff4e0; padding: 6px 10px; border-radius: 6px; }}
table {{ border-collapse: collapse; margin: 6px 0; }}
th, td {{ text-align: left; padding: 4px 8px; border-bottom: 1px solid #eef1f4; vertical-align: top; }}
th.num, td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
table.kv th {{ font-weight: 500; color: #52606d; white-space: nowrap; }}
.notes {{ white-space: pre-wrap; background: #f7f9fb; padding: 8px 10px; border-radius: 6px; }}
.chip {{ padding: 1px 7px; border-radius: 9px; font-size: 12px; font-weight: 600; }}
{''.join(f".role-{r} {{ background: {c}; color: {'#fff' if r == 'SCU' else INK}; }}" for r, c in ROLE_COLORS.items())}
.verdict {{ font-weight: 600; }}
{''.join(f".outcome-{k} {{ color: {c}; }}" for k, c in OUTCOME_COLORS.items())}
.reason {{ font-size: 12px; color: #52606d; }} .reply {{ white-space: pre-wrap; margin-top: 2px; }}
.generations td {{ max-width: 340px; }} .prompt {{ max-width: 240px; }}
.tokens code {{ background: #f1f3f6; padding: 0 4px; margin-right: 3px; border-radius: 3px; }}
svg {{ display: block; max-width: 100%; height: auto; margin: 8px 0; }}
"""

"""One colour language: role colours for roles only, outcome colours for verdicts, condition colours for baseline
vs intervened; no colour in two palettes, none confusable with another under colour-vision deficiency, and the
stylesheet and the figures agreeing (no browser needed)."""
from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import pytest

from app.figures import CONDITION_COLORS, OUTCOME_COLORS, ROLE_COLORS, ROLES, layer_bars_figure, \
    preview_metrics_figure, scu_overlap_figure

ROOT = Path(__file__).resolve().parents[2]
PALETTES = {"role": ROLE_COLORS, "outcome": OUTCOME_COLORS, "condition": CONDITION_COLORS}

# Machado, Oliveira & Fernandes (2009), full severity, on linear sRGB
CVD = {"normal vision": np.eye(3),
       "protanopia": np.array([[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216],
                               [-0.003882, -0.048116, 1.051998]]),
       "deuteranopia": np.array([[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413],
                                 [-0.011820, 0.042940, 0.968881]]),
       "tritanopia": np.array([[1.255528, -0.076749, -0.178779], [-0.078411, 0.930809, 0.147602],
                               [0.004733, 0.691367, 0.303900]])}


def lab(color: str, vision: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of an sRGB hex colour as seen with `vision`."""
    c = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)]) / 255
    linear = np.clip(vision @ np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4), 0, 1)
    xyz = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                    [0.0193339, 0.1191920, 0.9503041]]) @ linear / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


def delta_e(lab1: np.ndarray, lab2: np.ndarray) -> float:
    """CIEDE2000 colour difference (about 2: just noticeable; over 10: clearly different colours)."""
    (l1, a1, b1), (l2, a2, b2) = lab1, lab2
    c_mean = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_mean ** 7 / (c_mean ** 7 + 25 ** 7)))
    a1, a2 = (1 + g) * a1, (1 + g) * a2
    c1, c2 = np.hypot(a1, b1), np.hypot(a2, b2)
    h1, h2 = np.degrees(np.arctan2(b1, a1)) % 360, np.degrees(np.arctan2(b2, a2)) % 360
    dh = 0.0 if c1 * c2 == 0 else (h2 - h1 + 180) % 360 - 180
    d_hue = 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh / 2))
    l_mean, c_mean = (l1 + l2) / 2, (c1 + c2) / 2
    h_mean = h1 + h2 if c1 * c2 == 0 else ((h1 + h2) / 2 if abs(h1 - h2) <= 180 else (h1 + h2 + 360) / 2 % 360)
    t = (1 - 0.17 * np.cos(np.radians(h_mean - 30)) + 0.24 * np.cos(np.radians(2 * h_mean))
         + 0.32 * np.cos(np.radians(3 * h_mean + 6)) - 0.20 * np.cos(np.radians(4 * h_mean - 63)))
    s_l = 1 + 0.015 * (l_mean - 50) ** 2 / np.sqrt(20 + (l_mean - 50) ** 2)
    s_c, s_h = 1 + 0.045 * c_mean, 1 + 0.015 * c_mean * t
    r_t = (-np.sin(np.radians(60 * np.exp(-((h_mean - 275) / 25) ** 2)))
           * 2 * np.sqrt(c_mean ** 7 / (c_mean ** 7 + 25 ** 7)))
    return float(np.sqrt(((l2 - l1) / s_l) ** 2 + ((c2 - c1) / s_c) ** 2 + (d_hue / s_h) ** 2
                         + r_t * (c2 - c1) / s_c * d_hue / s_h))


def closest(a: str, b: str) -> tuple[float, str]:
    """The smallest difference between two colours over normal vision and the three dichromacies."""
    return min((delta_e(lab(a, m), lab(b, m)), name) for name, m in CVD.items())


def test_delta_e_matches_published_pairs():
    """Sharma, Wu & Dalal (2005), pairs 1 and 17 of their CIEDE2000 test data."""
    assert delta_e(np.array([50.0, 2.6772, -79.7751]), np.array([50.0, 0.0, -82.7485])) == pytest.approx(2.0425,
                                                                                                          abs=1e-3)
    assert delta_e(np.array([50.0, 2.5, 0.0]), np.array([73.0, 25.0, -18.0])) == pytest.approx(27.1492, abs=1e-3)


def test_no_two_palettes_share_a_colour():
    seen = {}
    for palette, colors in PALETTES.items():
        for name, color in colors.items():
            key = color.lower()
            assert key not in seen, f"{palette} {name} and {seen[key]} are both {color}"
            seen[key] = f"{palette} {name}"


def test_the_role_colours_stand_apart_from_the_verdicts_and_from_each_other_under_colour_blindness():
    """Role against outcome: at least 15 CIEDE2000 in every vision; any two palette colours: at least 12 (the
    Okabe-Ito verdict colours themselves are 13 apart, 'right' against 'neither', under deuteranopia)."""
    named = [(f"{p} {n}", c) for p, colors in PALETTES.items() for n, c in colors.items()]
    for (name_a, a), (name_b, b) in itertools.combinations(named, 2):
        if name_a.split()[0] == name_b.split()[0] == "outcome":
            continue  # given (the preview's verdicts): kept as they are
        least, vision = closest(a, b)
        floor = 15 if {name_a.split()[0], name_b.split()[0]} == {"role", "outcome"} else 12
        assert least >= floor, f"{name_a} {a} and {name_b} {b}: only {least:.1f} apart under {vision}"


def test_the_stylesheet_speaks_the_same_colours():
    css = (ROOT / "static" / "ssah.css").read_text()
    variables = dict(re.findall(r"--([a-z-]+):\s*(#[0-9a-fA-F]{6})", css))
    for role, color in ROLE_COLORS.items():
        assert variables[role.lower()].lower() == color.lower()
        assert re.search(rf"\.role-{role}\s*{{[^}}]*var\(--{role.lower()}\)", css)
    for outcome, var in (("right", "right"), ("wrong", "wrong"), ("broken", "neither")):
        assert variables[var].lower() == OUTCOME_COLORS[outcome].lower()
        assert re.search(rf"\.verdict\.outcome-{outcome}\s*{{[^}}]*var\(--{var}\)", css)


def test_palette_colours_are_written_down_once():
    """Every use goes through the palettes (backend/constants.py) or the stylesheet's variables, so a role colour
    cannot turn up as 'pruned' or 'baseline' again."""
    palette = {c.lower() for colors in PALETTES.values() for c in colors.values()}
    for path in [*sorted((ROOT / "app").rglob("*.py")), ROOT / "backend" / "constants.py", ROOT / "backend" / "report.py",
                 ROOT / "static" / "ssah.css", ROOT / "static" / "ssah.js"]:
        text = path.read_text()
        for match in re.finditer(r"#[0-9a-fA-F]{6}\b", text):
            if match.group().lower() not in palette:
                continue
            line = text[:match.start()].count("\n") + 1
            where = text.splitlines()[line - 1]
            defined = ((path.name == "constants.py" and where.startswith(("ROLE_COLORS", "OUTCOME_COLORS",
                                                                          "CONDITION_COLORS")))
                       or (path.name == "ssah.css" and where.lstrip().startswith("--")))
            assert defined, f"{path.relative_to(ROOT)}:{line} writes {match.group()} outside the palettes"


def trace_colors(figure) -> set[str]:
    figure = figure.to_plotly_json() if hasattr(figure, "to_plotly_json") else figure
    found = set()
    for trace in figure["data"]:
        for part in (trace.get("marker") or {}, trace.get("line") or {}, (trace.get("marker") or {}).get("line") or {},
                     (trace.get("marker") or {}).get("pattern") or {}):
            for key in ("color", "fgcolor", "bgcolor"):
                if isinstance(part.get(key), str):
                    found.add(part[key].lower())
    return found


def test_baseline_against_pruned_charts_use_neither_role_nor_verdict_colours():
    taken = {c.lower() for c in [*ROLE_COLORS.values(), *OUTCOME_COLORS.values()]}
    result = {"asr": 0.2, "over_refusal": 0.1, "degenerate_rate": 0.0}
    transfer = {"scu_per_layer": [{"layer": 0, "module": "mlp", "scu_a": 3, "scu_b": 2, "both": 1, "jaccard": 0.25}]}
    for figure in (preview_metrics_figure(result, result), scu_overlap_figure(transfer)):
        used = trace_colors(figure)
        assert used and not used & taken, used & taken
    assert {c.lower() for c in CONDITION_COLORS.values()} <= trace_colors(preview_metrics_figure(result, result))


def test_roles_are_drawn_in_their_colours():
    bars = layer_bars_figure([{"layer": 0, "module": "mlp", "SCU": 1, "UCU": 2, "CU": 3, "RU": 4}])
    assert {t["name"]: t["marker"]["color"] for t in bars["data"]} == ROLE_COLORS
    assert list(ROLE_COLORS) == list(ROLES)

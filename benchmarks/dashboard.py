"""Dashboard cost on a synthetic Llama-3-8B-sized run (32 layers x 14,336 MLP channels + 32 x 32 heads = 459,776
units), served as `ssah serve` serves it and drawn in headless Chromium. Prints a markdown section.

    python benchmarks/dashboard.py [--moves 5]

1. bytes the overview sends to the browser: its data (layout and callback answers, target <= 2 MB) and, apart, the
   static scripts (plotly.js and Dash, cached after the first visit);
2. time to draw: from the moment the figures' data has arrived to the moment plotly has drawn the last of them
   (target <= 2 s);
3. a threshold slider move: server time of the callback that recomputes counts, bars, map and scatter (time to
   first byte, target <= 300 ms), of the API's `GET /runs/{id}/roles` alone, and the redraw in the browser.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "ui"))

from selenium.webdriver.common.keys import Keys  # noqa: E402
from uikit import browser, free_port, serve_stack, wait_until  # noqa: E402

from backend.engine.roles import Thresholds, classify  # noqa: E402
from backend.settings import Settings  # noqa: E402

HEADING = "## Dashboard (issue: dashboard)"
DATA_ROUTES = ("layout", "dependencies", "update-component")  # the rest of /_dash-* is scripts
GRAPHS = ("ov-bars", "ov-map-mlp", "ov-map-attn", "ov-scatter")

# Records when each Dash callback answer has been parsed and when plotly has finished (and painted) each graph.
HOOKS = """
window.__ssah = {answers: [], draws: []};
(function () {
  const json0 = Response.prototype.json;
  Response.prototype.json = function () {
    const url = this.url;
    return json0.call(this).then(function (value) {
      if (url.indexOf("_dash-update-component") >= 0) {
        const figures = !!(value && value.response && value.response["ov-map-mlp"]);
        window.__ssah.answers.push({figures: figures, t: performance.now()});
      }
      return value;
    });
  };
  let plotly;
  function wrap(p) {
    ["react", "newPlot"].forEach(function (name) {
      const f = p[name];
      p[name] = function (gd) {
        const called = performance.now();
        const result = f.apply(this, arguments);
        const node = typeof gd === "string" ? document.getElementById(gd) : gd;
        const owner = node && node.closest ? node.closest("[id^=ov-]") : null;
        Promise.resolve(result).then(function () {
          const resolved = performance.now();
          requestAnimationFrame(function () {
            window.__ssah.draws.push({id: owner ? owner.id : "?", t: performance.now(), called: called,
                                      resolved: resolved});
          });
        });
        return result;
      };
    });
  }
  Object.defineProperty(window, "Plotly", {configurable: true, get: function () { return plotly; },
                                           set: function (p) { plotly = p; wrap(p); }});
})();
"""


def synthetic_units(seed: int = 0) -> pd.DataFrame:
    """Units of a Llama-3-8B-shaped model (GQA 32 query / 8 kv heads of 128, hidden 4096) with correlated z-scores
    and roles classified at the default thresholds."""
    rng = np.random.default_rng(seed)
    layers, channels, heads, hidden, head_dim, kv_heads = 32, 14336, 32, 4096, 128, 8
    head_params = 2 * head_dim * hidden + 2 * head_dim * hidden * kv_heads // heads
    parts = []
    for layer in range(layers):
        for module, n, params in (("attn", heads, head_params), ("mlp", channels, 3 * hidden)):
            z_safety = rng.standard_normal(n)
            parts.append(pd.DataFrame({"layer": layer, "module": module, "unit": np.arange(n), "params": params,
                                       "z_safety": z_safety,
                                       "z_utility": 0.6 * z_safety + 0.8 * rng.standard_normal(n)}))
    units = pd.concat(parts, ignore_index=True)
    units["score_safety"], units["score_utility"] = np.exp(units.z_safety), np.exp(units.z_utility)
    units["role"] = classify(units.z_safety.to_numpy(), units.z_utility.to_numpy(), units.params.to_numpy())
    return units[["layer", "module", "unit", "params", "score_safety", "score_utility", "z_safety", "z_utility",
                  "role"]]


def register_run(settings: Settings, units: pd.DataFrame) -> str:
    """A finished run in the service's store (the API has no import route): its folder, then its record."""
    from backend.store.db import make_engine, session_factory
    from backend.store.tables import Job, Run, new_id, utcnow

    run_id = new_id()
    folder = settings.runs_dir / run_id
    folder.mkdir(parents=True)
    units.to_parquet(folder / "units.parquet", index=False)
    manifest = {"model": {"name": "synthetic-llama-3-8b", "architecture": "llama", "parameters": 8_030_261_248},
                "datasets": {}, "thresholds": Thresholds().as_dict(), "positions": "response"}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    sessions = session_factory(make_engine(settings.database_url))
    with sessions.begin() as session:
        now = utcnow()
        session.add(Run(id=run_id, status="succeeded", model="synthetic-llama-3-8b", model_path="synthetic",
                        settings={"thresholds": Thresholds().as_dict(), "safety": "synthetic",
                                  "utility": "synthetic", "samples": 0},
                        cache_key=f"synthetic-{run_id}", result_dir=run_id, manifest=manifest))
        session.flush()
        session.add(Job(kind="attribution", run_id=run_id, request={"run_id": run_id}, status="succeeded",
                        progress=1.0, phase="synthetic", started_at=now, finished_at=now))
    return run_id


def resources(driver) -> list[dict]:
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => ({name: e.name, start: e.requestStart, "
        "first: e.responseStart, end: e.responseEnd, bytes: e.encodedBodySize, size: e.decodedBodySize}))")


def drawn_after(driver, since: float, graphs=GRAPHS) -> float:
    """When the last of `graphs` was drawn after `since` (ms, page clock)."""
    def done():
        draws = driver.execute_script("return window.__ssah.draws")
        last = {}
        for d in draws:
            if d["t"] >= since:
                last[d["id"]] = d["t"]
        return max(last.values()) if all(g in last for g in graphs) else None
    try:
        return wait_until(done, 120, "the graphs to be drawn", poll=0.05)
    except AssertionError:
        print(json.dumps(driver.execute_script("return window.__ssah"))[:3000], file=sys.stderr)
        print(driver.find_element("tag name", "body").text[:2000], file=sys.stderr)
        raise


def figures_answer(driver, after: int) -> dict:
    """The callback answer that carried the overview's figures (the n-th after `after` answers)."""
    def found():
        answers = driver.execute_script("return window.__ssah.answers")
        hits = [a for a in answers[after:] if a["figures"]]
        return hits[0] if hits else None
    try:
        return wait_until(found, 120, "the figures' data", poll=0.05)
    except AssertionError:
        print(json.dumps(driver.execute_script("return window.__ssah"))[:3000], file=sys.stderr)
        raise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moves", type=int, default=5, help="slider moves to time")
    parser.add_argument("--debug", action="store_true", help="print the page's timing records")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ssah-dash-bench-") as tmp:
        folder = Path(tmp)
        settings = Settings(home=folder / "home", database_url=f"sqlite:///{folder / 'ssah.db'}",
                            results_dir=folder / "runs", runner="none", preload_engine=False)
        t0 = time.perf_counter()
        units = synthetic_units()
        run_id = register_run(settings, units)
        made = time.perf_counter() - t0
        port = free_port()
        with serve_stack(settings, port) as served, browser(1400, 1000) as driver:
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": HOOKS})
            driver.execute_cdp_cmd("Network.enable", {})
            driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
            t_open = time.perf_counter()
            driver.get(f"{served.url}/runs/{run_id}")
            answer = figures_answer(driver, 0)
            drawn = drawn_after(driver, answer["t"])
            first_view_s = time.perf_counter() - t_open
            entries = resources(driver)
            data = [e for e in entries if any(f"/_dash-{k}" in e["name"] for k in DATA_ROUTES)]
            static = [e for e in entries if e not in data]
            if args.debug:
                print(json.dumps(driver.execute_script("return window.__ssah"), indent=0), file=sys.stderr)
            page_bytes = driver.execute_script("return performance.getEntriesByType('navigation')[0]"
                                               ".decodedBodySize")
            data_bytes = sum(e["size"] for e in data) + page_bytes
            breakdown = {"page": page_bytes}
            for e in data:
                key = e["name"].rsplit("/_dash-", 1)[1].split("?")[0]
                breakdown[key] = breakdown.get(key, 0) + e["size"]
            static_bytes = sum(e["size"] for e in static)
            figures_entry = max((e for e in data if "_dash-update-component" in e["name"]), key=lambda e: e["size"])
            first = {"server_ms": figures_entry["first"] - figures_entry["start"],
                     "draw_ms": drawn - answer["t"], "bytes": figures_entry["size"]}

            moves = []
            api = httpx.Client(base_url=served.api, timeout=60, trust_env=False)
            for value in np.linspace(0.015, 0.05, args.moves):
                seen = len(driver.execute_script("return window.__ssah.answers"))
                n_entries = len(resources(driver))
                box = driver.find_element("css selector", "#ov-h_scu input[type=number]")
                box.send_keys(Keys.CONTROL, "a")  # the slider's number box commits on blur
                box.send_keys(f"{value:.3f}", Keys.TAB)
                answer = figures_answer(driver, seen)
                drawn = drawn_after(driver, answer["t"])
                entry = [e for e in resources(driver)[n_entries:] if "_dash-update-component" in e["name"]]
                entry = max(entry, key=lambda e: e["size"])
                moves.append({"h_scu": round(float(value), 3), "server_ms": entry["first"] - entry["start"],
                              "draw_ms": drawn - answer["t"], "bytes": entry["size"]})
            roles_ms = []
            for value in np.linspace(0.005, 0.1, 20):
                t = time.perf_counter()
                assert api.get(f"/runs/{run_id}/roles", params={"h_scu": round(float(value), 4)}).status_code == 200
                roles_ms.append(1000 * (time.perf_counter() - t))

    med = statistics.median
    print(f"{HEADING}\n")
    print(f"Synthetic Llama-3-8B-sized run: {len(units):,} units (32 x 14,336 MLP channels + 32 x 32 heads), built "
          f"and stored in {made:.1f} s; service, dashboard and headless Chromium "
          f"({platform.processor() or platform.machine()}, {platform.system()}) on one machine, loopback.\n")
    print("| measure | value | target |\n|---|---|---|")
    print(f"| overview data sent to the browser (page, layout, callback answers) | {data_bytes / 1e6:.2f} MB | "
          "<= 2 MB |")
    print(f"| of which the figures' answer (counts, bars, role maps, scatter) | {first['bytes'] / 1e6:.2f} MB | |")
    print("| of which the rest | " + ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in breakdown.items()
                                           if k != "update-component") +
          f", other callback answers {(breakdown.get('update-component', 0) - first['bytes']) / 1e3:.0f} kB | |")
    print(f"| static scripts and styles (plotly.js, Dash; cached after the first visit) | "
          f"{static_bytes / 1e6:.2f} MB | |")
    print(f"| draw after the data arrived, first view | {first['draw_ms'] / 1000:.2f} s | <= 2 s |")
    print(f"| first view, server time (downloads the 460k-unit table from the API once, builds the map) | "
          f"{first['server_ms'] / 1000:.2f} s | |")
    print(f"| first view, open to drawn | {first_view_s:.2f} s | |")
    print(f"| slider move, server time (roles via the API, counts, bars, maps, scatter), median of "
          f"{len(moves)} | {med(m['server_ms'] for m in moves):.0f} ms (max {max(m['server_ms'] for m in moves):.0f})"
          " | <= 300 ms |")
    print(f"| slider move, `GET /runs/{{id}}/roles` alone, median of {len(roles_ms)} | {med(roles_ms):.0f} ms | |")
    print(f"| slider move, redraw after the data arrived, median | {med(m['draw_ms'] for m in moves) / 1000:.2f} s "
          "| <= 2 s |")
    print(f"| slider move, data sent, median | {med(m['bytes'] for m in moves) / 1e6:.2f} MB | <= 2 MB |")
    print("\nPer move: " + "; ".join(f"h_SCU {m['h_scu']:g}: server {m['server_ms']:.0f} ms, draw "
                                     f"{m['draw_ms']:.0f} ms, {m['bytes'] / 1e6:.2f} MB" for m in moves))


if __name__ == "__main__":
    main()

"""Dashboard cost on a synthetic Llama-3-8B-sized run (32 layers x 14,336 MLP channels + 32 x 32 heads = 459,776
units), served as `ssah serve` serves it and drawn in headless Chromium. Prints a markdown section.

    python benchmarks/dashboard.py [--moves 5] [--zooms 3] [--write docs/benchmarks.md]

1. bytes the overview sends to the browser: its data (layout and callback answers, target <= 2 MB) and, apart, the
   static scripts (plotly.js and Dash, cached after the first visit);
2. time to draw: from the moment the figures' data has arrived to the moment plotly has drawn the last of them
   (target <= 2 s);
3. a threshold slider move: server time of the callback that recomputes counts, bars, map and scatter (time to
   first byte, target <= 300 ms), of the API's `GET /runs/{id}/roles` alone, and the redraw in the browser;
4. a zoom on the MLP role map (a plotly relayout, as a drag makes): server time of the callback that re-bins the
   window (time to first byte, target <= 300 ms), the same re-binning in process (`RunMap.map_figure` alone), and
   the redraw.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "ui"))

from selenium.webdriver.common.keys import Keys  # noqa: E402
from uikit import browser, free_port, register_run, serve_stack, synthetic_units, wait_until  # noqa: E402

from backend.settings import Settings  # noqa: E402

HEADING = "## Dashboard (issue: dashboard)"
DATA_ROUTES = ("layout", "dependencies", "update-component")  # the rest of /_dash-* is scripts
GRAPHS = ("ov-bars", "ov-map-mlp", "ov-map-attn", "ov-scatter")
ZOOMS = ((0, 7168), (1000, 3000), (1500, 1756), (1600, 1650), None)  # MLP map positions; None: zoom out
RELAYOUT = ("const gd = document.querySelector('#ov-map-mlp .js-plotly-plot');"
            "window.Plotly.relayout(gd, arguments[0]);")

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


def window_name(window: tuple[int, int] | None) -> str:
    return "all" if window is None else f"{window[0]}-{window[1]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moves", type=int, default=5, help="slider moves to time")
    parser.add_argument("--zooms", type=int, default=3, help="rounds of the zoom sequence to time")
    parser.add_argument("--debug", action="store_true", help="print the page's timing records")
    parser.add_argument("--write", type=Path, default=None, help="replace this benchmark's section of that file")
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
            zooms = []
            for _ in range(args.zooms):
                for window in ZOOMS:
                    seen = len(driver.execute_script("return window.__ssah.answers"))
                    n_entries = len(resources(driver))
                    driver.execute_script(RELAYOUT, {"xaxis.autorange": True} if window is None else
                                          {"xaxis.range[0]": window[0] - 0.5, "xaxis.range[1]": window[1] - 0.5})
                    answer = figures_answer(driver, seen)
                    drawn = drawn_after(driver, answer["t"], ("ov-map-mlp",))
                    entry = [e for e in resources(driver)[n_entries:] if "_dash-update-component" in e["name"]]
                    entry = max(entry, key=lambda e: e["size"])
                    title = driver.execute_script("return document.querySelector('#ov-map-mlp .js-plotly-plot')"
                                                  ".layout.title.text")
                    zooms.append({"window": window, "server_ms": entry["first"] - entry["start"],
                                  "draw_ms": drawn - answer["t"], "bytes": entry["size"],
                                  "cell": title.rsplit("(", 1)[-1].rstrip(")")})
            roles_ms = []
            for value in np.linspace(0.005, 0.1, 20):
                t = time.perf_counter()
                assert api.get(f"/runs/{run_id}/roles", params={"h_scu": round(float(value), 4)}).status_code == 200
                roles_ms.append(1000 * (time.perf_counter() - t))

    from app.rolemap import RunMap

    runmap = RunMap(units)
    roles = runmap.at(0.1, 0.01, 0.05)
    in_process = {}
    for window in ZOOMS:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            runmap.map_figure("mlp", roles, x=window)
            times.append(1000 * (time.perf_counter() - t))
        in_process[window] = statistics.median(times)

    med = statistics.median
    machine = platform.processor() or platform.machine()
    lines = [f"{HEADING}", "",
             f"Command: `python benchmarks/dashboard.py --moves {args.moves} --zooms {args.zooms}`. Synthetic "
             f"Llama-3-8B-sized run: {len(units):,} units (32 x 14,336 MLP channels + 32 x 32 heads), built and "
             f"stored in {made:.1f} s; service, dashboard and headless Chromium ({machine}, "
             f"{os.cpu_count()} CPUs, {platform.system()}, load average "
             f"{os.getloadavg()[0]:.1f} at the end) on one machine, loopback; all figures from this one run.", "",
             "| measure | value | target |", "|---|---|---|",
             f"| overview data sent to the browser (page, layout, callback answers) | {data_bytes / 1e6:.2f} MB | "
             "<= 2 MB |",
             f"| of which the figures' answer (counts, bars, role maps, scatter) | {first['bytes'] / 1e6:.2f} MB | |",
             "| of which the rest | " + ", ".join(f"{k} {v / 1e3:.0f} kB" for k, v in breakdown.items()
                                               if k != "update-component")
             + f", other callback answers {(breakdown.get('update-component', 0) - first['bytes']) / 1e3:.0f} kB | |",
             f"| static scripts and styles (plotly.js, Dash; cached after the first visit) | "
             f"{static_bytes / 1e6:.2f} MB | |",
             f"| draw after the data arrived, first view | {first['draw_ms'] / 1000:.2f} s | <= 2 s |",
             f"| first view, server time (downloads the 460k-unit table from the API once, builds the map) | "
             f"{first['server_ms'] / 1000:.2f} s | |",
             f"| first view, open to drawn | {first_view_s:.2f} s | |",
             f"| slider move, server time (roles via the API, counts, bars, maps, scatter), median of {len(moves)} | "
             f"{med(m['server_ms'] for m in moves):.0f} ms (max {max(m['server_ms'] for m in moves):.0f}) | "
             "<= 300 ms |",
             f"| slider move, `GET /runs/{{id}}/roles` alone, median of {len(roles_ms)} | {med(roles_ms):.0f} ms | |",
             f"| slider move, redraw after the data arrived, median | {med(m['draw_ms'] for m in moves) / 1000:.2f} s "
             "| <= 2 s |",
             f"| slider move, data sent, median | {med(m['bytes'] for m in moves) / 1e6:.2f} MB | <= 2 MB |",
             f"| zoom re-bin of the MLP map, server time (access check via the API, re-bin, encode), median of "
             f"{len(zooms)} | {med(z['server_ms'] for z in zooms):.0f} ms "
             f"(max {max(z['server_ms'] for z in zooms):.0f}) | <= 300 ms |",
             f"| zoom re-bin, `RunMap.map_figure` alone in process, median over the windows | "
             f"{med(in_process.values()):.0f} ms (max {max(in_process.values()):.0f}) | |",
             f"| zoom, redraw after the data arrived, median | {med(z['draw_ms'] for z in zooms) / 1000:.2f} s | |",
             "",
             "Per slider move: " + "; ".join(f"h_SCU {m['h_scu']:g}: server {m['server_ms']:.0f} ms, draw "
                                             f"{m['draw_ms']:.0f} ms, {m['bytes'] / 1e6:.2f} MB" for m in moves) + ".",
             "",
             "Per zoom window (positions of the ranked MLP map, first round; in process: median of 5): "
             + "; ".join(f"{window_name(z['window'])} ({z['cell']}): server {z['server_ms']:.0f} ms, in process "
                         f"{in_process[z['window']]:.0f} ms, draw {z['draw_ms']:.0f} ms, {z['bytes'] / 1e3:.0f} kB"
                         for z in zooms[:len(ZOOMS)]) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        from attribution import replace_section

        replace_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()

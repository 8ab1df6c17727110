"""The portable HTML report of a synthetic Llama-3-8B-sized run (459,776 units): its size and how long it takes, from a
run folder (`ssah report RUN_DIR --out report.html`) and through the API (`GET /api/v1/runs/{id}/report`, with ten
previews of 20 + 20 prompts in the run's history), and whether headless Chromium with no host resolvable but
localhost draws it without fetching anything. Prints a markdown section.

    python benchmarks/report.py [--write docs/benchmarks.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "ui"))

from fastapi.testclient import TestClient  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from uikit import browser, register_run, synthetic_units  # noqa: E402

from backend.api.app import create_app  # noqa: E402
from backend.cli import main as ssah  # noqa: E402
from backend.settings import Settings  # noqa: E402

HEADING = "## Portable report (issue 24)"
LIMIT_MB = 5.0


def fake_preview(n: int = 20) -> dict:
    """A preview result shaped as a preview job stores it: n harmful and n benign prompts with 64-token replies."""
    count = {"k": 3, "n": n, "rate": 3 / n, "ci_low": 0.05, "ci_high": 0.36}
    side = {"counts": {k: count for k in ("asr", "over_refusal", "off_topic", "degenerate")}}
    reply = "I can't help with that request, but here is some general and safe information instead. " * 4
    rows = [{"set": kind, "kind": kind, "prompt": f"A {kind} prompt of about twenty words, number {i}, " * 2,
             "baseline": {"reply": reply, "verdict": "refused", "reason": "opens with a refusal phrase"},
             "pruned": {"reply": reply, "verdict": "complied", "reason": "answers the request"}}
            for kind in ("harmful", "benign") for i in range(n)]
    return {"baseline": side, "pruned": side, "generations": rows, "judge": {"judge": "v2"},
            "selection": {"label": "SCU", "units": 4458, "param_fraction": 0.01, "references": {"utility": 4458}}}


def opened_offline(path: Path) -> tuple[float, set[str]]:
    """Seconds to load and draw the file in Chromium with no network, and every URL the page asked for."""
    with browser(offline=True) as driver:
        t0 = time.perf_counter()
        driver.get(path.as_uri())
        drawn = len(driver.find_elements(By.CSS_SELECTOR, "svg"))
        seconds = time.perf_counter() - t0
        messages = [json.loads(e["message"])["message"] for e in driver.get_log("performance")]
    asked = {m["params"]["request"]["url"] for m in messages if m["method"] == "Network.requestWillBeSent"}
    # the browser's own pages (its new-tab page) load chrome:// resources; inline data: URLs are the file's own
    asked = {url for url in asked if not url.startswith(("chrome:", "chrome-untrusted:", "data:", "about:"))}
    assert drawn == 4, drawn
    return seconds, asked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, default=None, help="replace this benchmark's section of that file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ssah-report-bench-") as tmp:
        folder = Path(tmp)
        units = synthetic_units()
        settings = Settings(home=folder / "home", database_url=f"sqlite:///{folder / 'ssah.db'}",
                            results_dir=folder / "runs", runner="none", preload_engine=False)
        client = TestClient(create_app(settings))
        run_id = register_run(settings, units)
        out = folder / "report-cli.html"
        t0 = time.perf_counter()
        assert ssah(["report", str(settings.runs_dir / run_id), "--out", str(out)]) == 0
        cli_s = time.perf_counter() - t0
        cli_size = out.stat().st_size

        from backend.store.db import make_engine, session_factory
        from backend.store.tables import Job, utcnow

        with session_factory(make_engine(settings.database_url)).begin() as session:
            for _ in range(10):
                session.add(Job(kind="preview", run_id=run_id, request={}, status="succeeded", progress=1.0,
                                phase="done", result=fake_preview(), finished_at=utcnow()))
        t0 = time.perf_counter()
        answer = client.get(f"/api/v1/runs/{run_id}/report")
        api_s = time.perf_counter() - t0
        assert answer.status_code == 200, answer.text
        api_out = folder / "report-api.html"
        api_out.write_bytes(answer.content)
        cli_open, cli_asked = opened_offline(out)
        api_open, api_asked = opened_offline(api_out)
    sizes = {"cli": cli_size, "api": len(answer.content)}
    cli_mb, api_mb = sizes["cli"] / 1e6, sizes["api"] / 1e6
    elsewhere = sorted((cli_asked | api_asked) - {out.as_uri(), api_out.as_uri()})
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    lines = [HEADING, "",
             "Command: `python benchmarks/report.py`. Synthetic Llama-3-8B-sized run (459,776 units); figures drawn as "
             "inline SVG (no plotly.js: its 4.8 MB alone would nearly fill the budget), the role map binned to 240 "
             f"cells a layer. {machine}.", "",
             "| measure | value | target |", "|---|---|---|",
             f"| `ssah report RUN_DIR --out report.html`: file size | {cli_mb:.3f} MB | <= {LIMIT_MB:g} MB |",
             f"| the same: time (reads units.parquet, roles, figures, writes) | {cli_s:.2f} s | |",
             f"| `GET /runs/{{id}}/report` with 10 previews of 40 replies each: size | {api_mb:.3f} MB | "
             f"<= {LIMIT_MB:g} MB |",
             f"| the same: server time (units already cached by the API or not) | {api_s:.2f} s | |",
             f"| opened in headless Chromium with no network: load and draw (CLI file, API file) | {cli_open:.2f} s, "
             f"{api_open:.2f} s | |",
             f"| requests other than the file itself | {len(elsewhere)} | 0 |"]
    text = "\n".join(lines) + "\n"
    print(text)
    assert max(cli_mb, api_mb) <= LIMIT_MB and not elsewhere, (sizes, elsewhere)
    if args.write:
        from attribution import replace_section

        replace_section(args.write, HEADING, text)


if __name__ == "__main__":
    main()

"""The README's screenshot (docs/img/run-page.png): the run page of a finished run folder, served by the real stack
and drawn in headless Chromium.

    python scripts/readme_screenshot.py RUN_FOLDER   # e.g. one made by: ssah attribute --model smollm2-135m-safe
"""
import json, shutil, sys, tempfile, time
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "tests" / "ui"))
from uikit import browser, free_port, serve_stack, wait_until
from selenium.webdriver.common.by import By
from backend.settings import Settings
from backend.store.db import make_engine, session_factory
from backend.store.tables import Job, Run, new_id, utcnow

src = Path(sys.argv[1])
with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    port = free_port()
    settings = Settings(home=tmp / "home", database_url=f"sqlite:///{tmp / 'ssah.db'}", results_dir=tmp / "runs",
                        devices=["cpu"], preload_engine=False, runner="none", public_url=f"http://127.0.0.1:{port}")
    run_id = new_id()
    shutil.copytree(src, settings.runs_dir / run_id)
    manifest = json.loads((src / "manifest.json").read_text())
    with serve_stack(settings, port) as served:
        sessions = served.app.state.sessions
        with sessions.begin() as session:
            now = utcnow()
            session.add(Run(id=run_id, status="succeeded", model=manifest["model"]["name"],
                            model_path=manifest["model"]["name"],
                            name=manifest["model"]["name"], tags=["example"],
                            settings={"thresholds": manifest["thresholds"], "safety": "advbench-refusals",
                                      "utility": "benign-answers", "samples": 128},
                            cache_key=f"shot-{run_id}", result_dir=run_id, manifest=manifest))
            session.flush()
            session.add(Job(kind="attribution", run_id=run_id, request={"run_id": run_id}, status="succeeded",
                            progress=1.0, phase="done", started_at=now, finished_at=now))
        with browser(1400, 1000) as driver:
            driver.get(f"{served.url}/runs/{run_id}")
            wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#ov-counts-table"), 120, "counts")
            wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#ov-map-mlp .heatmaplayer image, #ov-map-mlp .hm image"), 120, "map")
            time.sleep(3)
            driver.set_window_size(1400, 1600)
            time.sleep(2)
            driver.save_screenshot(str(ROOT / "docs" / "img" / "run-page.png"))
print("ok")

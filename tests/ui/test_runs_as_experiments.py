"""Runs as experiments, in headless Chromium against the real service: runs named and filtered with their models and
lineage, compared by ticking two; a run's identity edited and its history reopened; a sweep in one job with its
random control as a band of five seeds and its points' replies; a preview that shows its instant estimate until its
replies are judged; exports and Python that follow the view's thresholds; the form slips of issue 24; and the HTML
report, opened with no network. Screenshots go to test-artifacts/ui/."""
from __future__ import annotations

import contextlib
import io
import json
import os
from urllib.parse import parse_qs, urlencode, urlsplit

import pandas as pd
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from uikit import (
    browser,
    chromium_available,
    finished_run,
    poll_json,
    register_run,
    release,
    screenshot,
    synthetic_units,
    wait_until,
)

pytestmark = [pytest.mark.slow,  # a served app, a spawned worker and a browser
              pytest.mark.skipif(not chromium_available(),
                                 reason="headless Chromium is not installed (apt-get install chromium chromium-driver)")]

SETS = {"harmful": "harmful.jsonl", "benign": "benign.jsonl", "limit": 2, "tokens": 8}
EVAL = {"harmful": ["harmful.jsonl"], "benign": ["benign.jsonl"], "limit": 1, "max_new_tokens": 4}


def page(service, path: str, token: str | None = None, **query) -> str:
    query = query | ({"token": token} if token else {})
    return f"{service.url}{path}{'?' + urlencode(query) if query else ''}"


def query_of(driver) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(driver.current_url).query).items()}


@pytest.fixture(scope="module")
def base(api, run) -> dict:
    """A named, tagged run of the tiny model (the same settings as `run`: answered from the cache)."""
    return finished_run(api, name="tiny base", tags=["base", "smoke"])


@pytest.fixture(scope="module")
def small(api, other_run) -> dict:
    return finished_run(api, samples=8, name="tiny 8 pairs", tags=["small"])


@pytest.fixture(scope="module")
def finetune_job(api, base) -> dict:
    """A fine-tune of the base run's model with SCU frozen, checked before and after."""
    accepted = api.post(f"/runs/{base['id']}/finetunes", json={"data": "utility.jsonl", "steps": 12, "batch_size": 2,
                                                               "freeze": {"groups": ["SCU"]}, "eval": EVAL})
    assert accepted.status_code == 202, accepted.text
    job = poll_json(api, f"/jobs/{accepted.json()['job_id']}", lambda b: b["status"] not in ("queued", "running"))
    assert job["status"] == "succeeded", job
    return job


@pytest.fixture(scope="module")
def tuned(api, finetune_job) -> dict:
    """A run of the fine-tuned model: its lineage names the base run."""
    return finished_run(api, model=finetune_job["result"]["model"], name=None)


def rows_shown(driver) -> set[str]:
    return set(driver.execute_script(
        "return Array.from(document.querySelectorAll('#runs-list tbody tr')).map(r => r.dataset.run)"))


def row_cells(driver, run_id: str) -> list[str]:
    return driver.execute_script(f"return Array.from(document.querySelectorAll(\"#runs-list tr[data-run='{run_id}'] td\"))"
                                 ".map(td => td.innerText.trim())")


def test_the_runs_table_names_runs_and_their_models_filters_them_and_compares_two(service, token, api, base, small,
                                                                                    tuned, finetune_job, driver):
    driver.get(page(service, "/", token))
    cells = wait_until(lambda: row_cells(driver, tuned["id"]), 30, "the fine-tuned run's row")
    # tick, run, model, sets, samples, thresholds, status, parent, created, action
    assert cells[1] == tuned["id"][:8]  # no name: the start of its id
    assert cells[2] == "fine-tune of tiny base (freeze SCU)", cells  # not the job's hex folder
    assert finetune_job["id"] not in " ".join(cells)
    parent = driver.find_element(By.CSS_SELECTOR, f"#runs-list tr[data-run='{tuned['id']}'] a.parent-link")
    assert parent.text == "tiny base"
    assert urlsplit(parent.get_attribute("href")).path == f"/runs/{base['id']}"
    assert query_of_link(parent) == {"token": token}
    cells = row_cells(driver, base["id"])
    assert cells[1].splitlines() == ["tiny base", "base", "smoke"]  # name, then its tags
    assert cells[2:6] == ["llama", "safety.jsonl / utility.jsonl", "12", "0.1 / 0.01 / 0.05"]
    assert cells[7] == "—"  # a base model: no parent
    screenshot(driver, "runs-table")

    search = driver.find_element(By.ID, "runs-q")
    search.send_keys("8 pairs", Keys.ENTER)
    wait_until(lambda: rows_shown(driver) == {small["id"]}, 30, "only the run named '8 pairs'")
    assert query_of(driver)["q"] == "8 pairs"
    search.send_keys(Keys.CONTROL, "a")
    search.send_keys(Keys.BACKSPACE, Keys.ENTER)
    driver.find_element(By.ID, "runs-tag").send_keys("smoke", Keys.ENTER)
    wait_until(lambda: rows_shown(driver) == {base["id"]}, 30, "only the run tagged smoke")
    driver.find_element(By.CSS_SELECTOR, "#runs-status input[value=failed]").click()
    wait_until(lambda: "No runs match these filters." in driver.find_element(By.ID, "runs-table").text, 30,
               "no failed run tagged smoke")
    assert query_of(driver)["status"] == "failed" and query_of(driver)["tag"] == "smoke"
    driver.refresh()  # the filters are the view: a reload keeps them
    wait_until(lambda: "No runs match these filters." in driver.find_element(By.ID, "runs-table").text, 30,
               "the filters after a reload")
    assert driver.find_element(By.ID, "runs-tag").get_attribute("value") == "smoke"

    driver.get(page(service, "/", token))
    assert "Tick two runs" in wait_until(lambda: driver.find_element(By.ID, "runs-compare-hint").text, 30, "the hint")
    for run_id in (base["id"], small["id"]):
        wait_until(lambda: driver.find_element(By.CSS_SELECTOR, f"#runs-list tr[data-run='{run_id}'] input"), 30,
                   "a tick box").click()
    link = wait_until(lambda: driver.find_element(By.ID, "runs-compare"), 30, "the compare link")
    link.click()
    wait_until(lambda: urlsplit(driver.current_url).path == "/compare", 30, "the compare page")
    assert query_of(driver) == {"a": base["id"], "b": small["id"], "token": token, "weight": "units"} or \
        {k: query_of(driver)[k] for k in ("a", "b", "token")} == {"a": base["id"], "b": small["id"], "token": token}

    settings = wait_until(lambda: driver.find_element(By.ID, "cmp-settings-table"), 60, "the settings side by side")
    rows = {tr.get_attribute("data-setting"): tr for tr in settings.find_elements(By.CSS_SELECTOR, "tbody tr")}
    assert rows["samples"].text.split()[-2:] == ["12", "8"] and "differs" in rows["samples"].get_attribute("class")
    assert "≠" in rows["samples"].text  # not colour alone
    assert not rows["safety set"].get_attribute("class") and rows["safety set"].text.endswith("safety.jsonl")
    picked = driver.find_element(By.ID, "cmp-a").text
    assert "tiny base · llama" in picked and base["id"] not in picked  # names and models, not ids
    assert driver.find_element(By.ID, "cmp-names").text == "A: tiny base → B: tiny 8 pairs"
    screenshot(driver, "compare-settings")


def query_of_link(element) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(element.get_attribute("href")).query).items()}


def test_a_run_overview_shows_its_lineage_and_edits_its_name_tags_and_notes(service, token, api, base, tuned, driver):
    driver.get(page(service, f"/runs/{tuned['id']}", token))
    lineage = wait_until(lambda: driver.find_element(By.ID, "ov-lineage"), 30, "the lineage")
    lineage = wait_until(lambda: "tiny base" in (text := driver.find_element(By.ID, "ov-lineage").text) and text,
                         30, "the parent's name")  # found again: the line is redrawn once the parent is read
    assert lineage.startswith("Lineage: fine-tune (freeze SCU) of tiny base")
    parent = driver.find_element(By.ID, "ov-parent")
    assert urlsplit(parent.get_attribute("href")).path == f"/runs/{base['id']}"

    driver.get(page(service, f"/runs/{base['id']}", token))
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, ".child-link"), 30, "the runs made from this one")
    assert tuned["id"][:8] in [a.text for a in driver.find_elements(By.CSS_SELECTOR, ".child-link")]
    driver.find_element(By.CSS_SELECTOR, "#ov-edit summary").click()
    fields = {"ov-name": "tiny base (renamed)", "ov-tags": "base, smoke, renamed",
              "ov-notes": "baseline of the sweep\nsecond line"}
    for field, value in fields.items():
        box = driver.find_element(By.ID, field)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(Keys.BACKSPACE)
        box.send_keys(value)
    driver.find_element(By.ID, "ov-save").click()
    wait_until(lambda: driver.find_element(By.ID, "ov-saved-ok"), 30, "saved")
    assert driver.find_element(By.ID, "ov-title").text.startswith("tiny base (renamed)")
    assert driver.find_element(By.ID, "ov-notes-shown").text == "baseline of the sweep\nsecond line"
    stored = api.get(f"/runs/{base['id']}").json()
    assert (stored["name"], stored["tags"], stored["notes"]) == ("tiny base (renamed)", ["base", "smoke", "renamed"],
                                                                 "baseline of the sweep\nsecond line")
    driver.refresh()
    tags = wait_until(lambda: driver.find_element(By.ID, "ov-tags-shown").text, 30, "the tags after a reload")
    assert tags.split() == ["base", "smoke", "renamed"]
    screenshot(driver, "run-identity")
    api.patch(f"/runs/{base['id']}", json={"name": "tiny base", "tags": ["base", "smoke"], "notes": None})


def graph(driver, graph_id: str) -> dict | None:
    return driver.execute_script(f"const gd = document.querySelector('#{graph_id} .js-plotly-plot');"
                                 "return gd && gd._fullData ? {names: gd._fullData.map(t => t.name), "
                                 "title: gd.layout.title && gd.layout.title.text} : null")


def jobs_of(api, run_id: str, kind: str) -> list[dict]:
    return api.get("/jobs", params={"run_id": run_id, "kind": kind, "limit": 1000}).json()["data"]


def test_a_sweep_is_one_job_drawn_with_its_random_control_and_a_point_opens_its_replies(service, token, api, base,
                                                                                         driver):
    previews, sweeps = len(jobs_of(api, base["id"], "preview")), len(jobs_of(api, base["id"], "sweep"))
    driver.get(page(service, f"/runs/{base['id']}/intervene", token, groups="SCU", **SETS))
    fractions = wait_until(lambda: driver.find_element(By.ID, "iv-sweep-fractions"), 30, "the sweep form")
    fractions.send_keys(Keys.CONTROL, "a")
    fractions.send_keys("0.01,0.05", Keys.TAB)
    driver.find_element(By.CSS_SELECTOR, "#iv-sweep-controls input").click()
    wait_until(lambda: query_of(driver).get("sweep_controls") == "true", 10, "the control in the URL")
    driver.find_element(By.ID, "iv-sweep-start").click()
    names = wait_until(lambda: (g := graph(driver, "iv-sweep")) and "random control" in " ".join(g["names"])
                       and g["names"], 240, "the sweep drawn with its random control")
    assert "ASR: SCU pruned" in names and "ASR: random control" in names  # the mean, dotted
    assert "ASR: random control, range" in names  # shaded from the lowest seed to the highest
    assert graph(driver, "iv-sweep")["title"].endswith("against 5 random controls")
    assert len(jobs_of(api, base["id"], "sweep")) == sweeps + 1  # one job for the whole sweep
    assert len(jobs_of(api, base["id"], "preview")) == previews  # not a preview per point
    sweep_id = query_of(driver)["sweep"]
    result = api.get(f"/jobs/{sweep_id}").json()["result"]
    assert [p["fraction"] for p in result["points"]] == [0.01, 0.05]
    assert api.get(f"/jobs/{sweep_id}").json()["request"]["controls"] == 5
    assert [len(p["control"]["seeds"]) for p in result["points"]] == [5, 5]
    screenshot(driver, "sweep")

    # a click on the first pruned point of the ASR line opens its replies
    dx, dy = driver.execute_script("""
        const gd = document.querySelector('#iv-sweep .js-plotly-plot'), box = gd.getBoundingClientRect();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, t = gd._fullData[0];
        return [xa._offset + xa.l2p(t.x[1]) - box.width / 2, ya._offset + ya.l2p(t.y[1]) - box.height / 2];""")
    target = driver.find_element(By.CSS_SELECTOR, "#iv-sweep .js-plotly-plot")
    ActionChains(driver).move_to_element_with_offset(target, int(dx), int(dy)).pause(0.5).click().perform()
    title = wait_until(lambda: driver.find_element(By.ID, "iv-point-title").text, 30, "the point's replies")
    assert "SCU at h_scu 0.01" in title
    assert query_of(driver)["point"] == "0.01"
    rows = driver.find_elements(By.CSS_SELECTOR, "#iv-point-generations tbody tr")
    assert len(rows) == len(result["prompts"]) == 4
    first = rows[0].find_elements(By.CSS_SELECTOR, ".reply-cell")
    assert len(first) == 2  # the unpruned reply beside the pruned one
    assert first[0].find_element(By.CSS_SELECTOR, ".verdict-reason").text == result["baseline_replies"][0]["reason"]
    assert first[1].find_element(By.CSS_SELECTOR, ".verdict-word").text.lower() == \
        result["points"][0]["replies"][0]["verdict"]  # drawn in capitals
    assert "random control" in driver.find_element(By.ID, "iv-point-metrics").text
    band = result["points"][0]["control"]["band"]["asr"]
    assert driver.find_element(By.ID, "iv-point-control-asr").text == \
        f"mean {band['mean']:.0%}, range {band['min']:.0%}-{band['max']:.0%}, 5 seeds"
    assert "seeds 1, 2, 3, 4, 5" in driver.find_element(By.ID, "iv-point-control").text
    screenshot(driver, "sweep-point")
    driver.refresh()
    assert "SCU at h_scu 0.01" in wait_until(lambda: driver.find_element(By.ID, "iv-point-title").text, 30,
                                             "the point's replies after a reload")


def test_a_preview_shows_its_instant_estimate_until_its_replies_are_judged(service, token, api, base, driver):
    driver.get(page(service, f"/runs/{base['id']}/intervene", token, groups="SCU", utility="utility.jsonl", **SETS))
    wait_until(lambda: driver.find_element(By.ID, "iv-start"), 30, "the form").click()
    box = wait_until(lambda: driver.find_element(By.ID, "iv-estimate-box"), 120, "the estimate")
    assert "ESTIMATE" in box.text and "Not the measured result" in box.text
    view = query_of(driver)
    preview = api.get(f"/jobs/{view['job']}").json()
    assert preview["status"] == "running"  # held at its utility answers: no measured result yet
    assert not driver.find_elements(By.ID, "iv-metrics")
    estimate = api.get(f"/jobs/{view['estimate']}").json()
    assert estimate["kind"] == "estimate" and estimate["created_at"] < preview["created_at"]  # queued first
    assert estimate["request"]["prune"] == preview["request"]["prune"]
    assert estimate["request"]["sets"] == preview["request"]["sets"]
    harmful = estimate["result"]["pruned"]["harmful"]["mean"]
    assert driver.find_element(By.ID, "iv-estimate-pruned-harmful").text == f"{harmful:.0%}"
    screenshot(driver, "preview-estimate")
    release(service.app.state.settings, view["job"])
    wait_until(lambda: driver.find_element(By.ID, "iv-metrics"), 120, "the measured result")
    assert not driver.find_elements(By.ID, "iv-estimate-box")  # replaced by the measured rates
    assert "utility" in driver.find_element(By.ID, "iv-metrics").text
    assert query_of(driver)["limit"] == "2"

    # the URL holds the settings of the result on screen: a new limit puts the preview away
    limit = driver.find_element(By.ID, "iv-limit")
    limit.send_keys(Keys.CONTROL, "a")
    limit.send_keys("3", Keys.TAB)
    reopen = wait_until(lambda: driver.find_element(By.ID, "iv-reopen"), 30, "the preview put away")
    assert "job" not in query_of(driver) and query_of(driver)["limit"] == "3"
    assert not driver.find_elements(By.ID, "iv-metrics")
    reopen.click()
    wait_until(lambda: driver.find_element(By.ID, "iv-metrics"), 60, "the preview reopened")
    assert query_of(driver)["job"] == view["job"] and query_of(driver)["limit"] == "2"
    assert driver.find_element(By.ID, "iv-limit").get_attribute("value") == "2"
    # a link whose limit disagrees with its preview shows the preview's own settings
    driver.get(page(service, f"/runs/{base['id']}/intervene", token, job=view["job"], limit=7, groups="UCU"))
    wait_until(lambda: driver.find_element(By.ID, "iv-metrics"), 60, "the preview")
    wait_until(lambda: query_of(driver).get("limit") == "2" and query_of(driver).get("groups") == "SCU", 10,
               "the URL corrected to the preview's settings")


def test_the_history_lists_every_job_of_a_run_and_reopens_it(service, token, api, base, finetune_job, driver):
    driver.get(page(service, f"/runs/{base['id']}", token))
    table = wait_until(lambda: driver.find_element(By.ID, "ov-history-table"), 30, "the history")
    kinds = {tr.get_attribute("data-kind") for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")}
    assert {"preview", "sweep", "estimate", "finetune"} <= kinds
    jobs = api.get("/jobs", params={"run_id": base["id"], "limit": 1000}).json()["data"]
    shown = [tr.get_attribute("data-job") for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert shown == [j["id"] for j in jobs if j["kind"] != "attribution"]  # all of them, newest first
    tune = table.find_element(By.CSS_SELECTOR, f"tr[data-job='{finetune_job['id']}']")
    assert "freeze SCU · utility.jsonl · 12 steps" in tune.text and "succeeded" in tune.text
    sweep = next(j for j in jobs if j["kind"] == "sweep")
    row = table.find_element(By.CSS_SELECTOR, f"tr[data-job='{sweep['id']}']")
    assert "SCU at 1.00%, 5.00% · 5 random controls per point" in row.text
    screenshot(driver, "run-history")
    row.find_element(By.CSS_SELECTOR, "a.history-link").click()
    wait_until(lambda: urlsplit(driver.current_url).path == f"/runs/{base['id']}/intervene", 30, "the intervene page")
    assert query_of(driver)["sweep"] == sweep["id"] and query_of(driver)["token"] == token
    wait_until(lambda: (g := graph(driver, "iv-sweep")) and "ASR: SCU pruned" in g["names"], 60, "the sweep again")
    assert driver.find_element(By.ID, "iv-sweep-fractions").get_attribute("value") == "0.01,0.05"


def exec_code(code: str, settings) -> tuple[dict, str]:
    """Run copied Python as a user would on the server: in its environment (results dir, data roots)."""
    scope: dict = {}
    out = io.StringIO()
    server_env = {"SSAH_RESULTS_DIR": str(settings.runs_dir),
                  "SSAH_DATA_ROOTS": ",".join(str(root) for root in settings.data_roots)}
    before = {key: os.environ.get(key) for key in server_env}
    os.environ.update(server_env)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<copied>", "exec"), scope)  # noqa: S102  (the page's own code)
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value
    return scope, out.getvalue()


def test_exports_and_python_follow_the_view_and_reproduce_it(service, token, api, base, driver):
    results = service.app.state.settings
    driver.get(page(service, f"/runs/{base['id']}", token, h_scu=0.05, h_ru=0.2))
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#ov-counts-table"), 60, "the role counts")
    counts = {r: int(driver.find_element(By.ID, f"ov-count-{r}").text.replace(",", "")) for r in ("SCU", "UCU", "RU")}
    for fmt in ("csv", "parquet", "json"):
        link = driver.find_element(By.ID, f"ov-export-{fmt}")
        query = query_of_link(link)
        assert (float(query["h_scu"]), float(query["h_ru"]), query["token"]) == (0.05, 0.2, token)
    csv = api.get(urlsplit(driver.find_element(By.ID, "ov-export-csv").get_attribute("href")).path.removeprefix(
        "/api/v1"), params=query_of_link(driver.find_element(By.ID, "ov-export-csv")))
    table = pd.read_csv(io.StringIO(csv.text))
    assert {r: int((table.role == r).sum()) for r in counts} == counts  # the file holds what the page shows
    assert csv.headers["x-ssah-thresholds"] == "h_ru=0.2,h_scu=0.05,h_ucu=0.05"
    report = driver.find_element(By.ID, "ov-export-report")
    assert {k: query_of_link(report)[k] for k in ("h_scu", "h_ru")} == {"h_scu": "0.05", "h_ru": "0.2"}
    driver.find_element(By.CSS_SELECTOR, ".python-code summary").click()
    code = wait_until(lambda: driver.find_element(By.ID, "ov-python").text, 10, "the Python")
    assert "Thresholds(h_ru=0.2, h_scu=0.05, h_ucu=0.05)" in code
    scope, _ = exec_code(code, results)
    assert {r: int((scope["units"].role == r).sum()) for r in counts} == counts

    # the intervene page's Python reproduces the preview on screen, reply for reply
    preview = next(j for j in jobs_of(api, base["id"], "preview") if j["status"] == "succeeded")
    driver.get(page(service, f"/runs/{base['id']}/intervene", token, job=preview["id"]))
    wait_until(lambda: driver.find_element(By.ID, "iv-metrics"), 60, "the preview")
    driver.find_element(By.CSS_SELECTOR, ".python-code summary").click()
    code = wait_until(lambda: driver.find_element(By.ID, "iv-python").text, 10, "the Python")
    scope, _ = exec_code(code, results)
    shown = api.get(f"/jobs/{preview['id']}").json()["result"]
    again = scope["preview"].to_dict()
    assert [g["pruned"]["reply"] for g in again["generations"]] == [g["pruned"]["reply"] for g in shown["generations"]]
    assert again["pruned"]["counts"] == shown["pruned"]["counts"]


def marked(driver, field_id: str) -> bool:
    """Whether a field carries the red mark (Dash 4 puts an Input's className on the box around the <input>)."""
    return bool(driver.find_elements(By.CSS_SELECTOR, f".invalid #{field_id}, #{field_id}.invalid"))


def test_form_slips_are_caught(service, token, api, base, finetune_job, driver):
    # an empty safety set is refused in words, not replaced by advbench-refusals
    runs = len(api.get("/runs", params={"limit": 1000}).json()["data"])
    driver.get(page(service, "/", token))
    safety = wait_until(lambda: driver.find_element(By.ID, "runs-safety"), 30, "the form")
    fields = driver.find_elements(By.CSS_SELECTOR, "#runs-submit ~ *, .form-grid .field")
    assert all("default" in f.text for f in fields if f.text), [f.text for f in fields if "default" not in f.text]
    safety.send_keys(Keys.CONTROL, "a")
    safety.send_keys(Keys.BACKSPACE, Keys.TAB)
    driver.find_element(By.ID, "runs-submit").click()
    alert = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "#runs-submitted .alert-error").text, 30,
                       "the refusal")
    assert "safety set: required" in alert
    assert marked(driver, "runs-safety")
    assert len(api.get("/runs", params={"limit": 1000}).json()["data"]) == runs  # nothing started
    safety.send_keys("safety.jsonl", Keys.TAB)  # fixed: the red mark goes at once, before any submit
    wait_until(lambda: not marked(driver, "runs-safety"), 10, "the mark to clear")

    # every field of the intervene page states its default
    driver.get(page(service, f"/runs/{base['id']}/intervene", token))
    wait_until(lambda: driver.find_element(By.ID, "iv-limit"), 30, "the intervene form")
    fields = driver.find_elements(By.CSS_SELECTOR, ".field, #iv-random, #iv-controls, #iv-sweep-controls")
    assert all("default" in f.text for f in fields), [f.text for f in fields if "default" not in f.text]

    # an h_SCU beyond the slider is clamped to the slider's range, and the page says so
    driver.get(page(service, f"/runs/{base['id']}", token, h_scu=0.5))
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#ov-counts-table"), 60, "the role counts")
    assert any("h_scu = 0.5 in the link is outside the slider's range 0 to 0.1: shown at 0.1" in n.text
               for n in driver.find_elements(By.CSS_SELECTOR, ".alert-note"))
    thumb = driver.find_element(By.CSS_SELECTOR, "#ov-h_scu [role=slider]")
    assert (thumb.get_attribute("aria-valuemax"), thumb.get_attribute("aria-valuenow")) == ("0.1", "0.1")
    wait_until(lambda: query_of(driver).get("h_scu") == "0.1", 10, "the URL clamped too")
    overall = api.get(f"/runs/{base['id']}/roles", params={"h_scu": 0.1}).json()["overall"]
    assert int(driver.find_element(By.ID, "ov-count-SCU").text.replace(",", "")) == overall["SCU"]["units"]
    # the value bubble of a slider being dragged leaves the next slider's label readable
    driver.get(page(service, f"/runs/{base['id']}", token))
    thumb = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "#ov-h_scu [role=slider]"), 60, "the slider")
    ActionChains(driver).click_and_hold(thumb).move_by_offset(30, 0).pause(0.5).perform()
    bubble, label = driver.execute_script("""
        const r = e => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
        return [r(document.querySelector('#ov-h_scu .dash-slider-tooltip')),
                r(document.getElementById('ov-h_ucu-label'))];""")
    screenshot(driver, "slider-bubble")
    ActionChains(driver).release().perform()
    assert bubble[2] > bubble[0], "no value bubble while dragging"
    overlap = not (bubble[2] <= label[0] or label[2] <= bubble[0] or bubble[3] <= label[1] or label[3] <= bubble[1])
    assert not overlap, (bubble, label)

    # the fine-tune's table: headers over their numbers; its loss chart: whole-number steps
    driver.get(page(service, f"/runs/{base['id']}/intervene", token, ft_job=finetune_job["id"]))
    table = wait_until(lambda: driver.find_element(By.ID, "iv-ft-metrics"), 60, "the fine-tune result")
    edges = driver.execute_script("""
        const t = arguments[0], heads = t.querySelectorAll('thead th'), cells = t.querySelectorAll('tbody tr')[0].cells;
        return Array.from(heads).map((h, i) => [getComputedStyle(h).textAlign, h.getBoundingClientRect().right,
                                                cells[i].getBoundingClientRect().right,
                                                getComputedStyle(cells[i]).textAlign]);""", table)
    for align, head_right, cell_right, cell_align in edges[1:]:  # before, after, change: numbers
        assert align == cell_align == "right" and abs(head_right - cell_right) < 1
    ticks = wait_until(lambda: [t.text for t in driver.find_elements(By.CSS_SELECTOR, "#iv-ft-loss .xtick text")],
                       30, "the loss chart's ticks")
    assert ticks and all(t.isdigit() for t in ticks), ticks
    steps = [int(t) for t in ticks]
    assert steps == sorted(set(steps)) and steps[0] >= 1 and steps[-1] <= 12
    screenshot(driver, "finetune-result")


def test_the_report_opens_offline_and_an_8b_run_fits_in_5_mb(service, token, api, base, tmp_path):
    big = register_run(service.app.state.settings, synthetic_units(), model="synthetic-llama-3-8b")
    answer = api.get(f"/runs/{big}/report")
    assert answer.status_code == 200
    size = len(answer.content)
    assert size <= 5 * 1024 * 1024, size
    path = tmp_path / "report-8b.html"
    path.write_bytes(answer.content)
    with browser(offline=True) as offline:
        offline.get(path.as_uri())
        assert offline.title.endswith("ssah report")
        text = offline.find_element(By.TAG_NAME, "body").text
        for heading in ("Settings", "Roles", "Roles per layer", "Role map", "Top SCU", "Previews"):
            assert heading in text.splitlines()
        assert len(offline.find_elements(By.CSS_SELECTOR, "svg")) == 4
        drawn = offline.execute_script("return Array.from(document.querySelectorAll('svg')).map("
                                       "s => s.getBoundingClientRect().width)")
        assert all(w > 300 for w in drawn)
        assert len(offline.find_elements(By.CSS_SELECTOR, "#top-scu tbody tr")) == 25
        requests = [json.loads(e["message"])["message"] for e in offline.get_log("performance")]
        fetched = {m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"}
        # nothing but the file itself (the browser's own pages, e.g. its new-tab page, load chrome:// resources)
        outside = {url for url in fetched if not url.startswith(("chrome:", "chrome-untrusted:", "data:", "about:"))}
        assert outside == {path.as_uri()}, outside
        screenshot(offline, "report-8b")
    # made through the API, a report holds the run's previews with their replies and verdicts
    page_ = api.get(f"/runs/{base['id']}/report").text
    previews = [j for j in jobs_of(api, base["id"], "preview") if j["status"] == "succeeded"]
    shown = api.get(f"/jobs/{previews[0]['id']}").json()["result"]
    assert "Preview 1: pruned SCU" in page_ and shown["generations"][0]["prompt"].split()[0] in page_
    assert any(f">{g['pruned']['verdict']} " in page_ for g in shown["generations"])
    with browser(offline=True) as offline:
        small_path = tmp_path / "report-tiny.html"
        small_path.write_text(page_)
        offline.get(small_path.as_uri())
        assert offline.find_elements(By.CSS_SELECTOR, ".preview .generations tbody tr")
        screenshot(offline, "report-tiny")

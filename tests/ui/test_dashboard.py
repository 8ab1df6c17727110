"""The dashboard in headless Chromium against the real service: runs, a run's role map and threshold sliders, a
prune preview with verdicts, share links in a fresh browser, and Compare. Screenshots go to test-artifacts/ui/."""
from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pandas as pd
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from uikit import browser, chromium_available, register_run, screenshot, synthetic_units, wait_until

pytestmark = [pytest.mark.slow,  # a served app, a spawned worker and a browser
              pytest.mark.skipif(not chromium_available(),
                                 reason="headless Chromium is not installed (apt-get install chromium chromium-driver)")]


def page(service, path: str, token: str | None = None, **query) -> str:
    query = query | ({"token": token} if token else {})
    return f"{service.url}{path}{'?' + urlencode(query) if query else ''}"


def text_of(driver, css: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, css).text


def counts_on_page(driver) -> dict[str, int]:
    """The four role counts, read in one script (a table half re-rendered cannot be read)."""
    texts = driver.execute_script("return ['SCU', 'UCU', 'CU', 'RU'].map("
                                  "r => document.getElementById('ov-count-' + r).textContent)")
    return {role: int(text.replace(",", "")) for role, text in zip(("SCU", "UCU", "CU", "RU"), texts)}


def counts_from_api(api, run_id: str, **thresholds) -> dict[str, int]:
    overall = api.get(f"/runs/{run_id}/roles", params=thresholds).json()["overall"]
    return {role: overall[role]["units"] for role in ("SCU", "UCU", "CU", "RU")}


def query_of(driver) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(driver.current_url).query).items()}


def wait_for_overview(driver) -> dict[str, int]:
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#ov-counts-table"), 60, "the role counts")
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#ov-map-mlp .heatmaplayer image, "
                                                             "#ov-map-mlp .hm image"), 30, "the MLP role map")
    return counts_on_page(driver)


def test_the_runs_page_lists_runs_and_says_in_words_why_a_run_was_refused(service, token, run, driver):
    driver.get(page(service, "/", token))
    row = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, f"#runs-list tr[data-run='{run['id']}']").text, 30,
                     "the run in the runs table")
    assert run["id"][:8] in row and "succeeded" in row
    samples = driver.find_element(By.ID, "runs-samples")
    samples.clear()
    samples.send_keys("100000", Keys.TAB)
    driver.find_element(By.ID, "runs-submit").click()
    alert = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "#runs-submitted .alert-error"), 30,
                       "the validation message")
    assert "samples" in alert.text and "at most" in alert.text and "422" in alert.text, alert.text
    assert driver.find_elements(By.CSS_SELECTOR, ".invalid #runs-samples, #runs-samples.invalid")  # field marked
    screenshot(driver, "runs-page-refused")
    for field, value in (("runs-model", "llama"), ("runs-safety", "safety.jsonl"), ("runs-utility", "utility.jsonl"),
                         ("runs-samples", "6")):
        box = driver.find_element(By.ID, field)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.TAB)
    driver.find_element(By.ID, "runs-submit").click()
    link = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "#runs-submitted .alert-ok a"), 30, "the new run")
    new_id = link.get_attribute("href").split("/runs/")[1].split("?")[0]
    assert not driver.find_elements(By.CSS_SELECTOR, ".invalid #runs-samples")
    # the table follows the run live (polling) until it has succeeded
    wait_until(lambda: "succeeded" in driver.find_element(By.CSS_SELECTOR, f"#runs-list tr[data-run='{new_id}']").text,
               120, "the new run to succeed in the table")
    screenshot(driver, "runs-page")


def test_a_finished_run_shows_its_role_map_counts_and_scatter(service, token, run, api, driver):
    driver.get(page(service, f"/runs/{run['id']}", token))
    counts = wait_for_overview(driver)
    assert counts == counts_from_api(api, run["id"])
    assert sum(counts.values()) == len(api.get(f"/runs/{run['id']}/units").json())
    # hover names the unit and its scores: the heatmap cell under the mouse
    heatmap = driver.find_element(By.CSS_SELECTOR, "#ov-map-mlp .nsewdrag")
    ActionChains(driver).move_to_element_with_offset(heatmap, 5, 5).perform()
    hover = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "#ov-map-mlp .hoverlayer").text, 10,
                       "the role map's hover label")
    assert "MLP channel" in hover and "z_safety" in hover and "layer" in hover, hover
    scatter = driver.find_element(By.ID, "ov-scatter").text
    assert "SCU boundary" in scatter and "z_safety" in scatter
    for fmt in ("parquet", "csv", "json"):
        href = driver.find_element(By.ID, f"ov-export-{fmt}").get_attribute("href")
        assert api.get(href.replace(service.api, "").split("?")[0], params={"format": fmt}).status_code == 200
    screenshot(driver, "run-overview")


def drag_thumb(driver, slider_id: str, pixels: int) -> None:
    thumb = driver.find_element(By.CSS_SELECTOR, f"#{slider_id} [role=slider]")
    ActionChains(driver).click_and_hold(thumb).move_by_offset(pixels, 0).release().perform()


@pytest.fixture(scope="module")
def wide_run(service) -> str:
    """A finished run too wide for one channel per cell: 4 layers of 2,048 MLP channels (8 a cell) and 8 heads,
    synthetic z-scores put straight into the store."""
    units = synthetic_units(layers=4, channels=2048, heads=8, hidden=256, head_dim=32, kv_heads=2, seed=2)
    return register_run(service.app.state.settings, units)


def graph(driver, graph_id: str) -> dict:
    """The figure plotly is showing in a dcc.Graph (data as sent: typed arrays stay base64 specs)."""
    return driver.execute_script(f"const gd = document.querySelector('#{graph_id} .js-plotly-plot');"
                                 "return gd && gd.layout && gd.layout.meta ? {data: gd.data, layout: gd.layout} : null")


def decode(spec) -> np.ndarray:
    array = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.dtype(spec["dtype"]).newbyteorder("<"))
    return array.reshape([int(n) for n in spec["shape"].split(",")]) if "shape" in spec else array


def map_title(driver, graph_id: str = "ov-map-mlp") -> str:
    figure = graph(driver, graph_id)
    return figure["layout"]["title"]["text"] if figure else ""


def test_the_role_map_shows_true_proportions_zooms_to_single_channels_and_lists_a_cell(service, token, api,
                                                                                        wide_run, driver):
    driver.get(page(service, f"/runs/{wide_run}", token))
    wait_until(lambda: "8 channels per cell" in map_title(driver), 90, "the binned MLP map")
    units = pd.DataFrame(api.get(f"/runs/{wide_run}/units").json())
    for graph_id, module in (("ov-map-mlp", "mlp"), ("ov-map-attn", "attn")):  # area = parameter share
        z = decode(graph(driver, graph_id)["data"][0]["z"])
        cells = z[~np.isnan(z)]
        mine = units[units.module == module]
        shares = mine.groupby("role").params.sum() / mine.params.sum()
        for i, role in enumerate(("SCU", "UCU", "CU", "RU")):
            assert np.mean(cells == i) == pytest.approx(shares.get(role, 0.0), abs=0.02), (module, role)
    screenshot(driver, "role-map")

    drag = driver.find_element(By.CSS_SELECTOR, "#ov-map-mlp .nsewdrag")  # a zoom box across ~60 channels
    ActionChains(driver).move_to_element_with_offset(drag, -200, 0).click_and_hold().move_by_offset(30, 0) \
        .release().perform()
    wait_until(lambda: "(1 channel per cell)" in map_title(driver), 30, "the map re-binned to single channels")
    meta = graph(driver, "ov-map-mlp")["layout"]["meta"]
    assert meta["width"] == 1 and 1 < meta["x"][1] - meta["x"][0] <= 256
    wait_until(lambda: query_of(driver).get("mlp_x") == f"{meta['x'][0]},{meta['x'][1]}", 10,
               "the zoom in the URL")  # the zoom is part of the view

    ActionChains(driver).move_to_element_with_offset(drag, 0, 0).click().perform()  # one channel: listed
    title = wait_until(lambda: driver.find_element(By.ID, "ov-units-title").text, 30, "the cell's units")
    module, layer, start, stop = wait_until(lambda: query_of(driver).get("pick"), 10, "the pick in the URL").split(",")
    assert module == "mlp" and int(stop) == int(start) + 1 and f"Layer {layer}" in title and "1 unit" in title
    row = driver.find_element(By.CSS_SELECTOR, "#ov-units-table tbody tr")
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    unit = units[(units.module == "mlp") & (units.layer == int(layer)) & (units.unit == int(cells[2]))].iloc[0]
    assert cells[3] == unit.role and float(cells[4]) == pytest.approx(unit.z_safety, abs=0.006)
    link = urlsplit(row.find_element(By.CSS_SELECTOR, "a.unit-link").get_attribute("href"))
    assert link.path == f"/runs/{wide_run}/units/mlp/{layer}/{cells[2]}"
    assert {k: v[0] for k, v in parse_qs(link.query).items()} == {"token": token, "h_ru": "0.1", "h_scu": "0.01",
                                                                    "h_ucu": "0.05"}
    screenshot(driver, "role-map-zoomed")

    driver.refresh()  # a reload shows the same zoom and the same cell
    wait_until(lambda: "(1 channel per cell)" in map_title(driver), 60, "the zoom after a reload")
    assert wait_until(lambda: driver.find_element(By.ID, "ov-units-title").text, 30, "the list") == title
    drag = driver.find_element(By.CSS_SELECTOR, "#ov-map-mlp .nsewdrag")
    ActionChains(driver).double_click(drag).perform()  # zoom out: re-binned again
    wait_until(lambda: "8 channels per cell" in map_title(driver), 30, "the whole map again")
    wait_until(lambda: "mlp_x" not in query_of(driver), 10, "the zoom gone from the URL")


def test_a_click_on_a_scatter_point_opens_its_unit_page(service, token, run, driver):
    driver.get(page(service, f"/runs/{run['id']}", token))
    wait_for_overview(driver)
    wait_until(lambda: graph(driver, "ov-scatter"), 30, "the scatter")
    # the tiny run's units are all sparse: points; find one on the screen and where the page says it is
    found = driver.execute_script("""
        const gd = document.querySelector('#ov-scatter .js-plotly-plot'), box = gd.getBoundingClientRect();
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const t = gd._fullData.find(t => t.type === 'scattergl' && t.x && t.x.length && t.marker.symbol === 'circle');
        const i = Math.floor(t.x.length / 2);
        return [xa._offset + xa.l2p(t.x[i]) - box.width / 2, ya._offset + ya.l2p(t.y[i]) - box.height / 2,
                Array.from(t.customdata[i])];""")
    dx, dy, (layer, unit, is_mlp, _, _) = found
    target = driver.find_element(By.CSS_SELECTOR, "#ov-scatter .js-plotly-plot")
    ActionChains(driver).move_to_element_with_offset(target, int(dx), int(dy)).perform()
    wait_until(lambda: "click to open its page" in driver.find_element(By.CSS_SELECTOR, "#ov-scatter .hoverlayer")
               .text, 10, "the point's hover")
    ActionChains(driver).click().perform()
    module = "mlp" if is_mlp else "attn"
    wait_until(lambda: urlsplit(driver.current_url).path == f"/runs/{run['id']}/units/{module}/{int(layer)}/"
                                                           f"{int(unit)}", 30, "the unit's page")
    assert query_of(driver)["token"] == token and "h_scu" in query_of(driver)


def test_moving_a_slider_recomputes_the_counts_and_the_url_keeps_the_view(service, token, run, api, driver):
    driver.get(page(service, f"/runs/{run['id']}", token))
    before = wait_for_overview(driver)
    drag_thumb(driver, "ov-h_scu", 120)
    moved = wait_until(lambda: (c := counts_on_page(driver)) != before and c, 30, "the counts to change")
    h_scu = float(wait_until(lambda: query_of(driver).get("h_scu") not in (None, "0.01") and
                             query_of(driver)["h_scu"], 10, "the URL to follow the slider"))
    assert h_scu > 0.01
    assert moved == counts_from_api(api, run["id"], h_scu=h_scu)
    assert moved["SCU"] > before["SCU"]
    screenshot(driver, "run-overview-slider")
    masks = urlsplit(driver.find_element(By.ID, "ov-mask-1").get_attribute("href"))  # masks follow the sliders
    query = {k: v[0] for k, v in parse_qs(masks.query).items()}
    assert float(query["h_scu"]) == pytest.approx(h_scu) and query["groups"] == "SCU,CU:0.06"
    download = api.get(masks.path.removeprefix("/api/v1"), params=query)
    assert download.status_code == 200
    header = json.loads(download.content[8:8 + int.from_bytes(download.content[:8], "little")])  # safetensors
    assert header["__metadata__"]["mode"] == "freeze" and any(key.endswith("@0") for key in header)
    driver.refresh()  # a reload reproduces the view
    assert wait_for_overview(driver) == moved
    thumb = driver.find_element(By.CSS_SELECTOR, "#ov-h_scu [role=slider]")
    assert float(thumb.get_attribute("aria-valuenow")) == pytest.approx(h_scu)


def test_pruning_a_group_previews_refusal_with_verdicts_side_by_side(service, token, run, driver):
    driver.get(page(service, f"/runs/{run['id']}/intervene", token, groups="SCU", harmful="harmful.jsonl",
                    benign="benign.jsonl", limit=2, tokens=8))
    ucu = wait_until(lambda: driver.find_element(By.XPATH, "//div[@id='iv-groups']//label[contains(., 'UCU')]"
                                                           "//input"), 30, "the role group toggles")
    ucu.click()  # prune UCU too
    wait_until(lambda: query_of(driver).get("groups") == "SCU,UCU", 10, "the URL to hold the groups")
    driver.find_element(By.ID, "iv-start").click()
    metrics = wait_until(lambda: driver.find_element(By.ID, "iv-metrics"), 180, "the preview result")
    assert "ASR" in metrics.text and "over-refusal" in metrics.text and "pruned" in metrics.text
    selection = text_of(driver, "#iv-selection")
    assert "SCU,UCU" in selection and "reference" in selection
    badges = driver.find_elements(By.CSS_SELECTOR, "#iv-generations .verdict")
    assert len(badges) == 2 * 4  # 2 harmful + 2 benign prompts, baseline and pruned
    assert {b.text.split()[0].lower() for b in badges} <= {"refused", "complied", "off-topic", "degenerate"}
    assert query_of(driver).get("job")  # the result is part of the view: a link reopens it
    screenshot(driver, "intervene-preview")
    driver.refresh()
    wait_until(lambda: driver.find_element(By.ID, "iv-metrics"), 30, "the preview after a reload")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#iv-generations .verdict")) == 8


def test_a_share_link_opens_the_same_view_in_a_fresh_browser(service, token, run, driver):
    driver.get(page(service, f"/runs/{run['id']}", token, h_scu=0.05, h_ru=0.2, color="SCU"))
    counts = wait_for_overview(driver)
    assert not driver.find_elements(By.CSS_SELECTOR, ".shared-banner")  # a write token is no share
    driver.find_element(By.ID, "ov-share").click()
    link = wait_until(lambda: driver.find_element(By.ID, "ov-share-url").get_attribute("href"), 30, "a share link")
    assert token not in link and "token=" in link and "h_scu=0.05" in link
    with browser() as fresh:  # a new profile: no cookies, no storage, only the link
        fresh.get(link)
        assert wait_for_overview(fresh) == counts
        assert "Shared view" in fresh.find_element(By.CSS_SELECTOR, ".shared-banner").text
        for key, value in (("h_scu", 0.05), ("h_ru", 0.2)):
            thumb = fresh.find_element(By.CSS_SELECTOR, f"#ov-{key} [role=slider]")
            assert float(thumb.get_attribute("aria-valuenow")) == pytest.approx(value)
        assert fresh.find_element(By.CSS_SELECTOR, "#ov-color input[value=SCU]").is_selected()
        screenshot(fresh, "shared-view")
        fresh.find_element(By.ID, "ov-share").click()  # a share token cannot write: said in words
        refused = wait_until(lambda: fresh.find_element(By.CSS_SELECTOR, "#ov-share-out .alert-error").text, 30,
                             "the refusal")
        assert "read-only" in refused and "403" in refused


def test_errors_from_the_api_are_shown_in_words(service, token, driver):
    driver.get(page(service, "/runs/no-such-run", token))
    alert = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, ".alert-error").text, 30, "the error")
    assert "no run 'no-such-run'" in alert and "404" in alert
    driver.get(page(service, "/"))  # no token on a server that needs one
    alert = wait_until(lambda: driver.find_element(By.CSS_SELECTOR, "#runs-table .alert-error").text, 30,
                       "the error")
    assert "token" in alert and "401" in alert


def test_compare_shows_role_transitions_and_scu_overlap(service, token, run, other_run, api, driver):
    driver.get(page(service, "/compare", token, a=run["id"], b=other_run["id"]))
    stats = wait_until(lambda: driver.find_element(By.ID, "cmp-stats"), 30, "the comparison")
    expected = api.get("/compare", params={"a": run["id"], "b": other_run["id"]}).json()
    assert f"{expected['units']:,}" in stats.text
    wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#cmp-matrix .heatmaplayer image, #cmp-matrix .hm"),
               30, "the transition matrix")
    assert "Role transitions" in text_of(driver, "#cmp-matrix")
    assert "SCU per layer" in text_of(driver, "#cmp-overlap")
    screenshot(driver, "compare")


def test_one_server_answers_the_api_its_docs_and_the_dashboard(service):
    import httpx

    with httpx.Client(base_url=service.url, trust_env=False, timeout=30) as client:
        assert "swagger" in client.get("/docs").text.lower()
        assert "/api/v1/runs" in client.get("/openapi.json").json()["paths"]
        page = client.get("/runs/anything")  # every other path is the dashboard's
        assert page.status_code == 200 and "<title>" in page.text and "_dash-config" in page.text
        assert client.get("/api/v1/runs").status_code == 401  # the API keeps its own answers, token rules included
        missing = client.get("/api/v1/no-such-route")  # a mistyped API path is the API's, in JSON
        assert missing.status_code == 404 and "no API route" in missing.json()["detail"]

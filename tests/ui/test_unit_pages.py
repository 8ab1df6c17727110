"""A unit's page in headless Chromium against the real service: from a run's overview to one SCU channel in two
clicks (a layer link, then the channel in the layer's SCU table), its scores, the top tokens and contexts its
first view computes, and a preview of pruning that channel alone. Screenshots go to test-artifacts/ui/."""
from __future__ import annotations

from urllib.parse import parse_qs, urlencode, urlsplit

import pandas as pd
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from uikit import chromium_available, screenshot, wait_until

pytestmark = [pytest.mark.slow,  # a served app, a spawned worker and a browser
              pytest.mark.skipif(not chromium_available(), reason="headless Chromium is not installed "
                                                                  "(apt-get install chromium chromium-driver)")]

H_SCU = 0.05  # SCU at 5% of unit parameters: the tiny run then surely has SCU MLP channels


def page(service, path: str, token: str, **query) -> str:
    return f"{service.url}{path}?{urlencode(query | {'token': token})}"


def path_and_query(driver) -> tuple[str, dict[str, str]]:
    url = urlsplit(driver.current_url)
    return url.path, {k: v[0] for k, v in parse_qs(url.query).items()}


def test_from_the_overview_to_an_scu_channels_page_in_two_clicks_and_a_preview_of_pruning_it(service, token, run,
                                                                                            api, driver):
    table = pd.DataFrame(api.get(f"/runs/{run['id']}/units").json())
    layer, unit = next((layer, u) for layer in sorted(table.layer.unique())
                       for u, m, r in zip(*(api.get(f"/runs/{run['id']}/layers/{layer}", params={"h_scu": H_SCU})
                                            .json()["units"][c] for c in ("unit", "module", "role")))
                       if m == "mlp" and r == "SCU")
    row = table[(table.layer == layer) & (table.module == "mlp") & (table.unit == unit)].iloc[0]

    driver.get(page(service, f"/runs/{run['id']}", token, h_scu=H_SCU))
    wait_until(lambda: driver.find_element(By.ID, f"ov-layer-{layer}"), 60, "the overview's layer links").click()
    channel = wait_until(lambda: driver.find_element(By.ID, f"ly-SCU-mlp-{unit}"), 30, "the layer's SCU table")
    path, query = path_and_query(driver)
    assert path == f"/runs/{run['id']}/layers/{layer}" and query["token"] == token
    assert float(query["h_scu"]) == H_SCU  # the thresholds travel with the links
    assert "z_S − z_U" in driver.find_element(By.ID, "ly-histogram").text
    screenshot(driver, "layer-page")
    channel.click()

    title = wait_until(lambda: driver.find_element(By.ID, "un-title").text, 30, "the unit's page")
    assert f"MLP channel {unit}" in title and "SCU" in title
    path, query = path_and_query(driver)
    assert path == f"/runs/{run['id']}/units/mlp/{layer}/{unit}" and query["token"] == token
    assert float(driver.find_element(By.ID, "un-z_safety").text) == pytest.approx(row.z_safety, rel=1e-3)
    assert float(driver.find_element(By.ID, "un-score_utility").text) == pytest.approx(row.score_utility, rel=1e-3)
    assert "inside" in driver.find_element(By.ID, "un-boundary-SCU").text
    assert driver.find_element(By.ID, "un-var-safety").text != "n/a"  # a new run saves variances

    # the first view started the unit's inspection; its result replaces the progress bar
    promoted = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#un-promoted tbody tr"), 180,
                          "the top tokens")
    body = api.get(f"/runs/{run['id']}/units/mlp/{layer}/{unit}").json()
    assert body["inspection"]["status"] == "succeeded"
    assert len(promoted) == len(body["top_tokens"]["promoted"])
    assert f"{body['top_tokens']['promoted'][0]['logit']:+.3f}" in promoted[0].text
    assert f"{body['top_tokens']['suppressed'][0]['logit']:+.3f}" in text_of_first_row(driver, "#un-suppressed")
    contexts = driver.find_elements(By.CSS_SELECTOR, "#un-contexts-safety .ctx")
    assert len(contexts) == len(body["contexts"]["safety"]) > 0
    top = body["contexts"]["safety"][0]
    assert f"{top['activation']:.3g}" in contexts[0].text
    focus = contexts[0].find_element(By.CSS_SELECTOR, ".ctx-focus")
    assert focus.text.strip() == top["token"].replace("\n", "↵").strip()
    screenshot(driver, "unit-page")

    driver.find_element(By.ID, "un-prune-unit").click()
    units = wait_until(lambda: driver.find_element(By.ID, "iv-units").get_attribute("value"), 30,
                       "the intervene page")
    assert units == f"mlp.{layer}.{unit}"
    for field, value in (("iv-harmful", "harmful.jsonl"), ("iv-benign", "benign.jsonl"), ("iv-limit", "1"),
                         ("iv-tokens", "4")):
        box = driver.find_element(By.ID, field)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.TAB)
    wait_until(lambda: path_and_query(driver)[1].get("harmful") == "harmful.jsonl", 10, "the URL to follow")
    driver.find_element(By.ID, "iv-start").click()
    selection = wait_until(lambda: driver.find_element(By.ID, "iv-selection").text, 180, "the preview result")
    assert f"mlp.{layer}.{unit}" in selection and "1 units" in selection
    screenshot(driver, "intervene-one-unit")


def text_of_first_row(driver, table: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, f"{table} tbody tr").text

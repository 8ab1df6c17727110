"""The API documentation pages draw their operations with no network: Swagger UI and ReDoc come from installed
files, not a CDN (checked in Chromium that cannot resolve any host but localhost)."""
from __future__ import annotations

from urllib.parse import urlparse

import pytest
from selenium.webdriver.common.by import By
from uikit import browser, chromium_available, wait_until

pytestmark = [pytest.mark.slow,  # a served app and a browser
              pytest.mark.skipif(not chromium_available(),
                                 reason="headless Chromium is not installed (apt-get install chromium chromium-driver)")]


@pytest.mark.parametrize("path, drawn", [("/docs", ".opblock"), ("/redoc", "[data-section-id]")])
def test_api_docs_draw_every_operation_offline(service, token, path, drawn):
    with browser(offline=True) as driver:
        driver.get(f"{service.url}{path}")
        blocks = wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, drawn), 60, f"the operations on {path}")
        assert len(blocks) >= 10
        assert "runs" in driver.page_source and "previews" in driver.page_source
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        hosts = {urlparse(url).hostname for url in loaded}
        assert hosts <= {"127.0.0.1", "localhost"}, hosts  # nothing came from elsewhere

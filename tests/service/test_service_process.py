"""`ssah serve` as a real process: what its log shows, and what is left when it is stopped or killed."""
from __future__ import annotations

import httpx
import pytest
from servicekit import API, run_body, serve_process, settings_in

pytestmark = pytest.mark.slow  # spawns `ssah serve`

SECRET = "ssah_" + "s3cret-Token_value" * 2


def test_tokens_never_reach_the_log(roots, tmp_path):
    settings = settings_in(tmp_path, roots, runner="none")
    with serve_process(settings, tmp_path / "serve.log") as served:
        with httpx.Client(base_url=served.url, timeout=60) as http:
            assert http.get(f"{API}/runs", params={"token": SECRET, "limit": 5}).status_code == 200
            assert http.get(f"{API}/runs/nope", params={"access_token": SECRET}).status_code == 404
            http.get("/runs/abc", params={"h_scu": 0.02, "token": SECRET})  # a share link opened in the dashboard
            http.get(f"{API}/runs", headers={"Authorization": f"Bearer {SECRET}"})
            assert http.post(f"{API}/runs", params={"token": SECRET}, json=run_body(roots)).status_code == 202
    log = served.text()
    assert "GET /api/v1/runs?token=[redacted]&limit=5" in log, log[-2000:]  # the access log still names the request
    assert "/runs/abc?h_scu=0.02&token=[redacted]" in log
    assert SECRET not in log and SECRET[5:20] not in log

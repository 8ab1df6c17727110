"""Tokens and links on a server bound to a non-loopback address, without a worker: tokens kept out of logs and out
of URLs where they could do harm, share links that cannot be pointed elsewhere, tokens that expire."""
from __future__ import annotations

import logging
import socket

import pytest
from servicekit import API, run_body, serve, settings_in

from backend.api.logs import RedactTokens, redact
from backend.store.tokens import create_token

TOKEN = "ssah_" + "A1b2-C3d4_" * 4


@pytest.fixture()
def public(roots, tmp_path):
    """A server that needs tokens (bound to all interfaces), with no worker; yields (client, write token)."""
    with serve(settings_in(tmp_path, roots, runner="none", host="0.0.0.0", port=8123)) as client:
        with client.app.state.sessions.begin() as session:
            _, token = create_token(session, "test", scope="write")
        yield client, token


def test_redaction_removes_tokens_in_queries_headers_and_bare():
    assert redact(f"GET /api/v1/runs?token={TOKEN}&limit=5 HTTP/1.1") == "GET /api/v1/runs?token=[redacted]&limit=5 HTTP/1.1"
    assert redact(f"/runs/x?h=1&access_token={TOKEN}") == "/runs/x?h=1&access_token=[redacted]"
    assert redact(f"Authorization: Bearer {TOKEN}") == "Authorization: Bearer [redacted]"
    assert TOKEN not in redact(f"unknown token {TOKEN!r}") and redact("?mytoken=abc") == "?mytoken=abc"
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", f"/runs?token={TOKEN}", "1.1", 200), None)
    assert RedactTokens().filter(record) and record.args[2] == "/runs?token=[redacted]" and record.args[4] == 200


def test_a_write_token_is_taken_only_from_the_authorization_header(public, roots):
    client, token = public
    assert client.get(f"{API}/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    in_query = client.get(f"{API}/runs", params={"token": token})
    assert in_query.status_code == 401 and "Authorization" in in_query.json()["detail"]
    run = client.post(f"{API}/runs", json=run_body(roots), headers={"Authorization": f"Bearer {token}"}).json()
    share = client.post(f"{API}/shares", json={"run_id": run["id"]}, headers={"Authorization": f"Bearer {token}"})
    assert client.get(f"{API}/runs/{run['id']}", params={"token": share.json()["token"]}).status_code == 200


def test_share_links_are_built_from_the_configured_address_not_the_request(public, roots, tmp_path):
    client, token = public
    writer = {"Authorization": f"Bearer {token}"}
    run = client.post(f"{API}/runs", json=run_body(roots), headers=writer).json()
    share = client.post(f"{API}/shares", json={"run_id": run["id"]}, headers=writer | {"Host": "evil.example"})
    assert share.status_code == 201, share.text
    assert share.json()["url"].startswith(f"http://{socket.gethostname()}:8123/runs/{run['id']}?token=")
    with serve(settings_in(tmp_path / "public-url", roots, runner="none",
                           public_url="https://ssah.example.org/")) as other:
        run = other.post(f"{API}/runs", json=run_body(roots)).json()
        url = other.post(f"{API}/shares", json={"run_id": run["id"]}, headers={"Host": "evil.example"}).json()["url"]
        assert url.startswith(f"https://ssah.example.org/runs/{run['id']}?token=")
    with serve(settings_in(tmp_path / "loopback", roots, runner="none")) as loopback:
        run = loopback.post(f"{API}/runs", json=run_body(roots)).json()
        url = loopback.post(f"{API}/shares", json={"run_id": run["id"]}, headers={"Host": "evil.example"}).json()["url"]
        assert url.startswith(f"http://127.0.0.1:8000/runs/{run['id']}?token=")


@pytest.mark.parametrize("tail", ["%2e%2e/other", "%2E%2E/other", ".%2e/other", "..%2fother", "%252e%252e/other",
                                  "%25252e%25252e/other", "x/%2e%2e/%2e%2e/other", "..%5cother", "%2e/units"])
def test_a_share_view_is_checked_after_decoding(public, roots, tail):
    client, token = public
    writer = {"Authorization": f"Bearer {token}"}
    run = client.post(f"{API}/runs", json=run_body(roots), headers=writer).json()
    bad = client.post(f"{API}/shares", json={"run_id": run["id"], "view": f"/runs/{run['id']}/{tail}"}, headers=writer)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "view"], bad.text
    fine = client.post(f"{API}/shares", json={"run_id": run["id"], "view": f"/runs/{run['id']}/units/mlp/0/3?x=%2e"},
                       headers=writer)
    assert fine.status_code == 201, fine.text


@pytest.mark.parametrize("days", ["0", "-1", "nan", "inf", "soon"])
def test_the_cli_refuses_a_token_that_would_never_or_already_expire(days, tmp_path, monkeypatch, capsys):
    from backend.cli import main

    monkeypatch.setenv("SSAH_DATABASE_URL", f"sqlite:///{tmp_path / 'ssah.db'}")
    with pytest.raises(SystemExit) as exit_:
        main(["tokens", "create", "--name", "x", "--expires-in-days", days])
    assert exit_.value.code == 2 and "--expires-in-days" in capsys.readouterr().err
    assert main(["tokens", "create", "--name", "x", "--expires-in-days", "0.5"]) == 0
    assert capsys.readouterr().out.startswith("ssah_")


def test_the_store_refuses_a_token_that_has_expired_before_it_exists(tmp_path):
    from datetime import timedelta

    from backend.store.db import make_engine, session_factory
    from backend.store.tables import utcnow

    sessions = session_factory(make_engine(f"sqlite:///{tmp_path / 'ssah.db'}"))
    with sessions() as session:
        for expires_at in (utcnow(), utcnow() - timedelta(days=1)):
            with pytest.raises(ValueError, match="expires_at"):
                create_token(session, "x", expires_at=expires_at)
        with pytest.raises(ValueError, match="time zone"):
            create_token(session, "x", expires_at=utcnow().replace(tzinfo=None) + timedelta(days=1))
        assert create_token(session, "x", expires_at=utcnow() + timedelta(hours=1))[1].startswith("ssah_")
        assert create_token(session, "x")[0].expires_at is None  # no expiry: said by leaving it out

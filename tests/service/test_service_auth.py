"""Auth on a server bound to a non-loopback address: write tokens, share links and their limits."""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from servicekit import API, run_body, serve, settings_in, wait
from sqlalchemy import update

from backend.cli import main
from backend.settings import is_loopback
from backend.store.tables import Token, utcnow
from backend.store.tokens import hash_token

pytestmark = pytest.mark.slow  # a served app with a spawned worker


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
                                            ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                            ("::", False), ("10.1.2.3", False), ("ssah.example.org", False)])
def test_loopback_is_decided_by_the_bind_address(host, loopback):
    assert is_loopback(host) is loopback


def cli(capsys, *args) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out.strip()


def test_tokens_guard_a_public_server_and_share_links_read_one_run_until_they_expire(roots, tmp_path, monkeypatch,
                                                                                      capsys):
    settings = settings_in(tmp_path, roots, host="0.0.0.0", public_url="https://ssah.example.org")
    monkeypatch.setenv("SSAH_DATABASE_URL", settings.database_url)
    with serve(settings) as client:
        assert client.get(f"{API}/runs").status_code == 401
        refused = client.post(f"{API}/runs", json=run_body(roots))
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
        assert client.get(f"{API}/runs", headers={"Authorization": "Bearer ssah_not-a-token"}).status_code == 401
        assert client.get(f"{API}/health").status_code == 200  # probes need no token

        code, token = cli(capsys, "tokens", "create", "--name", "ci")
        assert code == 0 and token.startswith("ssah_")
        with client.app.state.sessions() as session:  # stored hashed, never in the clear
            stored = session.query(Token).one()
            assert stored.token_hash == hash_token(token) and token not in stored.token_hash
        writer = {"Authorization": f"Bearer {token}"}

        shared = client.post(f"{API}/runs", json=run_body(roots), headers=writer)
        assert shared.status_code == 202
        other = client.post(f"{API}/runs", json=run_body(roots, seed=3), headers=writer).json()
        shared = wait(client, f"{API}/runs/{shared.json()['id']}", headers=writer)
        assert shared["status"] == "succeeded"

        link = client.post(f"{API}/shares", headers=writer, json={
            "run_id": shared["id"], "view": f"/runs/{shared['id']}/roles?h_scu=0.02", "expires_in_hours": 2})
        assert link.status_code == 201, link.text
        share = link.json()
        url = urlsplit(share["url"])
        assert f"{url.scheme}://{url.netloc}{url.path}" == f"https://ssah.example.org/runs/{shared['id']}/roles"
        assert parse_qs(url.query) == {"h_scu": ["0.02"], "token": [share["token"]]}
        reader = {"Authorization": f"Bearer {share['token']}"}

        # it reads its run, its units and roles, and its jobs ...
        assert client.get(f"{API}/runs/{shared['id']}", headers=reader).json()["status"] == "succeeded"
        assert client.get(f"{API}/runs/{shared['id']}/units", headers=reader, params={"format": "csv"}).status_code \
            == 200
        assert client.get(f"{API}/runs/{shared['id']}/roles", params={"h_scu": 0.02, "token": share["token"]}) \
            .status_code == 200  # a GET may carry the token in the query, as the link does
        assert client.get(f"{API}/jobs/{shared['job_id']}", headers=reader).status_code == 200
        assert [r["id"] for r in client.get(f"{API}/runs", headers=reader).json()["data"]] == [shared["id"]]
        me = client.get(f"{API}/tokens/me", headers=reader).json()
        assert (me["auth"], me["scope"], me["run_id"]) == (True, "read", shared["id"]) and me["expires_at"]
        assert client.get(f"{API}/tokens/me", headers=writer).json()["scope"] == "write"
        assert client.get(f"{API}/tokens/me").status_code == 401
        # ... but no other run ...
        assert client.get(f"{API}/runs/{other['id']}", headers=reader).status_code == 403
        assert client.get(f"{API}/compare", params={"a": shared["id"], "b": other["id"]}, headers=reader) \
            .status_code == 403
        assert client.get(f"{API}/runs/{other['id']}/masks", params={"groups": "SCU"}, headers=reader) \
            .status_code == 403
        assert client.get(f"{API}/runs/{other['id']}/units", headers=reader).status_code == 403
        assert client.get(f"{API}/jobs/{other['job_id']}", headers=reader).status_code == 403
        # ... and it cannot write
        assert client.post(f"{API}/runs", json=run_body(roots), headers=reader).status_code == 403
        assert client.delete(f"{API}/runs/{shared['id']}", headers=reader).status_code == 403
        assert client.post(f"{API}/runs/{shared['id']}/previews", json={}, headers=reader).status_code == 403
        assert client.post(f"{API}/shares", json={"run_id": shared["id"]}, headers=reader).status_code == 403
        assert client.post(f"{API}/runs", json=run_body(roots), params={"token": token}).status_code == 401

        with client.app.state.sessions.begin() as session:  # two hours later
            session.execute(update(Token).where(Token.token_hash == hash_token(share["token"]))
                            .values(expires_at=utcnow() - timedelta(seconds=1)))
        expired = client.get(f"{API}/runs/{shared['id']}", headers=reader)
        assert expired.status_code == 401 and "expired" in expired.json()["detail"]

        assert cli(capsys, "tokens", "revoke", "ci")[0] == 0
        assert "revoked" in cli(capsys, "tokens", "list")[1]
        assert client.get(f"{API}/runs", headers=writer).status_code == 401


def test_a_share_link_must_point_into_its_run(roots, tmp_path):
    with serve(settings_in(tmp_path, roots, runner="none")) as client:
        run = client.post(f"{API}/runs", json=run_body(roots)).json()
        for view in ("https://evil.example/runs", "//evil.example/x", f"/runs/{run['id']}x", "/runs/other",
                     f"/runs/{run['id']}/../other"):
            bad = client.post(f"{API}/shares", json={"run_id": run["id"], "view": view})
            assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "view"], view
        assert client.post(f"{API}/shares", json={"run_id": "nope"}).status_code == 404
        assert client.post(f"{API}/shares", json={"run_id": run["id"], "expires_in_hours": 0}).status_code == 422
        share = client.post(f"{API}/shares", json={"run_id": run["id"]}).json()
        assert share["view"] == f"/runs/{run['id']}" and share["url"].startswith("http://127.0.0.1:8000/runs/")
        assert client.delete(f"{API}/shares/{share['id']}").status_code == 200

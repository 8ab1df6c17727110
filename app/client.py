"""A small client of the REST API (`/api/v1`): the dashboard's only way to reach runs, roles, jobs and shares.

Every failure becomes an `ApiError` whose message is a sentence a user can act on (FastAPI's 422 field lists are
turned into "samples: must be at most 4096 ..."), so a page can always show words instead of a blank panel.
"""
from __future__ import annotations

import io
import threading
from typing import Any

import httpx

TIMEOUT_S = 30.0


class ApiError(Exception):
    """A request the API refused or could not answer; `str(error)` is the message for the page."""

    def __init__(self, message: str, status: int | None = None, fields: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.fields = fields or []


def describe_detail(detail: Any) -> tuple[str, list[str]]:
    """FastAPI's `detail` (a string, or a list of {loc, msg}) as one sentence and the field names it blames."""
    if isinstance(detail, str):
        return detail, []
    if isinstance(detail, list):
        parts, fields = [], []
        for item in detail:
            if not isinstance(item, dict):
                parts.append(str(item))
                continue
            loc = [str(x) for x in item.get("loc", []) if x not in ("body", "query", "path")]
            field = ".".join(loc)
            msg = str(item.get("msg", "is not valid")).removeprefix("Value error, ")
            fields.append(field)
            parts.append(f"{field}: {msg}" if field else msg)
        return "; ".join(parts) or "the request was refused", fields
    return str(detail), []


_clients: dict[str, httpx.Client] = {}
_read_only: dict[str, bool] = {}
_clients_lock = threading.Lock()


def _pooled(base_url: str) -> httpx.Client:
    """One connection pool per API base URL, shared by the dashboard's request threads (httpx.Client is
    thread-safe)."""
    with _clients_lock:
        client = _clients.get(base_url)
        if client is None:
            client = _clients[base_url] = httpx.Client(base_url=base_url.rstrip("/"), timeout=TIMEOUT_S,
                                                       trust_env=False)
        return client


class Api:
    """The REST API at `base_url` (e.g. http://127.0.0.1:8000/api/v1), as the caller holding `token` (a share
    or write token; none on a loopback server)."""

    def __init__(self, base_url: str, token: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.token = token or None
        self._http = _pooled(self.base_url)

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except httpx.TimeoutException:
            raise ApiError(f"the API at {self.base_url} did not answer within {TIMEOUT_S:g} s") from None
        except httpx.HTTPError as error:
            raise ApiError(f"the API at {self.base_url} cannot be reached ({type(error).__name__}: {error})") \
                from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text or response.reason_phrase
            message, fields = describe_detail(detail)
            if response.status_code == 429 and response.headers.get("retry-after"):
                message += f" (try again in {response.headers['retry-after']} s)"
            raise ApiError(message, response.status_code, fields)
        return response

    def _json(self, response: httpx.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError:  # e.g. the dashboard's own page, where the API has no such route
            kind = response.headers.get("content-type", "?").split(";")[0]
            raise ApiError(f"the API at {self.base_url} answered {path} with {kind}, not JSON: it has no such route",
                           404, ["route"]) from None

    def get(self, path: str, **params) -> Any:
        params = {k: v for k, v in params.items() if v is not None}
        return self._json(self._request("GET", path, params=params), path)

    def post(self, path: str, body: dict) -> Any:
        return self._json(self._request("POST", path, json=body), path)

    def delete(self, path: str) -> Any:
        return self._json(self._request("DELETE", path), path)

    def patch(self, path: str, body: dict) -> Any:
        return self._json(self._request("PATCH", path, json=body), path)

    # -- the contract -----------------------------------------------------------------------------------------

    def runs(self, status: str | None = None, limit: int = 200, q: str | None = None,
             tag: str | None = None) -> list[dict]:
        """Runs, newest first; `q` matches part of a name, model or id, `tag` one of the tags."""
        return self.get("/runs", status=status, limit=limit, q=q or None, tag=tag or None)["data"]

    def run(self, run_id: str) -> dict:
        return self.get(f"/runs/{run_id}")

    def update_run(self, run_id: str, changes: dict) -> dict:
        """Set a run's name, tags or notes (PATCH: the fields given change, null clears one)."""
        return self.patch(f"/runs/{run_id}", changes)

    def create_run(self, body: dict) -> dict:
        return self.post("/runs", body)

    def delete_run(self, run_id: str) -> dict:
        return self.delete(f"/runs/{run_id}")

    def roles(self, run_id: str, h_ru: float | None = None, h_scu: float | None = None,
              h_ucu: float | None = None) -> dict:
        return self.get(f"/runs/{run_id}/roles", h_ru=h_ru, h_scu=h_scu, h_ucu=h_ucu)

    def units_table(self, run_id: str):
        """The run's units as a DataFrame (fetched as Parquet: a 460k-unit run is a few MB, not tens)."""
        import pandas as pd

        return pd.read_parquet(io.BytesIO(self._request("GET", f"/runs/{run_id}/units",
                                                        params={"format": "parquet"}).content))

    def unit(self, run_id: str, module: str, layer: int | str, unit: int | str, **thresholds) -> dict:
        """One unit's numbers, channel statistics, top tokens and contexts (null until inspected), and the state of
        its newest inspect job."""
        return self.get(f"/runs/{run_id}/units/{module}/{layer}/{unit}", **thresholds)

    def create_inspection(self, run_id: str, module: str, layer: int | str, unit: int | str) -> dict:
        return self.post(f"/runs/{run_id}/units/{module}/{layer}/{unit}/inspections", {})

    def layer(self, run_id: str, layer: int | str, **thresholds) -> dict:
        """Every unit of one layer (columns) with roles, and the model-wide role boundaries."""
        return self.get(f"/runs/{run_id}/layers/{layer}", **thresholds)

    def create_preview(self, run_id: str, body: dict) -> dict:
        return self.post(f"/runs/{run_id}/previews", body)

    def create_sweep(self, run_id: str, body: dict) -> dict:
        return self.post(f"/runs/{run_id}/sweeps", body)

    def create_estimate(self, run_id: str, body: dict) -> dict:
        return self.post(f"/runs/{run_id}/estimates", body)

    def create_finetune(self, run_id: str, body: dict) -> dict:
        return self.post(f"/runs/{run_id}/finetunes", body)

    def job(self, job_id: str) -> dict:
        return self.get(f"/jobs/{job_id}")

    def jobs(self, run_id: str | None = None, kind: str | None = None, limit: int = 50) -> list[dict]:
        return self.get("/jobs", run_id=run_id, kind=kind, limit=limit)["data"]

    def create_share(self, run_id: str, view: str) -> dict:
        return self.post("/shares", {"run_id": run_id, "view": view})

    def compare(self, a: str, b: str) -> dict:
        """Role transitions A -> B and SCU overlap, shaped as the engine's `RoleTransfer.to_dict()`."""
        try:
            return self.get("/compare", a=a, b=b)
        except ApiError as error:
            if error.status in (404, 405) and (error.args[0] == "Not Found" or "route" in error.fields):
                raise ApiError("this API has no compare route yet (GET /api/v1/compare?a=RUN&b=RUN, answering "
                               "the engine's RoleTransfer.to_dict()); ask its operator to update the service",
                               404) from None
            raise

    def me(self) -> dict:
        """The caller's token as the API sees it (`GET /tokens/me`): auth, scope, run_id, expires_at."""
        return self.get("/tokens/me")

    def read_only(self) -> bool:
        """Whether this caller holds a share token (read-only, one run). Remembered per token."""
        if not self.token:
            return False
        if self.token not in _read_only:
            _read_only[self.token] = self.me()["scope"] == "read"
        return _read_only[self.token]

    def models(self) -> list[dict]:
        return self.get("/models")

    def datasets(self) -> list[dict]:
        return self.get("/datasets")

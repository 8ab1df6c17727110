"""What a client downloads for a run's units: gzip where it accepts it, Arrow IPC on request, at the size of the
built-in 135M model's table (46,350 units: 30 layers x 1,536 MLP channels + 30 x 9 heads), with no worker: the run
folder is written here."""
from __future__ import annotations

import gzip
import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from servicekit import API, serve, settings_in

from backend.store.tables import Job, Run, utcnow

LAYERS, CHANNELS, HEADS = 30, 1536, 9  # SmolLM2-135M
WIRE_LIMIT = 2_000_000  # bytes of the JSON table on the wire


def smollm2_sized_units(seed: int = 0) -> pd.DataFrame:
    """A units table of SmolLM2-135M's shape; z-scores and scores random (as hard to compress as real ones)."""
    rng = np.random.default_rng(seed)
    module = np.array(["mlp"] * (LAYERS * CHANNELS) + ["attn"] * (LAYERS * HEADS))
    n = len(module)
    return pd.DataFrame({
        "layer": np.concatenate([np.repeat(np.arange(LAYERS), CHANNELS), np.repeat(np.arange(LAYERS), HEADS)]),
        "module": module,
        "unit": np.concatenate([np.tile(np.arange(CHANNELS), LAYERS), np.tile(np.arange(HEADS), LAYERS)]),
        "params": np.where(module == "mlp", 3 * 576, 4 * 64 * 576),
        "score_safety": rng.lognormal(size=n) * 1e-3, "score_utility": rng.lognormal(size=n) * 1e-3,
        "z_safety": rng.normal(size=n), "z_utility": rng.normal(size=n),
        "role": rng.choice(["SCU", "UCU", "CU", "RU"], size=n, p=[0.01, 0.05, 0.8, 0.14])})


@pytest.fixture(scope="module")
def served(roots, tmp_path_factory):
    """An app (no worker) holding one finished run whose folder has the 46,350-unit table."""
    settings = settings_in(tmp_path_factory.mktemp("units"), roots, runner="none")
    table = smollm2_sized_units()
    (settings.runs_dir / "big").mkdir(parents=True)
    table.to_parquet(settings.runs_dir / "big" / "units.parquet", index=False)
    with serve(settings) as client:
        with client.app.state.sessions.begin() as session:
            run = Run(model="m", model_path="m", settings={}, cache_key="k", status="succeeded", result_dir="big")
            session.add(run)
            session.flush()
            session.add(Job(kind="attribution", run_id=run.id, request={}, status="succeeded", finished_at=utcnow()))
        yield client, run.id, table


def download(client, run_id: str, fmt: str, encoding: str) -> tuple[bytes, dict, int]:
    """(decoded body, headers, bytes on the wire)."""
    with client.stream("GET", f"{API}/runs/{run_id}/units", params={"format": fmt},
                       headers={"Accept-Encoding": encoding}) as answer:
        assert answer.status_code == 200, answer.read()
        wire = b"".join(answer.iter_raw())
        headers = dict(answer.headers)
    body = gzip.decompress(wire) if headers.get("content-encoding") == "gzip" else wire
    return body, headers, len(wire)


def test_the_135m_table_in_json_is_at_most_2_mb_on_the_wire_with_gzip(served):
    client, run_id, table = served
    body, headers, wire = download(client, run_id, "json", "gzip, deflate")
    assert headers["content-encoding"] == "gzip" and "accept-encoding" in headers["vary"].lower()
    assert wire <= WIRE_LIMIT, f"{wire / 1e6:.2f} MB on the wire"
    records = pd.read_json(io.BytesIO(body), orient="records")
    assert len(records) == len(table) == 46_350
    np.testing.assert_allclose(records.z_safety, table.z_safety, rtol=1e-13, atol=1e-15)  # 15 decimals

    plain, headers, size = download(client, run_id, "json", "identity")
    assert "content-encoding" not in headers and plain == body and size > 4 * wire  # the same bytes, unzipped
    assert download(client, run_id, "json", "gzip;q=0")[1].get("content-encoding") is None


def test_units_come_as_arrow_ipc_and_as_gzipped_csv(served):
    client, run_id, table = served
    body, headers, _ = download(client, run_id, "arrow", "identity")
    assert headers["content-type"] == "application/vnd.apache.arrow.stream"
    arrow = pa.ipc.open_stream(body).read_all().to_pandas()
    pd.testing.assert_frame_equal(arrow, table)
    body, headers, _ = download(client, run_id, "csv", "gzip")
    assert headers["content-encoding"] == "gzip" and headers["content-type"].startswith("text/csv")
    pd.testing.assert_frame_equal(pd.read_csv(io.BytesIO(body)), table)

"""The demo's Airflow client: a transient 5xx (SQLite locked under the embedded Airflow) is retried."""

from __future__ import annotations

import httpx
import pytest

import gen_engine.demo as demo
from gen_engine.infra.services import ServiceError


def client(statuses: list[int]) -> tuple[demo.AirflowAPI, list[str]]:
    """An AirflowAPI whose server answers with ``statuses`` in turn (the last one from then on)."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        status = statuses[min(len(seen) - 1, len(statuses) - 1)]
        return httpx.Response(status, json={"dag_run_id": "r1"} if status < 400 else {"detail": "Database error"})

    api = demo.AirflowAPI.__new__(demo.AirflowAPI)
    api.url = "http://airflow"
    api.http = httpx.Client(base_url=api.url, transport=httpx.MockTransport(handler))
    return api, seen


def test_a_transient_server_error_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.time, "sleep", lambda s: None)
    api, seen = client([500, 500, 200])
    assert api.trigger("dataset_ingest") == "r1"
    assert seen == ["/api/v2/dags/dataset_ingest/dagRuns"] * 3


def test_a_lasting_server_error_and_a_client_error_are_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo.time, "sleep", lambda s: None)
    api, seen = client([500])
    with pytest.raises(ServiceError, match="500"):
        api.trigger("dataset_ingest")
    assert len(seen) == 5  # the call and its 4 retries
    api, seen = client([404])
    with pytest.raises(ServiceError, match="404"):
        api.trigger("nope")
    assert len(seen) == 1  # a client error is not retried

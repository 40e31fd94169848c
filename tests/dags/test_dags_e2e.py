"""The DAGs end to end with Airflow's own dag.test(), against the real S3 server and a SQLite Airflow DB."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch

from gen_engine.config import Settings
from gen_engine.infra.lineage import LineageStore
from gen_engine.infra.storage import Storage
from gen_engine.resources import resources

REPO = Path(__file__).resolve().parents[2]


def get_dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id)


def states(run) -> dict[str, str]:
    return {ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
            for ti in run.get_task_instances()}


@pytest.fixture()
def production_model(s3_settings: Settings) -> str:
    from gen_engine.models.artifact import save_model
    from gen_engine.models.gan import GANConfig, Generator

    torch.manual_seed(0)
    d = save_model(s3_settings.local_dir / "dag-model", Generator(GANConfig(resolution=16, nf=8)),
                   {"name": "generator", "code_version": "test"})
    return resources(s3_settings).registry.publish(d, alias="production")["model_id"]


def test_csv_dropped_in_incoming_ends_rendered_and_processed(s3_settings, factory_env, production_model) -> None:
    store = Storage.from_settings(s3_settings)
    store.put_bytes("campaigns", "incoming/summer.csv",
                    b"prompt,count,asset_name\na red <b>circle</b>,2,hero\na blue square,1,promo\n,1,blank-prompt\n")
    watch = get_dag("campaign_watch").test()
    claimed = [o.key for o in store.list("campaigns", "claimed/")]
    assert len(claimed) == 1 and claimed[0].startswith("claimed/summer.")
    assert not store.exists("campaigns", "incoming/summer.csv")
    assert states(watch)["claim_new_csvs"] == "success"

    run = get_dag("campaign_render").test(run_conf={"csv_key": claimed[0], "campaign": "summer", "shard_size": 2})
    st = states(run)
    assert st["finalize"] == "success" and st["render_shard[0]"] == "success" and st["render_shard[1]"] == "success"
    assert st["mark_failed"] == "skipped"
    processed = [o.key for o in store.list("campaigns", "processed/")]
    assert any(k.startswith("processed/summer.") and k.endswith(".csv") for k in processed)
    run_prefix = next(o.key for o in store.list("renders", "summer/") if o.key.endswith("summary.json"))
    summary = json.loads(store.get_bytes("renders", run_prefix))
    assert summary["counts"] == {"rows_read": 3, "rows_accepted": 2, "rows_rejected": 1, "rows_blank": 0, "images": 3}
    assert summary["model_id"] == production_model
    assert "&lt;b&gt;circle&lt;/b&gt;" in store.get_bytes("renders", summary["prefix"] + "index.html").decode()
    # The lineage knows the Airflow run that rendered it (the Campaigns page links it) and each image's labels.
    from gen_engine.infra.lineage import LineageStore

    lineage = LineageStore.from_settings(s3_settings)
    row = lineage.run(summary["run_id"])
    assert (row["dag_id"], row["dag_run_id"]) == ("campaign_render", run.run_id)
    assert {(o["label"], o["c2pa"]) for o in lineage.run_outputs(summary["run_id"])} == {("none", "signed")}


def test_malformed_csv_ends_in_failed_with_its_report(s3_settings, factory_env, production_model) -> None:
    store = Storage.from_settings(s3_settings)
    store.put_bytes("campaigns", "claimed/broken.x.csv", b"title,seed\nhello,1\n")
    run = get_dag("campaign_render").test(run_conf={"csv_key": "claimed/broken.x.csv", "campaign": "broken"})
    st = states(run)
    assert st["validate_and_plan"] == "failed" and st["mark_failed"] == "success"
    plan_ti = next(ti for ti in run.get_task_instances() if ti.task_id == "validate_and_plan")
    assert plan_ti.try_number == 1, "a bad file is a user error: failed at once, not retried"
    assert store.exists("campaigns", "failed/broken.x.csv") and not store.exists("campaigns", "claimed/broken.x.csv")
    report = json.loads(store.get_bytes("campaigns", "failed/broken.x.report.json"))
    assert "no 'prompt' column" in report["error"]


def test_the_render_dag_refuses_keys_outside_incoming_and_claimed(s3_settings, factory_env, production_model) -> None:
    """csv_key comes from a form or the REST API: a key naming a delivered file (or a claim marker) must not
    make the factory move or delete it."""
    store = Storage.from_settings(s3_settings)
    victims = ["processed/delivered.x.csv", "claimed/other.x.csv.claim", "incoming/../processed/delivered.x.csv"]
    store.put_bytes("campaigns", "processed/delivered.x.csv", b"title\nnot a prompt csv\n")
    store.put_bytes("campaigns", "claimed/other.x.csv.claim", b"owner")
    before = {o.key for o in store.list("campaigns")}
    for key in victims:
        run = get_dag("campaign_render").test(run_conf={"csv_key": key, "campaign": "attack"})
        st = states(run)
        assert st["validate_and_plan"] == "failed" and st["mark_failed"] == "success", (key, st)
    assert {o.key for o in store.list("campaigns")} == before, "an object outside incoming/ or claimed/ was moved"


def test_a_render_that_fails_in_the_dag_shows_as_a_failed_run(s3_settings, factory_env, production_model,
                                                               monkeypatch) -> None:
    import gen_engine.render.shard as shard_module
    from gen_engine.errors import UserError

    def boom(*_a, **_k):  # a user error: no retries, so the test does not wait out the retry delays
        raise UserError("the shard cannot be rendered")

    monkeypatch.setattr(shard_module, "render_shard", boom)
    store = Storage.from_settings(s3_settings)
    store.put_bytes("campaigns", "claimed/lost.x.csv", b"prompt,count\na lost circle,1\n")
    run = get_dag("campaign_render").test(run_conf={"csv_key": "claimed/lost.x.csv", "campaign": "lost"})
    assert states(run)["mark_failed"] == "success"
    rows = resources(s3_settings).lineage.runs(campaign="lost")
    assert rows and rows[0]["status"] == "failed" and rows[0]["rows_accepted"] == 1
    assert store.exists("campaigns", "failed/lost.x.csv")


def test_campaign_csv_keys() -> None:
    from gen_engine.errors import UserError
    from gen_engine.orchestration import campaign_csv_key

    assert campaign_csv_key("incoming/a.csv", "campaigns") == "incoming/a.csv"
    assert campaign_csv_key("campaigns/claimed/a.0123.csv", "campaigns") == "claimed/a.0123.csv"
    for bad in ("processed/a.csv", "failed/a.csv", "claimed/a.csv.claim", "incoming/../processed/a.csv",
                "incoming/sub/a.csv", "incoming/.hidden.csv", "incoming/a.txt", "a.csv", "incoming/a\n.csv"):
        with pytest.raises(UserError):
            campaign_csv_key(bad, "campaigns")


def _shapes_zip(n: int, seed: int) -> bytes:
    from gen_engine.datasets.synth import generate

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        meta = []
        for i, (rec, img) in enumerate(generate(n, 32, seed)):
            b = io.BytesIO()
            img.save(b, "PNG")
            z.writestr(f"images/{i}.png", b.getvalue())
            meta.append(json.dumps({"file_name": f"images/{i}.png", "text": rec.text, "color": rec.color,
                                    "shape": rec.shape}))
        z.writestr("metadata.jsonl", "\n".join(meta))
    return buf.getvalue()


def test_dataset_drop_then_retrain_promotes_first_model_and_gates_a_worse_one(s3_settings, factory_env,
                                                                               monkeypatch) -> None:
    store, lineage = Storage.from_settings(s3_settings), LineageStore.from_settings(s3_settings)
    with lineage.engine.begin() as c:  # start without a production model, whatever ran before
        c.execute(sa.text("DELETE FROM model_aliases WHERE name = 'generator'"))
    monkeypatch.setenv("GEN_RETRAIN_DATASET", "dagshapes")
    store.put_bytes("datasets", "raw/dagshapes/drop1.zip", _shapes_zip(64, 0))
    store.put_bytes("datasets", "raw/dagshapes/bad.zip", b"not an archive")
    run = get_dag("dataset_ingest").test()
    st = states(run)
    assert st["ingest_drop[0]"] != st["ingest_drop[1]"]  # one drop is good, the other fails with its report
    assert lineage.dataset_version("dagshapes")["version"] == 1
    assert store.exists("datasets", "done/dagshapes/drop1.zip") and store.exists("datasets", "failed/dagshapes/bad.zip")
    assert "neither a zip nor a tar" in json.loads(store.get_bytes("datasets", "failed/dagshapes/bad.zip.report.json"))[
        "error"]

    # The ingest trained the version's evaluation encoder and keeps it in S3 beside the version; the
    # retrain's evaluate only loads it, even on a worker whose local cache is empty.
    version_uri = lineage.dataset_version("dagshapes")["uri"].removeprefix("s3://datasets/")
    assert [o.key.rsplit("/", 1)[1] for o in store.list("datasets", f"{version_uri}evaluation/")] == [
        "encoder-r16-s1500.json", "encoder-r16-s1500.safetensors"]
    shutil.rmtree(s3_settings.local_dir / "cache" / "eval")
    import gen_engine.evaluation.encoder as encoder_module

    trained, real_train = [], encoder_module.train_encoder
    monkeypatch.setattr(encoder_module, "train_encoder", lambda *a, **k: trained.append(1) or real_train(*a, **k))
    retrain = get_dag("generator_retrain")
    first = states(retrain.test())
    assert first["evaluate"] == "success" and trained == [], first
    assert first["promote"] == "success", first
    prod = lineage.resolve_alias("generator", "production")
    assert prod is not None
    assert prod["dataset_version_id"] == lineage.dataset_version("dagshapes")["version_id"]
    assert any(e["backend"] == "onnxruntime" for e in lineage.engines(prod["model_id"]))

    # Nothing changed since production: the retrain skips.
    assert states(retrain.test())["train"] == "skipped"

    # A worse challenger (a diverged generator, trained on the new data) is not promoted.
    store.put_bytes("datasets", "raw/dagshapes/drop2.zip", _shapes_zip(64, 1))
    get_dag("dataset_ingest").test()
    monkeypatch.setenv("GEN_RETRAIN_CONFIG", str(REPO / "configs" / "tiny-worse.yaml"))
    third = states(retrain.test())
    assert third["gate"] == "success" and third["promote"] == "skipped", third
    assert lineage.resolve_alias("generator", "production")["model_id"] == prod["model_id"]
    # That rejected challenger is not trained again for the same data, config and champion.
    assert states(retrain.test())["train"] == "skipped"

"""The lineage store on SQLite and on a real PostgreSQL: schema, registry, runs, the full trace."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from gen_engine.infra.lineage import LineageStore

TABLES = {"datasets", "dataset_versions", "model_versions", "model_aliases", "compiled_engines", "campaigns",
          "render_runs", "render_outputs", "rejected_rows", "schema_migrations"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> LineageStore:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'lineage.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        with sa.create_engine(url).begin() as c:  # a clean schema per test
            c.execute(sa.text("DROP SCHEMA public CASCADE"))
            c.execute(sa.text("CREATE SCHEMA public"))
    s = LineageStore(url)
    s.apply_schema()
    return s


def test_schema_applies_idempotently(store: LineageStore) -> None:
    assert store.tables() >= TABLES
    assert store.apply_schema() == []  # nothing left to apply
    assert LineageStore(store.url).apply_schema() == []


def test_dataset_and_model_registry(store: LineageStore) -> None:
    v1 = store.record_dataset_version("shapes", "sha-a", uri="s3://datasets/curated/shapes/v1/", n_records=10,
                                      n_rejected=1, config={"size": 64}, card={"n": 10})
    again = store.record_dataset_version("shapes", "sha-a", uri="ignored", n_records=0, n_rejected=0,
                                         config={}, card={})
    v2 = store.record_dataset_version("shapes", "sha-b", uri="s3://datasets/curated/shapes/v2/", n_records=12,
                                      n_rejected=0, config={"size": 64}, card={"n": 12})
    assert (v1, again, v2) == (1, 1, 2)
    assert store.dataset_version("shapes")["version_id"] == "sha-b"
    assert store.dataset_version("shapes", 1)["uri"].endswith("/v1/")
    assert store.datasets() == [{"name": "shapes", "versions": 2, "latest": 2}]

    m1 = store.register_model("generator", "gen-1", uri="s3://models/gen-1/", dataset_version_id="sha-a",
                              config={"nf": 32}, metrics={"fd": 10.0}, code_version="abc123")
    m2 = store.register_model("generator", "gen-2", uri="s3://models/gen-2/", dataset_version_id="sha-b",
                              config={"nf": 32}, metrics={"fd": 9.0}, code_version="abc124")
    assert (m1, m2) == (1, 2)
    assert store.resolve_alias("generator", "production") is None
    store.set_alias("generator", "production", "gen-1")
    store.set_alias("generator", "production", "gen-2")
    assert store.resolve_alias("generator", "production")["model_id"] == "gen-2"

    store.register_engine("eng-1", "gen-2", backend="onnxruntime", uri="s3://models/gen-2/g.onnx", sha256="f" * 64,
                          key={"opset": 17}, report={"max_abs_err": 1e-6})
    store.register_engine("eng-1", "gen-2", backend="onnxruntime", uri="x", sha256="x", key={}, report={})
    assert [e["engine_id"] for e in store.engines("gen-2")] == ["eng-1"]


def test_unknown_model_in_alias_is_refused(store: LineageStore) -> None:
    with pytest.raises(sa.exc.IntegrityError):
        store.set_alias("generator", "production", "no-such-model")


def test_render_run_and_full_trace(store: LineageStore) -> None:
    store.record_dataset_version("shapes", "sha-a", uri="s3://datasets/curated/shapes/v1/", n_records=10,
                                 n_rejected=0, config={}, card={})
    store.register_model("generator", "gen-0", uri="s3://models/gen-0/", dataset_version_id=None,
                         config={}, metrics={}, code_version="abc000")  # the champion it was warm-started from
    store.register_model("generator", "gen-1", uri="s3://models/gen-1/", dataset_version_id="sha-a",
                         config={"nf": 32, "resolution": 64}, metrics={}, code_version="abc123",
                         parent_model_id="gen-0")
    assert [m["model_id"] for m in store.models_trained_on("sha-a")] == ["gen-1"]
    store.start_run("run-1", "spring", csv_key="claimed/spring.csv", csv_sha256="c" * 64, model_id="gen-1",
                    backend="torch")
    store.start_run("run-1", "spring", csv_key="claimed/spring.csv", csv_sha256="c" * 64, model_id="gen-1",
                    backend="torch")  # a resumed run keeps its row
    outs = [{"object_key": f"spring/run-1/images/hero_{k}.png", "row_number": 2, "k": k, "prompt": "a red circle",
             "seed": 2**32 - 1, "sha256": "a" * 64} for k in range(3)]
    assert store.add_outputs("run-1", outs) == 3
    assert store.add_outputs("run-1", outs) == 0  # idempotent on resume
    store.add_rejected("run-1", [{"row_number": 3, "reason": "prompt is empty", "fields": {"prompt": ""}}])
    store.finish_run("run-1", status="success", counts={"rows_read": 3, "rows_accepted": 1, "rows_rejected": 1,
                                                        "rows_blank": 1, "images": 3}, summary={"ips": 12.5})
    run = store.run("run-1")
    assert run["status"] == "success" and run["images"] == 3 and run["finished_at"]
    assert [r["reason"] for r in store.rejected("run-1")] == ["prompt is empty"]
    assert [r["run_id"] for r in store.runs("spring")] == ["run-1"]

    t = store.trace("spring/run-1/images/hero_1.png")
    assert t["csv_key"] == "claimed/spring.csv" and t["row_number"] == 2 and t["seed"] == 2**32 - 1
    assert t["model_version"] == 2 and t["dataset"] == "shapes" and t["dataset_version"] == 1
    assert t["parent_model_id"] == "gen-0"
    assert t["training_config"] == {"nf": 32, "resolution": 64} and t["code_version"] == "abc123"
    assert store.trace("spring/run-1/images/none.png") is None

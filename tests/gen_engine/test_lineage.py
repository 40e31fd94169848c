"""The lineage store on SQLite and on a real PostgreSQL: schema, registry, runs, the full trace."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from gen_engine.infra.lineage import LineageStore

TABLES = {"datasets", "dataset_versions", "model_versions", "model_aliases", "compiled_engines", "campaigns",
          "render_runs", "render_outputs", "rejected_rows", "schema_migrations", "model_files"}


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


def test_concurrent_registrations_get_distinct_numbers_and_aliases_never_collide(store: LineageStore, at_once) -> None:
    """Two retrains (or ingests) at once: MAX()+1 numbering used to collide on PostgreSQL, and
    delete-then-insert aliases failed on the primary key."""
    models = at_once(6, lambda i: store.register_model("generator", f"gen-{i}", uri=f"s3://models/gen-{i}/",
                                                        dataset_version_id=None, config={}, metrics={},
                                                        code_version="c"))
    assert sorted(models) == [1, 2, 3, 4, 5, 6], models
    again = at_once(4, lambda i: store.register_model("generator", "gen-0", uri="x", dataset_version_id=None,
                                                       config={}, metrics={}, code_version="c"))
    assert again == [models[0]] * 4  # the same model registered at once: one version
    versions = at_once(6, lambda i: store.record_dataset_version("shapes", f"dv-{i}", uri=f"s3://d/{i}/",
                                                                  n_records=1, n_rejected=0, config={}, card={}))
    assert sorted(versions) == [1, 2, 3, 4, 5, 6], versions
    moved = at_once(6, lambda i: store.set_alias("generator", "production", f"gen-{i}"))
    assert moved == [True] * 6
    assert store.resolve_alias("generator", "production")["model_id"] in {f"gen-{i}" for i in range(6)}


def test_alias_compare_and_set_moves_only_from_the_expected_champion(store: LineageStore, at_once) -> None:
    for i in range(3):
        store.register_model("generator", f"gen-{i}", uri=f"s3://models/gen-{i}/", dataset_version_id=None,
                             config={}, metrics={}, code_version="c")
    assert store.set_alias("generator", "production", "gen-0", expect=None)  # none yet: set
    assert not store.set_alias("generator", "production", "gen-1", expect=None)  # exists now: refused
    # Two challengers gated against gen-0 promote at once: exactly one moves production.
    won = at_once(2, lambda i: store.set_alias("generator", "production", f"gen-{i + 1}", expect="gen-0"))
    assert sorted(won) == [False, True]
    assert store.resolve_alias("generator", "production")["model_id"] == f"gen-{won.index(True) + 1}"


def test_model_files_are_recorded_and_a_recompile_replaces_an_entry(store: LineageStore) -> None:
    store.register_model("generator", "gen-1", uri="s3://models/gen-1/", dataset_version_id=None, config={},
                         metrics={}, code_version="c")
    store.record_model_files("gen-1", {"generator.safetensors": ("a" * 64, 10), "generator.onnx": ("b" * 64, 5)})
    store.record_model_files("gen-1", {"generator.onnx": ("c" * 64, 6)})
    assert store.model_files("gen-1") == {"generator.safetensors": "a" * 64, "generator.onnx": "c" * 64}
    assert store.model_files("gen-2") == {}


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
    store.plan_progress("run-1", [(0, 2), (1, 1)])
    store.plan_progress("run-1", [(0, 2), (1, 1)])  # planned again on resume: no duplicate rows
    store.shard_progress("run-1", 0, 2, 2)
    store.shard_progress("run-1", 2, 0, 5)  # a shard the plan did not list (an older plan): recorded anyway
    p = store.progress("run-1")
    assert (p["shards_done"], p["shards_total"], p["images_done"], p["images_total"]) == (1, 3, 2, 8)
    assert store.progress("no-run") is None
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

"""Every DAG file: imports cleanly, touches no DB or connection at parse, has tags and retries, parses fast."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAG_FILES = sorted((REPO / "dags").glob("*.py"))
PARSE = """
import json, sys, time, importlib.util
import airflow.sdk  # the framework import is not the DAG file's cost
from airflow.sdk.definitions._internal.contextmanager import DagContext
sys.path.insert(0, sys.argv[2])
DagContext.current_autoregister_module_name = "dagfile"  # as the DagBag does while importing a file
t0 = time.perf_counter()
spec = importlib.util.spec_from_file_location("dagfile", sys.argv[1])
mod = importlib.util.module_from_spec(spec); sys.modules["dagfile"] = mod; spec.loader.exec_module(mod)
elapsed = time.perf_counter() - t0
dags = [d for d, m in DagContext.autoregistered_dags]  # @dag functions called at module level register here
print(json.dumps({"seconds": elapsed, "dags": [{"dag_id": d.dag_id, "tags": sorted(d.tags), "catchup": d.catchup,
    "doc": bool(d.doc_md), "retries": {t.task_id: t.retries for t in d.tasks},
    "routes": {t.task_id: [t.queue, t.pool] for t in d.tasks},
    "limits": {t.task_id: t.max_active_tis_per_dag for t in d.tasks}} for d in dags]}))
"""


def test_there_are_the_four_dags() -> None:
    assert {p.stem for p in DAG_FILES} == {"dataset_ingest", "generator_retrain", "campaign_watch", "campaign_render"}


@pytest.mark.parametrize("path", DAG_FILES, ids=lambda p: p.stem)
def test_dag_file_parses_without_db_or_connections(path: Path, tmp_path: Path) -> None:
    """Parsed in a fresh process whose metadata DB does not exist and whose connections are poisoned:
    any DB query, Variable or Connection lookup at parse time fails the import."""
    env = os.environ | {
        "AIRFLOW_HOME": str(tmp_path), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////nonexistent/dir/x.db",
        "AIRFLOW_CONN_GEN_S3": "poison://parse-time-lookup", "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    res = subprocess.run([sys.executable, "-c", PARSE, str(path), str(REPO / "plugins")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout.strip().splitlines()[-1])
    assert info["seconds"] < 2.0, f"{path.name} takes {info['seconds']:.2f}s to parse"
    (dag,) = info["dags"]
    assert dag["dag_id"] == path.stem and dag["tags"] and not dag["catchup"] and dag["doc"]
    for task_id, retries in dag["retries"].items():
        assert retries is not None and retries >= 0, task_id
    assert max(dag["retries"].values()) > 0, "transient failures must be retried somewhere"


def test_dagbag_has_no_import_errors(airflow_db: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    assert set(bag.dag_ids) == {p.stem for p in DAG_FILES}
    render = bag.get_dag("campaign_render")
    shard = render.get_task("render_shard")
    assert shard.pool == "render" and shard.max_active_tis_per_dag == 2
    assert set(render.params) >= {"csv_key", "campaign", "backend", "shard_size", "label"}
    # Triggered only: a paused render DAG would leave campaign_watch's triggered runs queued forever.
    assert render.is_paused_upon_creation is False


def _routes(env: dict[str, str], tmp_path: Path) -> dict[str, list[str]]:
    env = os.environ | {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"} | env
    out: dict[str, list[str]] = {}
    for path in DAG_FILES:
        res = subprocess.run([sys.executable, "-c", PARSE, str(path), str(REPO / "plugins")], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        (dag,) = json.loads(res.stdout.strip().splitlines()[-1])["dags"]
        out |= {f"{dag['dag_id']}.{t}": r for t, r in dag["routes"].items()}
    return out


def test_queues_and_pools_come_from_the_settings(tmp_path: Path) -> None:
    """One machine: every task on the default queue. The deployment (GEN_AIRFLOW_GPU_QUEUE=gpu, as
    docker/compose.yaml sets): training, evaluation, compile and the render shards on the GPU worker's
    queue, every other task on the default one; the gpu and render pools where they belong."""
    local = _routes({}, tmp_path / "local")
    assert {q for q, _ in local.values()} == {"default"}
    deployed = _routes({"GEN_AIRFLOW_GPU_QUEUE": "gpu"}, tmp_path / "deployed")
    on_gpu = {t for t, (q, _) in deployed.items() if q == "gpu"}
    assert on_gpu == {"generator_retrain.train", "generator_retrain.evaluate", "generator_retrain.promote",
                      "campaign_render.render_shard"}, on_gpu
    assert all(deployed[t][0] == "default" for t in set(deployed) - on_gpu)
    assert deployed["generator_retrain.train"][1] == deployed["generator_retrain.evaluate"][1] == "gpu"
    assert deployed["campaign_render.render_shard"][1] == "render"
    only_train = _routes({"GEN_AIRFLOW_GPU_QUEUE": "gpu", "GEN_AIRFLOW_GPU_TASKS": "train"}, tmp_path / "t")
    assert {t for t, (q, _) in only_train.items() if q == "gpu"} == {"generator_retrain.train"}


def test_shards_rendering_at_once_come_from_the_settings(tmp_path: Path) -> None:
    """GEN_AIRFLOW_RENDER_SHARDS_PER_RUN caps one campaign run's render shards (a deployment sizes it to its
    render workers); the default is 2, and no other task of the DAG is capped."""
    path = REPO / "dags" / "campaign_render.py"
    for value, want in ((None, 2), ("5", 5)):
        env = os.environ | {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
        env.pop("GEN_AIRFLOW_RENDER_SHARDS_PER_RUN", None)
        if value is not None:
            env["GEN_AIRFLOW_RENDER_SHARDS_PER_RUN"] = value
        res = subprocess.run([sys.executable, "-c", PARSE, str(path), str(REPO / "plugins")], env=env,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        (dag,) = json.loads(res.stdout.strip().splitlines()[-1])["dags"]
        assert dag["limits"]["render_shard"] == want
        assert all(v is None for t, v in dag["limits"].items() if t != "render_shard"), dag["limits"]

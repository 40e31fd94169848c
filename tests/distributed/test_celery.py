"""The factory past one machine, for real: the CeleryExecutor on this machine (`make test-distributed`).

Redis (Debian's ``redis-server``) and PostgreSQL (Airflow's metadata, Celery's results and the lineage
store) on free loopback ports; the Airflow scheduler, dag-processor and api-server; two Celery workers,
each with its own ``GEN_LOCAL_DIR``, ``HOME``, ``TMPDIR`` and Airflow home, so they share no local disk:
everything they exchange goes through S3, the databases and XCom. Worker ``cpu`` takes the queues
``default`` and ``gpu``; worker ``gpu`` only ``gpu`` (on this machine both are CPUs; on a real host the
GPU queue is the GPU workers' alone). The render shards are routed to the GPU queue, as in the
deployment (``GEN_AIRFLOW_GPU_QUEUE=gpu``).

One campaign of 6 shards: shards run on both workers (read from the task instances); the ``gpu`` worker
is killed (SIGKILL, its whole process group) in the middle of a shard, and the scheduler's heartbeat
check hands that shard to a retry on the other worker, which finishes it without duplicates or holes;
the images' pixels are those an in-process run (`genengine render`) of the same CSV draws.

``benchmarks/orchestration_overhead.py`` also runs the timed test on a simulated GPU
(``GEN_TEST_SIM_GPU_S_PER_IMAGE``: seconds of device time per image, `simulated_gpu`), where only the
``gpu`` worker takes the GPU queue, with ``GEN_TEST_GPU_CONCURRENCY`` task slots.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image

from gen_engine.config import Settings
from gen_engine.infra.lineage import LineageStore
from gen_engine.orchestration import run_campaign
from gen_engine.resources import resources

REPO = Path(__file__).resolve().parents[2]
DAGS = ("campaign_render", "campaign_watch", "dataset_ingest", "generator_retrain")
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
SHARDS, PER_SHARD = 6, 320  # 20 rows of 16 images per shard
CSV = "prompt,seed,count,asset_name\n" + "".join(
    f"a {c} {thing},{100 * i + j},16,{c}-{thing.replace(' ', '-')}-{j}\n"
    for i, c in enumerate(("red", "blue", "green", "yellow", "purple", "orange"))
    for j, thing in enumerate(("heart sticker", "circle", "star", "smiling face", "birthday cake") * 4))
SIM_GPU = os.environ.get("GEN_TEST_SIM_GPU_S_PER_IMAGE")  # the overhead benchmark's simulated GPU
GPU_SLOTS = int(os.environ.get("GEN_TEST_GPU_CONCURRENCY", "1"))  # task slots of the gpu worker


def _wait(what: str, ok: Any, timeout_s: float, logs: Path | None = None, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = ok()
        if got:
            return got
        if time.monotonic() > deadline:
            tails = "" if logs is None else "\n".join(
                f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(logs.glob("*.log")))
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}\n{tails}")
        time.sleep(every)


@dataclass
class Cluster:
    env: dict[str, str]
    root: Path
    airflow_db: str
    settings: Settings
    free_port: Any
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def cli(self, *args: str, timeout_s: float = 180) -> str:
        res = subprocess.run([AIRFLOW, *args], env=self.env, capture_output=True, text=True, timeout=timeout_s,
                             check=False)
        assert res.returncode == 0, f"airflow {' '.join(args)}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
        return res.stdout

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        log = open(self.root / "logs" / f"{name}.log", "wb")  # noqa: SIM115 (the child's; closed at stop)
        self.procs[name] = subprocess.Popen([AIRFLOW, *args], env=self.env | (env or {}), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, cwd=self.root)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(30)

    def worker(self, name: str, queues: str, concurrency: int = 1) -> None:
        """A Celery worker with a disk of its own (GEN_LOCAL_DIR, HOME, TMPDIR, Airflow home)."""
        own = self.root / "workers" / name
        for d in ("local", "home", "tmp", "airflow"):
            (own / d).mkdir(parents=True, exist_ok=True)
        self.start(f"worker-{name}", "celery", "worker", "--queues", queues, "--concurrency", str(concurrency),
                   "--celery-hostname", f"{name}@%h", env={
                       "GEN_LOCAL_DIR": str(own / "local"), "HOME": str(own / "home"), "TMPDIR": str(own / "tmp"),
                       "AIRFLOW_HOME": str(own / "airflow"), "GEN_TEST_WORKER": name,
                       "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.free_port())})

    def task_instances(self, run_id: str) -> list[dict[str, Any]]:
        with sa.create_engine(self.airflow_db).connect() as c:
            rows = c.execute(sa.text(
                "SELECT task_id, map_index, state, hostname, queue, try_number FROM task_instance "
                "WHERE dag_id = 'campaign_render' AND run_id = :r ORDER BY task_id, map_index"), {"r": run_id})
            return [dict(r._mapping) for r in rows]

    def parsed(self, dag_id: str) -> bool:
        with sa.create_engine(self.airflow_db).connect() as c:
            try:
                return c.execute(sa.text("SELECT count(*) FROM serialized_dag WHERE dag_id = :d"),
                                 {"d": dag_id}).scalar() > 0
            except sa.exc.ProgrammingError:
                return False

    def dag_run_state(self, run_id: str) -> str | None:
        with sa.create_engine(self.airflow_db).connect() as c:
            return c.execute(sa.text("SELECT state FROM dag_run WHERE dag_id = 'campaign_render' AND run_id = :r"),
                             {"r": run_id}).scalar()

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM if name.startswith("worker") else signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(postgres_url: str, s3_settings: Settings, tmp_path_factory: pytest.TempPathFactory, debian,
            free_port) -> Iterator[Cluster]:
    from cryptography.fernet import Fernet

    redis_server = debian("redis-server", "redis-server", "the distributed tests")  # skips before anything starts
    root = tmp_path_factory.mktemp("celery")
    (root / "logs").mkdir()
    tag = secrets.token_hex(4)
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        for db in (f"airflow_{tag}", f"lineage_{tag}"):
            c.execute(sa.text(f"CREATE DATABASE {db}"))
    base = postgres_url.rsplit("/", 1)[0]
    airflow_db, lineage_db = f"{base}/airflow_{tag}", f"{base}/lineage_{tag}"
    redis_port, api_port = free_port(), free_port()
    redis = subprocess.Popen([redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    # Everything from the environment, nothing from any airflow.cfg: each component has a home of its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "GEN_"))} | {
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": airflow_db,  # psycopg 3 is async too (no asyncpg)
        "AIRFLOW__CELERY__BROKER_URL": f"redis://127.0.0.1:{redis_port}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + airflow_db,
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "worker_name.hostname",
        "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__PORT": str(api_port),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        # A killed worker's task is noticed within ~20 s (default 5 minutes) and retried 2 s later.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "3",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        # A task's slot is free within 1 s of its process exiting (default: up to 5 s, docker/compose.yaml).
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        # Workers import the render code once, before forking (what docker/compose.yaml sets); the
        # overhead benchmark turns it off (GEN_TEST_CELERY_PRELOAD=0) to measure without.
        **({} if os.environ.get("GEN_TEST_CELERY_PRELOAD") == "0" else
           {"AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "simulated_gpu.CELERY_CONFIG" if SIM_GPU else
            "gen_engine.infra.celery_worker.CELERY_CONFIG"}),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])),
        "GEN_S3_ENDPOINT": s3_settings.s3_address,
        "GEN_S3_ACCESS_KEY": s3_settings.s3_access_key.get_secret_value(),
        "GEN_S3_SECRET_KEY": s3_settings.s3_secret_key.get_secret_value(),
        "GEN_LINEAGE_DB_URL": lineage_db,
        "GEN_LOCAL_DIR": str(root / "scheduler-local"),
        "GEN_AIRFLOW_GPU_QUEUE": "gpu", "GEN_AIRFLOW_GPU_TASKS": "render",
        "GEN_AIRFLOW_RETRY_DELAY_S": "2", "GEN_AIRFLOW_RENDER_POOL_SLOTS": str(max(2, GPU_SLOTS)),
        "GEN_AIRFLOW_RENDER_SHARDS_PER_RUN": str(max(2, GPU_SLOTS)),
        **({"GEN_TEST_SIM_GPU_S_PER_IMAGE": SIM_GPU} if SIM_GPU else {}),
    }
    from pydantic import SecretStr

    settings = s3_settings.model_copy(update={"lineage_db_url": SecretStr(lineage_db),
                                              "local_dir": root / "test-local"})
    cl = Cluster(env, root, airflow_db, settings, free_port)
    try:
        cl.cli("db", "migrate", timeout_s=300)
        cl.cli("pools", "set", "render", str(max(2, GPU_SLOTS)), "campaign render shards")
        cl.cli("pools", "set", "gpu", "1", "GPU work")
        cl.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1")
        cl.start("scheduler", "scheduler")
        cl.start("dag-processor", "dag-processor")
        cl.worker("cpu", "default" if SIM_GPU else "default,gpu")  # simulated: one GPU, the gpu worker's
        cl.worker("gpu", "gpu", GPU_SLOTS)
        from gen_engine.bootstrap import bootstrap

        bootstrap(resources(settings))  # the starter model, compiled, as production in the shared lineage
        import urllib.request

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/v2/monitor/health",  # noqa: S310
                                            timeout=2):
                    return True
            except OSError:
                return False

        _wait("the api-server", healthy, 120, root / "logs")
        _wait("the dag-processor to parse the DAGs", lambda: all(cl.parsed(d) for d in DAGS), 180, root / "logs",
              every=2)
        for other in DAGS[1:]:  # the schedules (watcher, ingest, retrain) stay out of this test's way
            cl.cli("dags", "pause", other)
        yield cl
    finally:
        cl.stop()
        redis.kill()
        redis.wait()
        admin.dispose()


def _pixels(store: Any, bucket: str, key: str) -> bytes:
    return np.asarray(Image.open(io.BytesIO(store.get_bytes(bucket, key))).convert("RGB")).tobytes()


def test_a_campaign_renders_on_two_workers_and_survives_one_killed_mid_shard(cluster: Cluster) -> None:
    res = resources(cluster.settings)
    store = res.storage
    # Under claimed/, as the watcher leaves a CSV it claimed for the run it triggers.
    store.put_bytes("campaigns", "claimed/distributed.csv", CSV.encode(), content_type="text/csv")
    run_id = "distributed-1"
    cluster.cli("dags", "trigger", "campaign_render", "--run-id", run_id, "--conf", json.dumps(
        {"csv_key": "claimed/distributed.csv", "campaign": "distributed", "shard_size": PER_SHARD}))
    logs = cluster.root / "logs"

    def second_shard_on_gpu_worker() -> dict[str, Any] | None:
        """A shard running on the gpu worker after it finished one of its own."""
        tis = [t for t in cluster.task_instances(run_id) if t["task_id"] == "render_shard" and t["hostname"] == "gpu"]
        if not any(t["state"] == "success" for t in tis):
            return None
        return next((t for t in tis if t["state"] == "running"), None)

    victim = _wait("a second shard running on the gpu worker", second_shard_on_gpu_worker, 240, logs, every=0.2)
    plan = json.loads(_wait("the plan's XCom", lambda: _plan(res, "distributed"), 60, logs))
    prefix = plan["prefix"]
    before = len(store.list("renders", prefix + "images/"))
    _wait("the shard to draw its first images", lambda: len(store.list("renders", prefix + "images/")) > before + 20,
          60, logs, every=0.1)
    still = second_shard_on_gpu_worker()
    assert still and still["map_index"] == victim["map_index"], "the shard finished before it could be killed"
    cluster.kill("worker-gpu")

    state = _wait("the DAG run to finish", lambda: cluster.dag_run_state(run_id) in ("success", "failed") and
                  cluster.dag_run_state(run_id), 420, logs, every=2)
    tis = cluster.task_instances(run_id)
    assert state == "success", tis
    shards = [t for t in tis if t["task_id"] == "render_shard"]
    assert len(shards) == SHARDS and all(t["state"] == "success" and t["queue"] == "gpu" for t in shards), shards
    others = [t for t in tis if t["task_id"] != "render_shard" and t["state"] == "success"]
    assert others and all(t["queue"] == "default" and t["hostname"] == "cpu" for t in others), others
    # Shards ran on both workers; the killed one was finished by a retry on the other.
    killed = next(t for t in shards if t["map_index"] == victim["map_index"])
    assert killed["try_number"] >= 2 and killed["hostname"] == "cpu", killed
    lineage = LineageStore.from_settings(cluster.settings)
    run = lineage.run(plan["run_id"])
    assert run["status"] == "success" and run["images"] == SHARDS * PER_SHARD
    assert (run["dag_id"], run["dag_run_id"]) == ("campaign_render", run_id)
    assert {t["hostname"] for t in shards} == {"cpu", "gpu"}, shards

    # No duplicates, no holes: one object per planned image, each recorded once.
    keys = sorted(o.key for o in store.list("renders", prefix + "images/"))
    outputs = lineage.run_outputs(plan["run_id"], limit=10 * SHARDS * PER_SHARD)
    assert len(keys) == len(set(keys)) == SHARDS * PER_SHARD
    assert sorted(o["object_key"] for o in outputs) == keys

    # The same pixels as one process drawing the same CSV (the files differ in their run's metadata).
    local = run_campaign(res, _local_copy(cluster.root, CSV), "distributed-local", model="production",
                         shard_size=PER_SHARD, progress=False)
    ours = {(o["row_number"], o["k"]): o["object_key"] for o in outputs}
    theirs = {(o["row_number"], o["k"]): o["object_key"] for o in lineage.run_outputs(local["run_id"], 10_000)}
    assert ours.keys() == theirs.keys()
    for rk in sorted(ours)[:: max(1, len(ours) // 120)]:  # 120 images spread over the run
        assert _pixels(store, "renders", ours[rk]) == _pixels(store, "renders", theirs[rk]), rk
    cluster.worker("gpu", "gpu")  # back, for the next test


def test_the_time_airflow_adds_per_shard(cluster: Cluster) -> None:
    """Per mapped shard under the CeleryExecutor: queued -> running -> success, minus the task's own work
    (`render_planned_shard`'s ``step_seconds``). ``benchmarks/orchestration_overhead.py`` reports it
    (GEN_BENCH_OUT: where the figures go)."""
    res = resources(cluster.settings)
    n_shards, per_shard = (12, 64) if SIM_GPU else (8, 160)
    csv = "prompt,seed,count,asset_name\n" + "".join(f"a sticker number {i},{i},16,timed-{i}\n"
                                                      for i in range(n_shards * per_shard // 16))
    res.storage.put_bytes("campaigns", "claimed/timed.csv", csv.encode(), content_type="text/csv")
    run_id = "timed-1"
    cluster.cli("dags", "trigger", "campaign_render", "--run-id", run_id, "--conf", json.dumps(
        {"csv_key": "claimed/timed.csv", "campaign": "timed", "shard_size": per_shard}))
    state = _wait("the timed DAG run", lambda: cluster.dag_run_state(run_id) in ("success", "failed") and
                  cluster.dag_run_state(run_id), 420, cluster.root / "logs", every=2)
    assert state == "success"
    with sa.create_engine(cluster.airflow_db).connect() as c:
        rows = [dict(r._mapping) for r in c.execute(sa.text(
            "SELECT t.map_index, t.hostname, t.queued_dttm, t.start_date, t.end_date, x.value FROM task_instance t "
            "JOIN xcom x ON x.dag_id = t.dag_id AND x.run_id = t.run_id AND x.task_id = t.task_id "
            "AND x.map_index = t.map_index AND x.key = 'return_value' "
            "WHERE t.dag_id = 'campaign_render' AND t.run_id = :r AND t.task_id = 'render_shard' "
            "ORDER BY t.start_date"), {"r": run_id})]
    assert len(rows) == n_shards
    shards = []
    for r in rows:
        value = json.loads(r["value"]) if isinstance(r["value"], str) else r["value"]
        wall = (r["end_date"] - r["queued_dttm"]).total_seconds()
        shards.append({"map_index": r["map_index"], "worker": r["hostname"], "images": per_shard,
                       "queued_to_running_s": (r["start_date"] - r["queued_dttm"]).total_seconds(),
                       "running_to_success_s": (r["end_date"] - r["start_date"]).total_seconds(),
                       "step_s": value["step_seconds"], "render_s": value["seconds"],
                       "airflow_s": wall - value["step_seconds"],
                       "inference_s": value["inference_seconds"],
                       **{k: value[k] for k in ("device_start", "device_end", "device_wait_seconds")},
                       "queued": r["queued_dttm"].isoformat(), "ended": r["end_date"].isoformat()})
    # Between shards on one worker: from one's end to the next's queueing (the scheduler seeing the free slot).
    gaps = []
    for w in {s["worker"] for s in shards}:
        mine = sorted((s for s in shards if s["worker"] == w), key=lambda s: s["queued"])
        gaps += [(np.datetime64(b["queued"][:26]) - np.datetime64(a["ended"][:26])) / np.timedelta64(1, "s")
                 for a, b in zip(mine, mine[1:], strict=False)]
    assert all(0 < s["airflow_s"] < 120 and s["step_s"] >= s["render_s"] for s in shards), shards
    if out := os.environ.get("GEN_BENCH_OUT"):
        Path(out).write_text(json.dumps({"shards": shards, "gaps_s": [float(g) for g in gaps]}, indent=1))


def _plan(res: Any, campaign: str) -> str | None:
    """The plan of the campaign's run, once validate_and_plan has written it."""
    found = [o.key for o in res.storage.list("renders", f"{campaign}/") if o.key.endswith("/work/plan.json")]
    if not found:
        return None
    plan = json.loads(res.storage.get_bytes("renders", found[0]))
    return json.dumps({"prefix": plan["prefix"], "run_id": plan["run_id"]})


def _local_copy(root: Path, text: str) -> str:
    path = root / "distributed-local.csv"
    path.write_text(text, encoding="utf-8")
    return str(path)

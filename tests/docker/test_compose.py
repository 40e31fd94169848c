"""Structural checks of the deployment files (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|PRIVATE_KEY|FERNET|TOKEN|ACCESS_KEY|SQL_ALCHEMY_CONN|BROKER_URL"
                         r"|RESULT_BACKEND|DB_URL")


def test_every_role_is_there() -> None:
    assert set(SERVICES) >= {
        "s3", "postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
        "airflow-triggerer", "airflow-worker-cpu", "airflow-worker-gpu",
    }
    assert all(SERVICES[s]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
               for s in SERVICES if s.startswith("airflow-"))


def test_images_are_pinned() -> None:
    for name, svc in SERVICES.items():
        image = svc["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d", tag), f"{name}: unpinned image {image}"
    dockerfile = (DOCKER / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M).group(1)
    assert re.search(r":\d+\.\d+\.\d+", base), f"Dockerfile base image not pinned: {base}"
    assert "-c /tmp/constraints-no-torch.txt" in dockerfile and "constraints.txt" in dockerfile


def test_long_running_services_have_healthchecks() -> None:
    for name, svc in SERVICES.items():
        if name != "airflow-init":
            assert "healthcheck" in svc and svc["healthcheck"]["test"], f"{name} has no healthcheck"
    assert SERVICES["airflow-init"]["restart"] == "no"


def test_gpu_worker_serves_queue_gpu_with_a_device_reservation() -> None:
    gpu = SERVICES["airflow-worker-gpu"]
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    cpu = SERVICES["airflow-worker-cpu"]
    assert "gpu" not in cpu["command"][cpu["command"].index("--queues") + 1]


def test_the_gpu_worker_runs_shards_at_once_and_the_campaign_and_pool_let_them_through() -> None:
    """Several task slots on the GPU worker keep its GPU drawing while the next shard starts (the
    shards take turns on the device): a campaign's concurrency and the render pool must allow as many."""
    from gen_engine.config import Settings

    gpu = SERVICES["airflow-worker-gpu"]
    slots = int(gpu["command"][gpu["command"].index("--concurrency") + 1])
    env = gpu.get("environment", {})
    settings = Settings(**{k.removeprefix("GEN_").lower(): v for k, v in env.items()
                           if k.startswith("GEN_AIRFLOW_RENDER") or k == "GEN_RENDER_DEVICE_TURNS"})
    assert slots >= 4 and settings.render_device_turns
    # The supervisor notices a finished task within a second, so the slot is free for the next shard.
    assert int(env["AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL"]) <= 1
    assert env["GEN_AIRFLOW_GPU_QUEUE"] == "gpu"  # the merge kept the common settings
    assert settings.airflow_render_shards_per_run >= slots and settings.airflow_render_pool_slots >= slots
    init = SERVICES["airflow-init"].get("environment", {})  # the service that creates the pool
    assert int(init.get("GEN_AIRFLOW_RENDER_POOL_SLOTS", 0)) >= slots


def test_the_training_task_is_routed_to_the_gpu_workers_queue() -> None:
    """The DAG reads the queue from Settings.airflow_gpu_queue: every Airflow service must agree on it."""
    from gen_engine.config import Settings

    gpu = SERVICES["airflow-worker-gpu"]
    queue = gpu["command"][gpu["command"].index("--queues") + 1]
    for name, svc in SERVICES.items():
        if name.startswith("airflow"):
            env = svc.get("environment", {})
            routed = env.get("GEN_AIRFLOW_GPU_QUEUE", Settings.model_fields["airflow_gpu_queue"].default)
            assert routed == queue, f"{name} would send training to another queue than the GPU worker's ({queue})"


def test_no_secret_is_inline() -> None:
    for name, svc in SERVICES.items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key) and isinstance(value, str) and not value.startswith("/run/secrets/"):
                # Every secret must be a ${VAR:?...} substitution; no user:password@ left once removed.
                assert "${" in value, f"{name}.{key} must come from the environment"
                literal = re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "", value)
                assert not re.search(r"://[^:/@]+:[^@]+@", literal), f"{name}.{key} carries an inline secret"
        command = " ".join(svc.get("command") or []) if isinstance(svc.get("command"), list) else svc.get("command", "")
        assert "requirepass" not in command or "${" in command, f"{name}: password inline in command"
    example = (DOCKER / ".env.example").read_text()
    assert all(line.endswith("=") for line in example.splitlines() if line and not line.startswith("#"))


def test_the_c2pa_signing_key_is_a_docker_secret_on_every_airflow_service() -> None:
    """Every Airflow role may render (workers) or sign nothing (the rest) but gets the same settings; the key
    and chain are files mounted from the host, named by ${VAR:?} substitutions, never environment text."""
    top = COMPOSE["secrets"]
    for secret in ("c2pa_cert_chain", "c2pa_private_key"):
        assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]*\}", top[secret]["file"]), top[secret]
    for name, svc in SERVICES.items():
        if name.startswith("airflow"):
            env = svc["environment"]
            assert env["GEN_C2PA_CERT_CHAIN"] == "/run/secrets/c2pa_cert_chain", name
            assert env["GEN_C2PA_PRIVATE_KEY"] == "/run/secrets/c2pa_private_key", name
            assert {"c2pa_cert_chain", "c2pa_private_key"} <= set(svc["secrets"]), name
            assert "${PROVENANCE_PRODUCER:?" in env["GEN_PROVENANCE_PRODUCER"], name


def test_published_ports_bind_loopback() -> None:
    for name, svc in SERVICES.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_the_gpu_worker_has_its_own_cuda_image_and_the_rest_the_cpu_one() -> None:
    """One Dockerfile, two builds: CPU torch for every role, CUDA torch + the `gpu` extra (TensorRT) for
    the GPU worker; the Dockerfile takes both as build arguments and installs the extras it is given."""
    gpu = SERVICES["airflow-worker-gpu"]
    args = gpu["build"]["args"]
    assert "/whl/cu" in args["TORCH_INDEX"] and "gpu" in args["EXTRAS"].split(",")
    assert gpu["image"] != SERVICES["airflow-worker-cpu"]["image"]
    for name, svc in SERVICES.items():
        if name.startswith("airflow") and name != "airflow-worker-gpu":
            assert "args" not in svc.get("build", {}), name  # the Dockerfile's defaults: CPU torch
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in dockerfile
    assert "ARG EXTRAS=deploy" in dockerfile
    assert "--index-url ${TORCH_INDEX}" in dockerfile and '".[${EXTRAS}]"' in dockerfile
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(d.startswith("tensorrt") for d in extras["gpu"])


def test_every_airflow_service_routes_the_same_task_kinds_to_the_gpu_queue() -> None:
    """Scheduler and workers must agree on the routing (it is read at parse time by every DAG processor)."""
    from gen_engine.config import Settings

    routes = set()
    for name, svc in SERVICES.items():
        if name.startswith("airflow"):
            env = svc.get("environment", {})
            routes.add(Settings(airflow_gpu_queue=env.get("GEN_AIRFLOW_GPU_QUEUE", "default"),
                                airflow_gpu_tasks=env.get("GEN_AIRFLOW_GPU_TASKS", "train,evaluate,compile,render"),
                                ).task_route("render")["queue"])
    assert routes == {"gpu"}


def test_the_workers_preload_the_render_code_from_a_celery_config_that_keeps_airflows() -> None:
    """Every Airflow service reads one Celery config (the scheduler's executor and the workers must agree),
    and it is Airflow's defaults plus the preload hook, importable from the installed package. Imported in
    a fresh interpreter: it loads Airflow's configuration, which this test process must not do before the
    DAG tests set up their Airflow home (tests/gen_engine/test_celery_worker.py does the same)."""
    import subprocess
    import sys

    paths = {SERVICES[s]["environment"].get("AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS")
             for s in SERVICES if s.startswith("airflow-")}
    assert paths == {"gen_engine.infra.celery_worker.CELERY_CONFIG"}
    module, _, name = paths.pop().rpartition(".")
    probe = ("import importlib; from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG; "
             f"print(getattr(importlib.import_module({module!r}), {name!r}) == DEFAULT_CELERY_CONFIG)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.strip().splitlines()[-1] == "True"

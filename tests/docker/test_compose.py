"""Structural checks of the deployment files (no Docker engine runs here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|TOKEN|ACCESS_KEY|SQL_ALCHEMY_CONN|BROKER_URL|RESULT_BACKEND|DB_URL")


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
            if SECRET_NAME.search(key) and isinstance(value, str):
                # Every secret must be a ${VAR:?...} substitution; no user:password@ left once removed.
                assert "${" in value, f"{name}.{key} must come from the environment"
                literal = re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "", value)
                assert not re.search(r"://[^:/@]+:[^@]+@", literal), f"{name}.{key} carries an inline secret"
        command = " ".join(svc.get("command") or []) if isinstance(svc.get("command"), list) else svc.get("command", "")
        assert "requirepass" not in command or "${" in command, f"{name}: password inline in command"
    example = (DOCKER / ".env.example").read_text()
    assert all(line.endswith("=") for line in example.splitlines() if line and not line.startswith("#"))


def test_published_ports_bind_loopback() -> None:
    for name, svc in SERVICES.items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"

"""Celery settings for the factory's workers: Airflow's own, plus the render code imported once per worker.

Airflow's task runner forks a fresh process for every task instance, from the Celery pool process that
received it. Each render shard then spent about 1.2 s importing torch, onnxruntime and the factory before
its first image (`benchmarks/orchestration_overhead.py`). Celery's ``import_modules`` signal fires in a
worker's main process before it forks its pool, so the modules imported here are already in memory in
every task process that descends from it, the way Airflow preloads its own task-runner modules.

Only imports happen here: no model, no encoder weights and no tensor operation, because a process that
forks after starting OpenMP or ONNX Runtime thread pools can hang its children. The scheduler imports
this module too (the CeleryExecutor reads the same settings) and pays nothing: the signal never fires there.

Used by ``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=gen_engine.infra.celery_worker.CELERY_CONFIG``
(docker/compose.yaml, the distributed test).
"""

from __future__ import annotations

import importlib
import logging
import time
from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import import_modules

log = logging.getLogger(__name__)

CELERY_CONFIG: dict[str, Any] = dict(DEFAULT_CELERY_CONFIG)

# What a render shard, an evaluation and a training task import before their first step.
PRELOAD = (
    "torch",
    "onnxruntime",
    "gen_engine.orchestration",
    "gen_engine.render.shard",
    "gen_engine.runtime.torch_backend",
    "gen_engine.runtime.onnxruntime_backend",
    "gen_engine.text",
)


def preload(modules: tuple[str, ...] = PRELOAD) -> dict[str, float]:
    """Import ``modules``; seconds each. A module that fails to import is logged and skipped: the task
    that needs it imports it again and reports the real error where it belongs."""
    took: dict[str, float] = {}
    for name in modules:
        t0 = time.monotonic()
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 (a worker must start even where an optional module is broken)
            log.warning("preload of %s failed (%s); tasks import it themselves", name, e)
            continue
        took[name] = time.monotonic() - t0
    return took


@import_modules.connect
def _on_worker_import_modules(*_: Any, **__: Any) -> None:
    took = preload()
    log.info("gen_engine preloaded %d modules for the task processes in %.2f s", len(took), sum(took.values()))

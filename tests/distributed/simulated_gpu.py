"""A GPU for the overhead benchmark (a GPU is outside the project, so it is the one thing mocked).

``AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS=simulated_gpu.CELERY_CONFIG``: the factory's worker settings
(`gen_engine.infra.celery_worker`), plus, in the worker's main process before it forks its tasks, every
loaded backend wrapped so that drawing a batch takes ``GEN_TEST_SIM_GPU_S_PER_IMAGE`` seconds per
image of device time (the benchmark's GPU: 2,048 images at 2,000 images/s per 64-image shard) and
returns black images. Everything else a shard does is real: the task process, the plan, the model
and caption-encoder load, the encoding, the C2PA signature, the uploads, the XCom and Airflow's part.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from celery.signals import import_modules

from gen_engine.infra.celery_worker import CELERY_CONFIG

__all__ = ["CELERY_CONFIG"]


class SimulatedGPU:
    """A loaded backend's identity with a device that takes a fixed time per image."""

    def __init__(self, real: Any, seconds_per_image: float) -> None:
        self.real, self.seconds_per_image = real, seconds_per_image
        self.name, self.precision = real.name, real.precision
        self.resolution, self.z_dim = real.resolution, real.z_dim

    def render(self, z: np.ndarray, text: np.ndarray) -> np.ndarray:
        time.sleep(len(z) * self.seconds_per_image)
        return np.zeros((len(z), self.resolution, self.resolution, 3), np.uint8)


@import_modules.connect
def _install(*_: Any, **__: Any) -> None:
    """In the worker only (the scheduler reads CELERY_CONFIG too and must stay untouched)."""
    import gen_engine.runtime as runtime

    seconds = float(os.environ["GEN_TEST_SIM_GPU_S_PER_IMAGE"])
    real_load = runtime.load_backend

    def load_backend(name: str, model_dir: Any) -> SimulatedGPU:
        return SimulatedGPU(real_load(name, model_dir), seconds)

    runtime.load_backend = load_backend

"""The metric registry: each metric is a function of one `EvalContext`, registered under its name.

Adding a metric is one file in this package with a function decorated ``@metric("name")`` (imported
by `gen_engine.evaluation`); `evaluate` runs the default ones, or those named. The pattern is
stylegan3's ``metric_main``: metrics know nothing of each other or of the model, only the context.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gen_engine.models.encoder import ImageEncoder


@dataclass
class EvalContext:
    """What the metrics see: the held-out rows, the images rendered for them (seed = index) and both sets
    of features in the evaluation encoder's space. ``render`` and ``encode`` are there for metrics that
    render or encode more (seed diversity)."""

    render: Callable[[np.ndarray, np.ndarray], np.ndarray]  # (z, text) -> (B, H, W, 3) uint8
    data: Any  # a datasets.curated.TrainData of held-out rows
    enc: ImageEncoder
    n: int
    text: np.ndarray  # (n, D) caption embeddings
    captions: list[str]
    fake: torch.Tensor  # (n, 3, R, R) uint8
    real_features: np.ndarray
    fake_features: np.ndarray
    labels: dict[str, torch.Tensor] | None = None
    encode: Callable[[torch.Tensor], np.ndarray] = field(default=lambda x: np.empty(0))


Metric = Callable[[EvalContext], dict[str, float]]
METRICS: dict[str, Metric] = {}
DEFAULT = ("fd", "r_precision", "color_judge", "attributes")  # seed_diversity costs 800 renders: on request


def metric(name: str) -> Callable[[Metric], Metric]:
    """Register ``fn`` as metric ``name``; it returns a dict of figures (empty where it does not apply)."""

    def register(fn: Metric) -> Metric:
        if name in METRICS:
            raise ValueError(f"metric '{name}' is registered twice")
        METRICS[name] = fn
        return fn

    return register

"""What every backend is: the `Backend` interface, its error, and the shared output conversion."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np

from gen_engine.errors import UserError


class Backend(Protocol):
    name: str
    precision: str  # of the arithmetic: fp32, fp16 (TensorRT) or int8 (the gated CPU engine); images record it
    resolution: int
    z_dim: int

    def render(self, z: np.ndarray, text: np.ndarray) -> np.ndarray:
        """(B, z_dim) float32, (B, 384) float32 -> (B, R, R, 3) uint8."""
        ...


class BackendUnavailable(UserError):
    """This backend cannot serve this model here (the message says why)."""


def to_uint8_nhwc(x: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8 (same rounding as the torch path)."""
    return np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)


def architecture(model_dir: Path) -> dict[str, int]:
    return json.loads((Path(model_dir) / "model.json").read_text())["architecture"]

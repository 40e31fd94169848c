"""Inference backends behind one interface: ``render(z, text_emb) -> uint8 NHWC images``.

Backends: ``torch`` (always available). ``auto`` picks the fastest available backend. The
compile/runtime work adds ``onnxruntime`` and ``tensorrt`` behind this same interface, so callers
(the campaign renderer, benchmarks) never change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


class Backend(Protocol):
    name: str
    resolution: int
    z_dim: int

    def render(self, z: np.ndarray, text: np.ndarray) -> np.ndarray:
        """(B, z_dim) float32, (B, 384) float32 -> (B, R, R, 3) uint8."""
        ...


class TorchBackend:
    """Eager PyTorch on the CPU (or CUDA when present); the reference every other backend matches."""

    name = "torch"

    def __init__(self, model_dir: Path, device: str = "cpu") -> None:
        import torch

        from gen_engine.training.checkpoint import load_generator

        self.torch = torch
        self.device = device
        self.g, self.meta = load_generator(model_dir, device)
        self.resolution, self.z_dim = self.g.cfg.resolution, self.g.cfg.z_dim

    def render(self, z: np.ndarray, text: np.ndarray) -> np.ndarray:
        from gen_engine.training.loop import to_uint8

        assert z.ndim == 2 and z.shape[1] == self.z_dim and text.shape[0] == z.shape[0], (z.shape, text.shape)
        with self.torch.inference_mode():
            out = self.g(self.torch.from_numpy(z).to(self.device), self.torch.from_numpy(text).to(self.device))
        return to_uint8(out)


BACKENDS = ("auto", "torch")


def load_backend(name: str, model_dir: Path) -> Backend:
    """Load a backend by name; ``auto`` takes the fastest that loads, in order of preference."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")
    return TorchBackend(model_dir)

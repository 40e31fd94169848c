"""The reference backend: eager PyTorch."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from gen_engine.runtime.base import to_uint8_nhwc

log = logging.getLogger(__name__)


class TorchBackend:
    """Eager PyTorch (CUDA when present); the reference every other backend matches."""

    name = "torch"
    precision = "fp32"

    def __init__(self, model_dir: Path, device: str | None = None) -> None:
        import torch

        from gen_engine.models.artifact import load_generator

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.g, self.meta = load_generator(model_dir, self.device)
        self.resolution, self.z_dim = self.g.cfg.resolution, self.g.cfg.z_dim

    def render(self, z: np.ndarray, text: np.ndarray) -> np.ndarray:
        assert z.ndim == 2 and z.shape[1] == self.z_dim and text.shape[0] == z.shape[0], (z.shape, text.shape)
        with self.torch.inference_mode():
            out = self.g(self.torch.from_numpy(z).to(self.device), self.torch.from_numpy(text).to(self.device))
        return to_uint8_nhwc(out.float().cpu().numpy())

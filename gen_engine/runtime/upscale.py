"""The learned x4 upsampler behind the same backends as the generator: ``upsample(uint8 NHWC) -> x4``.

``onnxruntime`` runs the compiled ``upsampler.onnx`` (CPU, or CUDA where present; on a TensorRT host
the upsampler runs under ONNX Runtime's CUDA provider: no TensorRT plan is built for it yet), ``torch``
the safetensors weights. Both round alike, so they agree within one level of 8 bits. A model without an
upsampler has none (`load_upscaler` returns None) and sizes above native are resized with Lanczos.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from gen_engine.hashing import sha256_file
from gen_engine.models.upsampler import WEIGHTS, has_upsampler, load_upsampler, upsample_uint8

log = logging.getLogger(__name__)
ONNX_FILE = "upsampler.onnx"


class Upscaler(Protocol):
    name: str
    scale: int
    version: str  # first 12 hex digits of the weights' sha256: part of every upscaled image's parameters

    def upsample(self, imgs: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, 4H, 4W, 3) uint8."""
        ...


class TorchUpscaler:
    name = "torch"

    def __init__(self, model_dir: Path) -> None:
        self.net, meta = load_upsampler(model_dir)
        self.scale = int(meta["architecture"]["scale"])
        self.version = sha256_file(Path(model_dir) / WEIGHTS)[:12]

    def upsample(self, imgs: np.ndarray) -> np.ndarray:
        return upsample_uint8(self.net, imgs)


class OnnxRuntimeUpscaler:
    name = "onnxruntime"

    def __init__(self, model_dir: Path) -> None:
        import json

        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = len(os.sched_getaffinity(0))
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.sess = ort.InferenceSession(str(Path(model_dir) / ONNX_FILE), so, providers=providers)
        self.scale = int(json.loads((Path(model_dir) / "upsampler.json").read_text())["architecture"]["scale"])
        self.version = sha256_file(Path(model_dir) / WEIGHTS)[:12]

    def upsample(self, imgs: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(imgs.transpose(0, 3, 1, 2), np.float32) / np.float32(255.0)
        y = self.sess.run(["hr"], {"lr": x})[0]
        return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


def load_upscaler(backend: str, model_dir: Path) -> Upscaler | None:
    """The upsampler for a generator backend (``torch`` -> torch, anything else -> ONNX Runtime when
    compiled), or None when the model has no upsampler."""
    model_dir = Path(model_dir)
    if not has_upsampler(model_dir):
        return None
    if backend != "torch" and (model_dir / ONNX_FILE).exists():
        try:
            return OnnxRuntimeUpscaler(model_dir)
        except Exception as e:  # a corrupt or foreign file: torch serves it
            log.warning("upsampler.onnx could not be loaded (%s); upsampling with torch", str(e)[:200])
    return TorchUpscaler(model_dir)


def passes_for(native: int, size: tuple[int, int] | None, scale: int = 4, max_passes: int = 2) -> int:
    """How many x4 passes a requested size needs: the fewest that reach its larger side (at most two:
    x16), 0 for native or smaller."""
    if not size or max(size) <= native:
        return 0
    n, side = 0, native
    while side < max(size) and n < max_passes:
        side, n = side * scale, n + 1
    return n

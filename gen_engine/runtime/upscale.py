"""The learned x4 upsampler behind the same backends as the generator: ``upsample(uint8 NHWC) -> x4``.

``tensorrt`` runs ``upsampler.plan`` (fp16, built at compile on a TensorRT host and loaded only where its
key matches, as the generator's), ``onnxruntime`` the compiled ``upsampler.onnx`` (CPU, or CUDA where
present), ``torch`` the safetensors weights: each falls back to the next. ONNX Runtime and torch round
alike, so they agree within one level of 8 bits. A model without an upsampler has none (`load_upscaler`
returns None) and sizes above native are resized with Lanczos.
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
PLAN_FILE = "upsampler.plan"


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


def _identity(model_dir: Path) -> tuple[int, str]:
    """An upsampler's scale and version (the first 12 hex digits of its weights' sha256)."""
    import json

    meta = json.loads((Path(model_dir) / "upsampler.json").read_text())
    return int(meta["architecture"]["scale"]), sha256_file(Path(model_dir) / WEIGHTS)[:12]


class OnnxRuntimeUpscaler:
    name = "onnxruntime"

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = len(os.sched_getaffinity(0))
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.sess = ort.InferenceSession(str(Path(model_dir) / ONNX_FILE), so, providers=providers)
        self.scale, self.version = _identity(model_dir)

    def upsample(self, imgs: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(imgs.transpose(0, 3, 1, 2), np.float32) / np.float32(255.0)
        y = self.sess.run(["hr"], {"lr": x})[0]
        return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8).transpose(0, 2, 3, 1)


class TensorRTUpscaler:
    """``upsampler.plan``, loaded only where its key (ONNX hash, TensorRT version, GPU) matches this host."""

    name = "tensorrt"

    def __init__(self, model_dir: Path) -> None:
        import json

        from gen_engine.compile.tensorrt_build import engine_key
        from gen_engine.runtime.base import BackendUnavailable

        plan, key_file, onnx_file = (Path(model_dir) / f for f in (PLAN_FILE, PLAN_FILE + ".json", ONNX_FILE))
        if not plan.exists() or not key_file.exists() or not onnx_file.exists():
            raise BackendUnavailable(f"no TensorRT upsampler engine in {model_dir}")
        here = engine_key(sha256_file(onnx_file))
        if here is None:
            raise BackendUnavailable("TensorRT or a CUDA GPU is not available on this host")
        if json.loads(key_file.read_text()) != here:
            raise BackendUnavailable(f"upsampler engine built for another host than {here}")
        self.scale, self.version = _identity(model_dir)
        self._load(plan)  # pragma: no cover (GPU hosts only)

    def _load(self, plan: Path) -> None:  # pragma: no cover (GPU hosts only)
        import tensorrt as trt
        import torch

        from gen_engine.runtime.base import BackendUnavailable

        self.torch = torch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{plan} is corrupt or was built by another TensorRT")
        self.ctx = self.engine.create_execution_context()

    def upsample(self, imgs: np.ndarray) -> np.ndarray:  # pragma: no cover (GPU hosts only)
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(imgs.transpose(0, 3, 1, 2))).cuda().float() / 255.0
        b, _, h, w = x.shape
        y = torch.empty((b, 3, h * self.scale, w * self.scale), device="cuda", dtype=torch.float32)
        self.ctx.set_input_shape("lr", tuple(x.shape))
        for name, t in (("lr", x), ("hr", y)):
            self.ctx.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        self.ctx.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return (y.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def load_upscaler(backend: str, model_dir: Path) -> Upscaler | None:
    """The upsampler for a generator backend (``torch`` -> torch; ``tensorrt`` -> its TensorRT engine when
    one matches this host; otherwise ONNX Runtime when compiled), or None when the model has no upsampler.
    Whatever cannot load falls back to the next, with a warning."""
    model_dir = Path(model_dir)
    if not has_upsampler(model_dir):
        return None
    if backend == "tensorrt" and (model_dir / PLAN_FILE).exists():
        try:
            return TensorRTUpscaler(model_dir)
        except Exception as e:  # another host's engine, or no GPU: ONNX Runtime serves it
            log.warning("upsampler.plan not used (%s); trying ONNX Runtime", str(e)[:200])
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

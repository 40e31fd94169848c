"""A prebuilt TensorRT engine (GPU hosts with a matching engine only)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from gen_engine.runtime.base import BackendUnavailable, architecture, to_uint8_nhwc

log = logging.getLogger(__name__)


class TensorRTBackend:
    """A prebuilt fp16 engine; loaded only where its key (ONNX hash, TensorRT version, GPU) matches."""

    name = "tensorrt"
    precision = "fp16"

    def __init__(self, model_dir: Path) -> None:
        from gen_engine.compile.tensorrt_build import engine_key
        from gen_engine.hashing import sha256_file

        plan, key_file, onnx_file = (Path(model_dir) / f for f in ("generator.plan", "generator.plan.json",
                                                                   "generator.onnx"))
        if not plan.exists() or not key_file.exists() or not onnx_file.exists():
            raise BackendUnavailable(f"no TensorRT engine in {model_dir}")
        here = engine_key(sha256_file(onnx_file))
        if here is None:
            raise BackendUnavailable("TensorRT or a CUDA GPU is not available on this host")
        built_for = json.loads(key_file.read_text())
        if built_for != here:
            raise BackendUnavailable(f"engine built for {built_for}, this host is {here}")
        self._load(plan)  # pragma: no cover (GPU hosts only)
        arch = architecture(model_dir)  # pragma: no cover
        self.resolution, self.z_dim = arch["resolution"], arch["z_dim"]  # pragma: no cover

    def _load(self, plan: Path) -> None:  # pragma: no cover (GPU hosts only)
        import tensorrt as trt
        import torch

        self.torch = torch
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{plan} is corrupt or was built by another TensorRT")
        self.ctx = self.engine.create_execution_context()

    def render(self, z: np.ndarray, text: np.ndarray) -> np.ndarray:  # pragma: no cover (GPU hosts only)
        torch = self.torch
        b = z.shape[0]
        zt, tt = torch.from_numpy(z).cuda(), torch.from_numpy(text).cuda()
        out = torch.empty((b, 3, self.resolution, self.resolution), device="cuda", dtype=torch.float32)
        self.ctx.set_input_shape("z", tuple(zt.shape))
        self.ctx.set_input_shape("text", tuple(tt.shape))
        for name, t in (("z", zt), ("text", tt), ("image", out)):
            self.ctx.set_tensor_address(name, t.data_ptr())
        stream = torch.cuda.current_stream()
        self.ctx.execute_async_v3(stream.cuda_stream)
        stream.synchronize()
        return to_uint8_nhwc(out.cpu().numpy())

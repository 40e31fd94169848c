"""Inference backends behind one interface: ``render(z, text_emb) -> uint8 NHWC images``.

Backends, fastest first: ``tensorrt`` (a prebuilt engine matching this GPU and TensorRT version),
``onnxruntime`` (the compiled ``generator.onnx``; CPU, or the CUDA provider when present) and
``torch`` (eager; always available, the reference). ``auto`` takes the first that loads. A missing,
corrupt or mismatched artifact is detected here, before rendering starts, and the next backend is
used with a logged warning: a campaign never dies half-way for a backend's sake.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np

from gen_engine.errors import UserError

log = logging.getLogger(__name__)
BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


class Backend(Protocol):
    name: str
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


def _architecture(model_dir: Path) -> dict[str, int]:
    return json.loads((Path(model_dir) / "model.json").read_text())["architecture"]


class TorchBackend:
    """Eager PyTorch (CUDA when present); the reference every other backend matches."""

    name = "torch"

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


class OnnxRuntimeBackend:
    """ONNX Runtime over generator.onnx: threads = cores, full graph optimisation, I/O binding."""

    name = "onnxruntime"

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort

        path = Path(model_dir) / "generator.onnx"
        if not path.exists():
            raise BackendUnavailable(f"no {path.name} in {model_dir} (run `genengine compile`)")
        arch = _architecture(model_dir)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = len(os.sched_getaffinity(0))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.sess = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as e:  # corrupt or foreign file: ORT raises its own exception types
            raise BackendUnavailable(f"{path} could not be loaded: {str(e)[:200]}") from None
        shapes = {i.name: i.shape for i in self.sess.get_inputs()}
        if shapes.get("z", [None, None])[1] != arch["z_dim"] or shapes.get("text", [None, None])[1] != arch["text_dim"]:
            raise BackendUnavailable(f"{path} does not match model.json (inputs {shapes})")
        self.resolution, self.z_dim = arch["resolution"], arch["z_dim"]
        self.provider = self.sess.get_providers()[0]
        self.device = "cuda" if self.provider == "CUDAExecutionProvider" else "cpu"

    def render(self, z: np.ndarray, text: np.ndarray) -> np.ndarray:
        # I/O binding: inputs are bound from host memory and the output is allocated by ORT on the
        # provider's device (GPU memory under CUDA, so ORT copies once, at the end, not per node).
        binding = self.sess.io_binding()
        binding.bind_cpu_input("z", np.ascontiguousarray(z, np.float32))
        binding.bind_cpu_input("text", np.ascontiguousarray(text, np.float32))
        binding.bind_output("image", self.device)
        self.sess.run_with_iobinding(binding)
        return to_uint8_nhwc(binding.copy_outputs_to_cpu()[0])


class TensorRTBackend:
    """A prebuilt fp16 engine; loaded only where its key (ONNX hash, TensorRT version, GPU) matches."""

    name = "tensorrt"

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
        arch = _architecture(model_dir)  # pragma: no cover
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


_CLASSES = {"tensorrt": TensorRTBackend, "onnxruntime": OnnxRuntimeBackend, "torch": TorchBackend}


def load_backend(name: str, model_dir: Path) -> Backend:
    """Load a backend by name. ``auto`` and an unusable named backend fall through, in order of speed,
    to the next one that loads (logged as a warning); torch is the last resort and always works."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")
    speed_order = list(_CLASSES)
    order = speed_order if name == "auto" else speed_order[speed_order.index(name):]
    for candidate in order:
        try:
            backend = _CLASSES[candidate](Path(model_dir))
        except BackendUnavailable as e:
            # No TensorRT on a CPU host is normal under `auto`; anything else is worth a warning.
            quiet = name == "auto" and candidate == "tensorrt"
            (log.info if quiet else log.warning)("backend %s unavailable: %s; trying the next one", candidate, e)
            continue
        if name not in ("auto", candidate):
            log.warning("backend %s was asked for but could not load; rendering with %s", name, candidate)
        return backend
    raise AssertionError("unreachable: the torch backend always loads")

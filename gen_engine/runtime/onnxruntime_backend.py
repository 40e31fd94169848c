"""The compiled generator under ONNX Runtime: generator.onnx (CPU, or CUDA where present), or on CPU the
gated int8 engine generator.int8.onnx where the model's compile kept one (`compile.quantize`)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from gen_engine.compile.quantize import INT8_FILE
from gen_engine.runtime.base import BackendUnavailable, architecture, to_uint8_nhwc

log = logging.getLogger(__name__)


class OnnxRuntimeBackend:
    """ONNX Runtime over generator.onnx (or its int8 twin): threads = cores, full graph optimisation, I/O binding."""

    name = "onnxruntime"

    def __init__(self, model_dir: Path) -> None:
        import onnxruntime as ort

        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        path = Path(model_dir) / "generator.onnx"
        self.precision = "fp32"
        if providers[0] == "CPUExecutionProvider" and int8_accepted(Path(model_dir)):
            path, self.precision = Path(model_dir) / INT8_FILE, "int8"
        if not path.exists():
            raise BackendUnavailable(f"no {path.name} in {model_dir} (run `genengine compile`)")
        arch = architecture(model_dir)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = len(os.sched_getaffinity(0))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
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


def int8_accepted(model_dir: Path) -> bool:
    """The model's compile kept a gated int8 engine (its report says so and the file is there)."""
    try:
        report = json.loads((model_dir / "compile_report.json").read_text())
    except (OSError, ValueError):
        return False
    return bool((report.get("int8") or {}).get("accepted")) and (model_dir / INT8_FILE).exists()

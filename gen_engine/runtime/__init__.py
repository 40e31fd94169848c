"""Inference backends behind one interface: ``render(z, text_emb) -> uint8 NHWC images``.

Backends, fastest first: ``tensorrt`` (a prebuilt engine matching this GPU and TensorRT version),
``onnxruntime`` (the compiled ``generator.onnx``; CPU, or the CUDA provider when present) and
``torch`` (eager; always available, the reference). ``auto`` takes the first that loads. A missing,
corrupt or mismatched artifact is detected here, before rendering starts, and the next backend is
used with a logged warning: a campaign never dies half-way for a backend's sake.

Each backend is one module here; adding one is a class with ``name``, ``resolution``, ``z_dim`` and
``render`` that raises `BackendUnavailable` when it cannot serve a model, plus its entry in
`_CLASSES` (whose order is the speed order ``auto`` tries).
"""

from __future__ import annotations

import logging
from pathlib import Path

from gen_engine.errors import UserError
from gen_engine.runtime.base import Backend, BackendUnavailable, to_uint8_nhwc
from gen_engine.runtime.onnxruntime_backend import OnnxRuntimeBackend
from gen_engine.runtime.tensorrt_backend import TensorRTBackend
from gen_engine.runtime.torch_backend import TorchBackend

__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "OnnxRuntimeBackend", "TensorRTBackend", "TorchBackend",
           "load_backend", "to_uint8_nhwc"]
log = logging.getLogger(__name__)
_CLASSES = {"tensorrt": TensorRTBackend, "onnxruntime": OnnxRuntimeBackend, "torch": TorchBackend}
BACKENDS = ("auto", *_CLASSES)


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

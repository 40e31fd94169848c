"""TensorRT engine builds (fp16, optimisation profile min 1 / opt 64 / max 512, timing cache).

Only on hosts with TensorRT and a CUDA GPU; elsewhere `build_if_available` returns the reason it
skipped, which goes into the compile report. Engines are keyed by (ONNX sha256, TensorRT version,
GPU name, compute capability): an engine is only ever loaded where it was built for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def engine_key(onnx_sha256: str) -> dict[str, Any] | None:
    """The identity an engine must match to be loaded here, or None without TensorRT/CUDA."""
    try:
        import tensorrt as trt
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    cc = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return {"onnx_sha256": onnx_sha256, "tensorrt": trt.__version__, "gpu": name, "compute_capability": cc}


def build_if_available(model_dir: Path, onnx_path: Path) -> dict[str, Any]:
    from gen_engine.hashing import sha256_file

    key = engine_key(sha256_file(onnx_path))
    if key is None:
        return {"built": False, "reason": "TensorRT or a CUDA GPU is not available on this host"}
    return build_engine(model_dir, onnx_path, key)  # pragma: no cover (GPU hosts only)


def build_engine(model_dir: Path, onnx_path: Path, key: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
    import json
    import time

    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        return {"built": False, "reason": f"ONNX parse failed: {errors}"}
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    z_dim = network.get_input(0).shape[1]
    t_dim = network.get_input(1).shape[1]
    profile.set_shape("z", (1, z_dim), (64, z_dim), (512, z_dim))
    profile.set_shape("text", (1, t_dim), (64, t_dim), (512, t_dim))
    config.add_optimization_profile(profile)
    cache_path = model_dir / "tensorrt.timing_cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.monotonic()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        return {"built": False, "reason": "TensorRT build returned no engine"}
    engine_path = model_dir / "generator.plan"
    engine_path.write_bytes(bytes(plan))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    (model_dir / "generator.plan.json").write_text(json.dumps(key, indent=1))
    return {"built": True, "file": engine_path.name, "bytes": engine_path.stat().st_size, "key": key,
            "build_seconds": round(time.monotonic() - t0, 1)}

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


def build_if_available(model_dir: Path, onnx_path: Path, stem: str = "generator") -> dict[str, Any]:
    """Build ``<stem>.plan`` (+ ``<stem>.plan.json``, its key) from ``onnx_path`` where TensorRT and a CUDA
    GPU are present; elsewhere (and on failure) the reason, for the compile report. ``stem``: ``generator``
    or ``upsampler``, whose inputs have their own optimisation profile (`PROFILES`)."""
    from gen_engine.hashing import sha256_file

    key = engine_key(sha256_file(onnx_path))
    if key is None:
        return {"built": False, "reason": "TensorRT or a CUDA GPU is not available on this host"}
    return build_engine(model_dir, onnx_path, key, stem)  # pragma: no cover (GPU hosts only)


def _profile_shapes(stem: str, network: Any) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) per input: the generator by batch (1 / 64 / 512); the upsampler by batch and side
    (a first x4 pass on 64 px batches of 32, the second on 256 px chunks of 4: `upscale_batch`)."""
    if stem == "upsampler":
        return {"lr": ((1, 3, 16, 16), (32, 3, 64, 64), (64, 3, 256, 256))}
    z_dim, t_dim = network.get_input(0).shape[1], network.get_input(1).shape[1]
    return {"z": ((1, z_dim), (64, z_dim), (512, z_dim)), "text": ((1, t_dim), (64, t_dim), (512, t_dim))}


def build_engine(model_dir: Path, onnx_path: Path, key: dict[str, Any],
                 stem: str = "generator") -> dict[str, Any]:  # pragma: no cover (GPU hosts only)
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
    for name, (lo, opt, hi) in _profile_shapes(stem, network).items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_path = model_dir / "tensorrt.timing_cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.monotonic()
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        return {"built": False, "reason": "TensorRT build returned no engine"}
    engine_path = model_dir / f"{stem}.plan"
    engine_path.write_bytes(bytes(plan))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    (model_dir / f"{stem}.plan.json").write_text(json.dumps(key, indent=1))
    return {"built": True, "file": engine_path.name, "bytes": engine_path.stat().st_size, "key": key,
            "build_seconds": round(time.monotonic() - t0, 1)}

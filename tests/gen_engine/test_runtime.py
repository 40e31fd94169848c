"""Compile and runtime: ONNX parity, dynamic batch, cross-backend determinism, fallbacks, TensorRT skips."""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gen_engine.compile.onnx_export import PARITY_TOL, compile_model
from gen_engine.models.artifact import save_model
from gen_engine.models.gan import GANConfig, Generator
from gen_engine.models.noise import seed_noise
from gen_engine.runtime import BackendUnavailable, OnnxRuntimeBackend, TensorRTBackend, TorchBackend, load_backend


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(3)
    g = Generator(GANConfig(resolution=32, nf=8, text_stem=True, text_norm=True))  # as configs/shapes32.yaml
    g.fit_text_norm(torch.nn.functional.normalize(torch.randn(64, 384) + 2.0, dim=1))
    d = save_model(tmp_path_factory.mktemp("m") / "model", g, {"name": "generator"})
    report = compile_model(d)
    assert report["onnx"]["parity"]["passed"]
    return d


def test_onnx_parity_and_report(compiled: Path) -> None:
    import json

    report = json.loads((compiled / "compile_report.json").read_text())
    p = report["onnx"]["parity"]
    assert p["pairs"] == 64 and p["max_abs_error"] <= PARITY_TOL
    assert report["onnx"]["opset"] >= 17 and len(report["onnx"]["sha256"]) == 64
    assert {"torch", "onnx", "onnxruntime"} <= set(report["versions"])
    assert report["tensorrt"]["built"] is False and report["tensorrt"]["reason"]


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_dynamic_batch(compiled: Path, batch: int) -> None:
    ort_be = OnnxRuntimeBackend(compiled)
    z = np.stack([seed_noise(s, 100) for s in range(batch)])
    text = np.random.default_rng(batch).standard_normal((batch, 384)).astype(np.float32)
    out = ort_be.render(z, text)
    assert out.shape == (batch, 32, 32, 3) and out.dtype == np.uint8


def test_same_seed_same_picture_on_every_backend(compiled: Path) -> None:
    z = np.stack([seed_noise(s, 100) for s in (0, 1, 2**32 - 1)])
    text = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    a = TorchBackend(compiled).render(z, text)
    b = OnnxRuntimeBackend(compiled).render(z, text)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # parity 1e-4 in [-1, 1] is < 1 LSB but for rounding


def test_auto_prefers_onnxruntime_and_falls_back(compiled: Path, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    assert load_backend("auto", compiled).name == "onnxruntime"
    broken = tmp_path / "broken"
    shutil.copytree(compiled, broken)
    (broken / "generator.onnx").write_bytes(b"this is not an onnx model")
    with caplog.at_level(logging.WARNING):
        assert load_backend("onnxruntime", broken).name == "torch"
    assert "could not be loaded" in caplog.text and "rendering with torch" in caplog.text
    (broken / "generator.onnx").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert load_backend("auto", broken).name == "torch"
    assert "no generator.onnx" in caplog.text


def test_mismatched_onnx_is_refused(compiled: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    torch.manual_seed(0)
    save_model(other, Generator(GANConfig(resolution=32, nf=8, z_dim=64)), {"name": "generator"})
    shutil.copy(compiled / "generator.onnx", other / "generator.onnx")
    with pytest.raises(BackendUnavailable, match="does not match"):
        OnnxRuntimeBackend(other)


def test_tensorrt_engine_is_refused_without_a_match(compiled: Path, tmp_path: Path) -> None:
    d = tmp_path / "trt"
    shutil.copytree(compiled, d)
    with pytest.raises(BackendUnavailable, match="no TensorRT engine"):
        TensorRTBackend(d)
    (d / "generator.plan").write_bytes(b"\x00" * 64)
    (d / "generator.plan.json").write_text('{"gpu": "some other GPU"}')
    with pytest.raises(BackendUnavailable):
        TensorRTBackend(d)
    assert load_backend("tensorrt", d).name in ("onnxruntime", "torch")


HAS_TRT = importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and a CUDA GPU (the gpu extra on a GPU host)")
def test_tensorrt_engine_parity(compiled: Path) -> None:  # pragma: no cover (GPU hosts only)
    report = compile_model(compiled)
    assert report["tensorrt"]["built"]
    z = np.stack([seed_noise(s, 100) for s in range(64)])
    text = np.random.default_rng(0).standard_normal((64, 384)).astype(np.float32)
    ref = TorchBackend(compiled, device="cpu").render(z, text).astype(np.float64)
    got = TensorRTBackend(compiled).render(z, text).astype(np.float64)
    psnr = 10 * np.log10(255.0**2 / max(np.mean((ref - got) ** 2), 1e-12))
    assert psnr >= 35.0

"""The int8 render engine: quantized, gated at compile time, served only where its compile kept it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from gen_engine.compile.onnx_export import compile_model
from gen_engine.compile.quantize import INT8_FILE, GateData, cpu_has_vnni, psnr_db
from gen_engine.errors import UserError
from gen_engine.evaluation import frechet_distance
from gen_engine.models.artifact import save_model
from gen_engine.models.gan import GANConfig, Generator
from gen_engine.models.noise import seed_noise
from gen_engine.runtime import OnnxRuntimeBackend, load_backend

LOOSE = {"psnr_min": 0.0, "fd_max": 1e9}


def pooled(images: np.ndarray) -> np.ndarray:
    """A stand-in evaluation encoder: mean colour of each image quadrant (12 features)."""
    n, h, w, _ = images.shape
    return images.reshape(n, 2, h // 2, 2, w // 2, 3).astype(np.float64).mean((2, 4)).reshape(n, -1) / 255


def gate_data(n: int = 64) -> GateData:
    rng = np.random.default_rng(0)
    text = rng.standard_normal((n, 384)).astype(np.float32)
    real = pooled(rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8))
    return GateData(text / np.linalg.norm(text, axis=1, keepdims=True),
                    lambda images: frechet_distance(real, pooled(images)), "random test data")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(5)
    g = Generator(GANConfig(resolution=32, nf=8, text_stem=True, text_norm=True))
    g.fit_text_norm(torch.nn.functional.normalize(torch.randn(64, 384) + 2.0, dim=1))
    return save_model(tmp_path_factory.mktemp("m") / "model", g, {"name": "generator"})


@pytest.fixture()
def folder(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "model"))


def test_an_engine_that_misses_the_bound_is_refused_and_fp32_serves(folder: Path) -> None:
    report = compile_model(folder, precision="int8", gate=gate_data(), int8_bounds={"psnr_min": 1000.0})
    q = report["int8"]
    assert q["accepted"] is False and "PSNR" in q["reason"] and "renders with fp32" in q["reason"]
    assert 0 < q["psnr_db_mean"] < 1000 and q["psnr_db_bound"] == 1000.0
    assert "fd_int8" in q and "fd_fp32" in q  # both halves of the gate measured and reported
    assert not (folder / INT8_FILE).exists() and "file" not in q
    assert report["precision"] == {"requested": "int8", "cpu_engine": "fp32"}
    assert json.loads((folder / "compile_report.json").read_text())["int8"]["accepted"] is False
    assert OnnxRuntimeBackend(folder).precision == "fp32"


def test_the_fd_half_of_the_gate_refuses_too(folder: Path) -> None:
    q = compile_model(folder, precision="int8", gate=gate_data(), int8_bounds={"psnr_min": 0.0, "fd_max": -1.0})["int8"]
    assert q["accepted"] is False and "Frechet distance" in q["reason"] and "PSNR" not in q["reason"]


def test_without_evaluation_data_the_gate_keeps_fp32_and_says_why(folder: Path) -> None:
    q = compile_model(folder, precision="int8", int8_bounds={"psnr_min": 0.0})["int8"]
    assert q["accepted"] is False and "could not be measured" in q["reason"]
    assert load_backend("onnxruntime", folder).precision == "fp32"


def test_an_accepted_engine_is_served_and_draws_the_same_pictures(folder: Path) -> None:
    report = compile_model(folder, precision="int8", gate=gate_data(), int8_bounds=LOOSE)
    q = report["int8"]
    assert q["accepted"] and (folder / INT8_FILE).exists() and len(q["sha256"]) == 64
    assert q["calibration_images"] >= 64 and "seeds" in q["calibration"]
    assert ("7-bit" in q["weights"]) == (not cpu_has_vnni())  # full-range weights saturate without VNNI
    assert set(q["images_per_second_batch32"]) == {"fp32", "int8", "speedup"}
    assert report["precision"]["cpu_engine"] == "int8"
    int8 = load_backend("auto", folder)
    assert int8.name == "onnxruntime" and int8.precision == "int8"
    z = np.stack([seed_noise(s, 100) for s in range(16)])
    text = gate_data(16).text
    got = int8.render(z, text)
    (folder / "compile_report.json").write_text(json.dumps({**report, "int8": {**q, "accepted": False}}))
    fp32 = OnnxRuntimeBackend(folder)  # the report no longer vouches for the int8 file: fp32 serves
    assert fp32.precision == "fp32"
    ref = fp32.render(z, text)
    assert got.shape == ref.shape == (16, 32, 32, 3) and psnr_db(ref, got).mean() > 20  # the same network


def test_recompiling_at_fp32_retires_the_int8_engine(folder: Path) -> None:
    compile_model(folder, precision="int8", gate=gate_data(), int8_bounds=LOOSE)
    assert OnnxRuntimeBackend(folder).precision == "int8"
    report = compile_model(folder)  # the recipe says nothing: fp32
    assert "int8" not in report and not (folder / INT8_FILE).exists()
    assert OnnxRuntimeBackend(folder).precision == "fp32"


def test_the_recipe_asks_for_int8(folder: Path) -> None:
    meta = json.loads((folder / "model.json").read_text())
    meta["train_config"] = {"compile": {"precision": "int8"}}
    (folder / "model.json").write_text(json.dumps(meta))
    assert compile_model(folder, int8_bounds={"psnr_min": 0.0})["precision"]["requested"] == "int8"


def test_an_unknown_precision_is_a_clear_error(folder: Path) -> None:
    with pytest.raises(UserError, match="unknown precision 'int4'; choose one of fp32, int8"):
        compile_model(folder, precision="int4")


def test_psnr_of_identical_and_of_different_images() -> None:
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[1] = 255
    assert list(psnr_db(a, b)) == [100.0, 0.0]

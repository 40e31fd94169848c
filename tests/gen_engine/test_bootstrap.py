"""Bootstrap of an empty registry with the shipped starter model, and that model itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gen_engine.bootstrap import bootstrap
from gen_engine.config import Settings
from gen_engine.errors import UserError
from gen_engine.resources import resources

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "starter" / "model"


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    import numpy as np
    import torch

    from gen_engine.datasets.curated import TrainData
    from gen_engine.datasets.synth import generate
    from gen_engine.text import shared_encoder
    from gen_engine.training.config import TrainConfig
    from gen_engine.training.trainer import Trainer

    pairs = list(generate(16, 16, 0))
    imgs = torch.from_numpy(np.stack([np.asarray(im) for _, im in pairs])).permute(0, 3, 1, 2).contiguous()
    caps = [r.text for r, _ in pairs]
    data = TrainData(imgs, torch.from_numpy(shared_encoder().encode(caps)), caps, "tiny")
    trainer = Trainer(TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=1), data, tmp_path / "run")
    trainer.train(progress=False)
    return trainer.export()


def test_bootstrap_publishes_the_starter_model_once(tmp_path: Path, s3_settings: Settings, tiny_model: Path) -> None:
    s = s3_settings.model_copy(update={"starter_model_dir": tiny_model, "lineage_db_url": None,
                                       "local_dir": tmp_path / "local"})
    res = resources(s)
    store, lineage = res.storage, res.lineage
    first = bootstrap(res)
    assert first["bootstrapped"] and first["version"] == 1 and "onnxruntime" in first["engines"]
    prod = lineage.resolve_alias("generator", "production")
    assert prod["model_id"] == first["model_id"]
    assert store.exists(s.bucket_models, prod["uri"].split("/", 3)[3] + "generator.onnx")
    again = bootstrap(res)
    assert not again["bootstrapped"] and again["model_id"] == first["model_id"]
    assert len(lineage.models_trained_on("none")) == 0 and lineage.model(first["model_id"])["version"] == 1


def test_bootstrap_without_a_shipped_model_says_how_to_make_one(tmp_path: Path, s3_settings: Settings) -> None:
    s = s3_settings.model_copy(update={"starter_model_dir": tmp_path / "nothing", "local_dir": tmp_path / "l"})
    with pytest.raises(UserError, match="make starter-model"):
        bootstrap(resources(s))


@pytest.mark.skipif(not (SHIPPED / "model.json").exists(), reason="no shipped starter model in this checkout")
def test_the_shipped_starter_model_is_small_self_describing_and_loads() -> None:
    from gen_engine.models.artifact import load_generator

    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert size <= 20 * 1024 * 1024, f"starter/model is {size / 1e6:.1f} MB; the budget is 20 MB"
    g, meta = load_generator(SHIPPED)
    data = meta["training_data"]
    assert data["name"] == "starter" and len(data["content_sha256"]) == 64
    assert {s["license"] for s in data["licenses"]} == {"CC-BY-4.0", "CC-BY-SA-4.0"}
    assert meta["code_version"] and meta["train_config"]["resolution"] == 64 and meta["sample_prompts"]
    assert (SHIPPED / "LICENSES.md").exists() and (SHIPPED / "discriminator.safetensors").exists()
    assert json.loads((SHIPPED / "model.json").read_text())["steps"] == meta["train_config"]["steps"]
    # Its x4 upsampler, trained on the same artwork's masters, beats Lanczos on the held-out ones by the
    # issue's margin, and records which training images it learned (the retrain keeps it for those).
    from gen_engine.models.upsampler import load_upsampler

    up, umeta = load_upsampler(SHIPPED)
    assert umeta["heldout"]["psnr_gain_db"] >= 1.5 and umeta["heldout"]["images"] > 100
    assert len(umeta["training"]["masters"]) > 3000 and umeta["parameters"] == sum(p.numel() for p in up.parameters())

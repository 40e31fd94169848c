"""Training the x4 upsampler: pairs made as the generator's images are, held-out masters never trained on,
scores against Lanczos, and the retrain training a new one only when the dataset's images changed."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from gen_engine.config import Settings
from gen_engine.datasets.curated import TrainData
from gen_engine.datasets.images import split_of
from gen_engine.datasets.ingest import CurationConfig, ingest
from gen_engine.datasets.synth import generate
from gen_engine.models.artifact import save_model
from gen_engine.models.gan import GANConfig, Generator
from gen_engine.models.upsampler import META, Upsampler, has_upsampler, load_upsampler, save_upsampler
from gen_engine.orchestration import refresh_upsampler
from gen_engine.resources import resources
from gen_engine.training.upsampler import (
    Masters,
    UpsamplerTrainConfig,
    degrade,
    evaluate,
    masters_digest,
    psnr_ssim,
    train_upsampler,
)


def test_an_untrained_upsampler_is_bilinear_and_training_lowers_the_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i, (_, img) in enumerate(generate(24, 256, 0)):
        img.save(tmp_path / f"{i:02d}.png")
    masters = Masters.from_folder(tmp_path, val_percent=25)
    assert masters.hr.shape == (24, 256, 256, 3)
    assert masters.split == [split_of(h, 25) for h in masters.hashes] and "val" in masters.split
    x = torch.from_numpy(rng.random((2, 3, 16, 16), dtype=np.float32))
    bilinear = torch.nn.functional.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    assert torch.allclose(Upsampler()(x), bilinear)  # the residual starts at zero
    train = masters.subset("train")
    assert not set(train.hashes) & set(masters.subset("val").hashes)
    before = evaluate(Upsampler(), train)
    up, info = train_upsampler(train, UpsamplerTrainConfig(steps=250, batch_size=8, features=8, body=2, lr=1e-3))
    after = evaluate(up, train)
    assert info["steps_done"] == 250 and info["masters_digest"] == masters_digest(train.hashes)
    assert info["masters"] == sorted(h[:16] for h in train.hashes)
    assert after["psnr_upsampler"] > before["psnr_upsampler"], (before, after)
    assert degrade(masters.hr[:1]).shape == (1, 64, 64, 3)
    p, s = psnr_ssim(masters.hr[:2], masters.hr[:2])
    assert (p > 100).all() and np.allclose(s, 1.0)


def test_the_retrain_trains_an_upsampler_only_when_the_training_images_changed(
        s3_settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "drop.zip"
    with zipfile.ZipFile(drop, "w") as z:
        meta = []
        for i, (rec, img) in enumerate(generate(16, 256, 3)):
            buf = io.BytesIO()
            img.save(buf, "PNG")
            z.writestr(f"images/{i:02d}.png", buf.getvalue())
            meta.append({"file_name": f"images/{i:02d}.png", "text": rec.text})
        z.writestr("metadata.jsonl", "\n".join(json.dumps(m) for m in meta))
    settings = s3_settings.model_copy(update={"retrain_upsampler_steps": 4})
    res = resources(settings)
    r = ingest(str(drop), "upsampled", res, CurationConfig(size=32, master_size=256, val_percent=20))
    ref = f"{r.dataset}@v{r.version}"
    train = set(TrainData.from_curated(ref, res, 32).content_hashes)  # what the retrain's TrainData holds
    torch.manual_seed(0)
    model = save_model(tmp_path / "model", Generator(GANConfig(resolution=16, nf=8)), {"name": "generator"})
    assert refresh_upsampler(res, ref, model, train).startswith("trained on")
    trained = json.loads((model / META).read_text())
    assert trained["training"]["steps_done"] == 4 and has_upsampler(model)
    first = (model / "upsampler.safetensors").read_bytes()
    assert refresh_upsampler(res, ref, model, train).startswith("kept")  # the same images: nothing to do
    assert (model / "upsampler.safetensors").read_bytes() == first
    learned = trained["training"]["masters"]
    more = {"training": {"masters": sorted([*learned, "0" * 16])}}  # learned more than this version has: kept
    save_upsampler(model, load_upsampler(model)[0], more)
    assert refresh_upsampler(res, ref, model, train).startswith("kept")
    save_upsampler(model, load_upsampler(model)[0], {"training": {"masters": learned[1:]}})  # one image new
    assert refresh_upsampler(res, ref, model, train).startswith("trained on")
    off = resources(settings.model_copy(update={"retrain_upsampler_steps": 0}))
    assert refresh_upsampler(off, ref, model, train).startswith("off")


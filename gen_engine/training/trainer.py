"""The GAN trainer: hinge loss with mismatched-text negatives, MA-GP, TTUR Adam, DiffAugment, EMA.

    genengine train --config configs/shapes32.yaml --data data/shapes --out runs/

Each step is a pure function of (weights, optimizer state, step): the batch order, noise and
augmentations are drawn from generators seeded by (seed, step), so a run resumed from a checkpoint
produces bit-identical weights to an uninterrupted one on the CPU. At each evaluation the run folder
gets a sample grid PNG (fixed prompts and seeds) and a loss-curve PNG.
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gen_engine.datasets.curated import TrainData
from gen_engine.errors import UserError
from gen_engine.models.artifact import SAMPLES, model_id_for, sample_grid, save_model
from gen_engine.models.encoder import ImageEncoder, encoder_meta, load_encoder, save_encoder
from gen_engine.models.gan import Discriminator, Generator, to_uint8
from gen_engine.models.upsampler import META as UP_META
from gen_engine.models.upsampler import WEIGHTS as UP_WEIGHTS
from gen_engine.models.upsampler import has_upsampler
from gen_engine.text import DEFAULT_ENCODER, model_encoder_name, spec
from gen_engine.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from gen_engine.training.config import TrainConfig
from gen_engine.training.device import bf16_autocast, pick_device
from gen_engine.training.encoder import train_encoder
from gen_engine.training.losses import d_loss, ema_update, g_loss

log = logging.getLogger(__name__)


def code_version() -> str:
    """git commit of the code that trained (with -dirty when the tree has changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=here,
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        return rev or "unknown"
    except (OSError, subprocess.SubprocessError):
        from gen_engine import __version__

        return f"gen_engine-{__version__}"


class Trainer:
    """Owns the networks, optimizers and run folder; `train()` runs (or resumes) to cfg.steps."""

    def __init__(self, cfg: TrainConfig, data: TrainData, run_dir: Path, device: str = "cpu",
                 init: Path | None = None, parent: str | None = None) -> None:
        """init: a model folder to warm-start from (cfg.init_from resolved by the caller); parent: its model id."""
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        if data.text_encoder != cfg.text_encoder:
            raise UserError(f"the training data holds {data.text_encoder} embeddings but the config trains on "
                            f"{cfg.text_encoder}; load it with text_encoder={cfg.text_encoder!r}")
        self.device = pick_device(device)
        torch.manual_seed(cfg.seed)
        self.g = Generator(cfg.gan)
        self.d = Discriminator(cfg.gan, cfg.d_res_init)
        self.parent: str | None = None
        self.parent_dir: Path | None = None
        if init is not None:
            self._warm_start(Path(init), parent)  # the champion's text statistics come with its weights
        elif cfg.text_norm:
            self.g.fit_text_norm(data.text)
        # Channels-last (NHWC) weights and activations: oneDNN's native layout on CPUs (and cuDNN's for tensor
        # cores), so no convolution reorders its input to a blocked layout and back. Files stay NCHW.
        self.g = self.g.to(self.device, memory_format=torch.channels_last)
        self.d = self.d.to(self.device, memory_format=torch.channels_last)
        # The average stays NCHW, the layout its files and every renderer use, so what the trainer samples and
        # evaluates is bit-for-bit what a reloaded artifact renders (the layout changes a conv's rounding).
        self.g_ema = copy.deepcopy(self.g).to(memory_format=torch.contiguous_format).eval().requires_grad_(False)
        # foreach: one multi-tensor op per update term rather than a Python loop over ~100 small tensors.
        # (Not fused: 3x faster per update on CPU, but with channels-last weights the generator of
        # test_generator_learns_its_condition saturated to all-white images, where foreach trains it.)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr_g, betas=cfg.betas, foreach=True)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=cfg.betas, foreach=True)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.autocast, self.precision_reason = bf16_autocast(cfg.bf16, self.device)
        self.guide_seconds = 0.0  # time spent training the guide encoder in this process
        self.sample_prompts = list(cfg.sample_prompts) or pick_prompts(data)
        self.guide = self._guide() if cfg.guide_weight else None
        self.row_weights = data.language_weights() if cfg.language_balance else None
        if self.row_weights is not None:
            log.info("language balance: %s rows, drawn in equal shares", dict(collections.Counter(data.meta["lang"])))
        self.recolour = None
        if cfg.recolour:
            from gen_engine.text import shared_encoder
            from gen_engine.training.recolour import RecolourTable

            # Kept in the run folder like the guide: a resumed run reuses it rather than re-embedding.
            key = {"data_version": data.version, "text_encoder": cfg.text_encoder, "seed": str(cfg.seed),
                   "rows": str(len(data))}
            self.recolour = RecolourTable.cached(self.run_dir / "recolour.safetensors", key, data,
                                                 shared_encoder(cfg.text_encoder), cfg.seed)

    def _warm_start(self, model_dir: Path, parent: str | None) -> None:
        """Load a published model's generator (and discriminator, if its artifact has one) exactly."""
        from safetensors.torch import load_file

        meta = json.loads((model_dir / "model.json").read_text())
        if meta["architecture"] != self.cfg.gan.to_dict():
            raise UserError(f"cannot warm-start from {model_dir}: its architecture {meta['architecture']} differs "
                             f"from this config's {self.cfg.gan.to_dict()}; set init_from: none to train from "
                             "scratch, or use a config with the champion's architecture")
        theirs = model_encoder_name(meta)
        if theirs != self.cfg.text_encoder:
            raise UserError(f"cannot warm-start from {model_dir}: it was trained on the text encoder {theirs}, this "
                            f"config on {self.cfg.text_encoder}; its weights read the other encoder's embeddings. "
                            "Set init_from: none to train from scratch.")
        self.g.load_state_dict(load_file(model_dir / "generator.safetensors"))
        if (model_dir / "discriminator.safetensors").exists():
            self.d.load_state_dict(load_file(model_dir / "discriminator.safetensors"))
        self.parent = parent or model_id_for(model_dir, meta.get("name", "generator"))
        self.parent_dir = model_dir
        log.info("warm start from %s (%s)", self.parent, model_dir)

    def _guide(self) -> ImageEncoder:
        """The frozen guidance encoder of this run: trained once on its data, kept in the run folder (so a
        resumed run uses exactly the same one). A guide file trained on other data or settings (a run
        folder reused for a new dataset) is replaced, not reused."""
        path = self.run_dir / "guide.safetensors"
        key = {"data_version": self.data.version, "steps": str(self.cfg.guide_steps), "seed": str(self.cfg.seed + 1)}
        if self.data.text_encoder != DEFAULT_ENCODER:  # the guide embeds images in the captions' space
            key["text_encoder"] = self.data.text_encoder
        stored = encoder_meta(path) if path.exists() else None
        if stored == key:
            enc = load_encoder(path)
        else:
            if stored is not None:
                log.warning("%s was trained for %s, this run needs %s: training a new guide", path,
                            stored or "unrecorded data", key)
            t0 = time.monotonic()
            log.info("training the guide encoder (%d steps) ...", self.cfg.guide_steps)
            enc = train_encoder(self.data.images, self.data.text, steps=self.cfg.guide_steps,
                                seed=self.cfg.seed + 1, augment="translation", device=self.device)
            save_encoder(enc, path, key)
            self.guide_seconds = time.monotonic() - t0
            log.info("guide encoder trained in %.0fs", self.guide_seconds)
        return enc.eval().requires_grad_(False).to(self.device, memory_format=torch.channels_last)

    def _modules(self) -> dict[str, torch.nn.Module]:
        return {"G": self.g, "D": self.d, "G_ema": self.g_ema}

    def resume(self) -> bool:
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        state = load_checkpoint(ckpt, self._modules(), {"g": self.opt_g, "d": self.opt_d})
        self.step, self.history = state["step"], state["history"]
        log.info("resumed %s at step %d", self.run_dir, self.step)
        return True

    def save(self) -> Path:
        return save_checkpoint(self.run_dir / "checkpoints" / f"step_{self.step:07d}", self._modules(),
                               {"g": self.opt_g, "d": self.opt_d},
                               {"step": self.step, "history": self.history, "config": self.cfg.model_dump()})

    def train_step(self) -> dict[str, float]:
        cfg, dev = self.cfg, self.device
        idx = self.data.indices(self.step, cfg.batch_size, cfg.seed, self.row_weights)
        real, text = self.data.rows(idx)
        if self.recolour is not None:
            real, text = self.recolour.apply(real, text, idx, cfg.recolour,
                                             torch.Generator().manual_seed(cfg.seed * 7_919 + self.step))
        real, text = real.to(dev).contiguous(memory_format=torch.channels_last), text.to(dev)
        rng = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        z = torch.randn(cfg.batch_size, cfg.gan.z_dim, generator=rng).to(dev)
        # One generator forward serves both steps: D's step sees it detached, G's step backpropagates
        # through it. G's weights do not change in between, so this is the fake a second forward would give.
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            fake = self.g(z, text)
            loss_d, logs = d_loss(self.g, self.d, real, fake.detach(), text, cfg, rng,
                                  with_gp=self.step % cfg.magp_every == 0)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        # G's step needs D's gradients with respect to its input only: with D's weights frozen, every
        # convolution's backward skips its weight gradient.
        self.d.requires_grad_(False)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss_g, logs_g = g_loss(self.g, self.d, fake, text, cfg, rng, self.guide)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.d.requires_grad_(True)
        self.opt_g.step()
        # EMA warm-up: early on the average follows G closely, so short runs are not dragged to the init.
        decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step)) if self.step >= cfg.ema_start else 0.0
        ema_update(self.g_ema, self.g, decay)
        self.step += 1
        return {"step": self.step, "loss_d": loss_d.item(), "loss_g": loss_g.item(), **logs, **logs_g}

    def train(self, until: int | None = None, progress: bool = True, deadline: float | None = None) -> None:
        """Train to ``until`` (default cfg.steps) or to ``deadline`` (a time.monotonic() value), whichever
        comes first; evaluates and checkpoints every cfg.eval_every steps and where it stops."""
        from tqdm import tqdm

        until = self.cfg.steps if until is None else until
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "prompts.json").write_text(json.dumps(self.sample_prompts, indent=1, ensure_ascii=False))
        (self.run_dir / "config.json").write_text(json.dumps(
            {**self.cfg.model_dump(), "resolved": {"bf16": self.autocast, "bf16_reason": self.precision_reason,
                                                   "device": str(self.device)}}, indent=1))
        bar = tqdm(total=until, initial=self.step, desc="train", unit="it", disable=not progress,
                   mininterval=1.0)
        t0, n0 = time.monotonic(), self.step
        while self.step < until:
            logs = self.train_step()
            self.history.append(logs)
            bar.update(1)
            if self.step % 10 == 0:
                bar.set_postfix(d=f"{logs['loss_d']:.3f}", g=f"{logs['loss_g']:.3f}")
            out_of_time = deadline is not None and time.monotonic() >= deadline
            if self.step % self.cfg.eval_every == 0 or self.step == until or out_of_time:
                self.save()
                self.write_samples()
                self.write_loss_curve()
            if out_of_time:
                log.info("time budget reached at step %d of %d", self.step, until)
                break
        bar.close()
        dt = time.monotonic() - t0
        if self.step > n0:
            log.info("%d steps in %.1fs (%.1f images/s)", self.step - n0, dt,
                     (self.step - n0) * self.cfg.batch_size / max(dt, 1e-9))

    # --- artifacts -------------------------------------------------------------------------------
    @torch.no_grad()
    def write_samples(self) -> Path:
        """Grid: one row per fixed prompt, 6 fixed seeds per row (`models.artifact.sample_grid`)."""
        def render(z: np.ndarray, text: np.ndarray) -> np.ndarray:
            return to_uint8(self.g_ema(torch.from_numpy(z).to(self.device), torch.from_numpy(text).to(self.device)))

        path = self.run_dir / f"samples_{self.step:07d}.png"
        sample_grid(render, self.cfg.gan.z_dim, self.sample_prompts, self.cfg.text_encoder).save(path)
        return path

    def write_loss_curve(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
        # MA-GP is logged only on the steps that apply it (lazy); the contrastive terms only when configured.
        for key in ("loss_d", "loss_g", "magp", "d_con", "g_con", "g_guide"):
            steps = [h["step"] for h in self.history if key in h]
            vals = np.array([h[key] for h in self.history if key in h])
            if not len(vals):
                continue
            k = max(1, len(vals) // 100)
            smooth = np.convolve(vals, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, label=key)
        ax.set_xlabel("step")
        ax.legend()
        ax.set_title(f"{self.cfg.name}: losses (moving average)")
        fig.tight_layout()
        path = self.run_dir / "loss_curve.png"
        fig.savefig(path)
        plt.close(fig)
        return path

    def export(self, extra: dict[str, Any] | None = None) -> Path:
        """The inference artifact in run/model (EMA generator + model.json)."""
        meta = {"name": self.cfg.name, "train_config": self.cfg.model_dump(), "steps": self.step,
                "dataset_version": self.data.version, "code_version": code_version(),
                "sample_prompts": self.sample_prompts, "parent_model": self.parent,
                "text_encoder": spec(self.cfg.text_encoder).record(),
                "precision": {"bf16": self.autocast, "reason": self.precision_reason}, **(extra or {})}
        out = save_model(self.run_dir / "model", self.g_ema, meta, d=self.d)
        shutil.copyfile(self.write_samples(), out / SAMPLES)
        if self.parent_dir is not None and has_upsampler(self.parent_dir):
            # The upsampler learned the look of the dataset's 64 px images, not this generator's weights:
            # a warm-started model keeps its parent's until `genengine train-upsampler` trains another.
            for f in (UP_WEIGHTS, UP_META):
                shutil.copyfile(self.parent_dir / f, out / f)
        return out


def pick_prompts(data: TrainData, k: int = 8) -> list[str]:
    """``k`` of the dataset's own held-out captions (its training captions if it holds none out), spread
    evenly over them in a fixed order: mostly English (ASCII), two in other scripts where there are any."""
    pool = sorted(set(data.heldout_captions or data.captions))
    english, others = [c for c in pool if c.isascii()], [c for c in pool if not c.isascii()]
    n_other = min(len(others), 2 if english else k)

    def spread(items: list[str], n: int) -> list[str]:
        return [items[int(i * len(items) / n)] for i in range(n)] if n < len(items) else items

    return spread(english, k - n_other) + spread(others, n_other)

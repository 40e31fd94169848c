"""The GAN training loop: hinge loss with mismatched-text negatives, MA-GP, TTUR Adam, DiffAugment, EMA.

    genengine train --config configs/shapes32.yaml --data data/shapes --out runs/

Each step is a pure function of (weights, optimizer state, step): the batch order, noise and
augmentations are drawn from generators seeded by (seed, step), so a run resumed from a checkpoint
produces bit-identical weights to an uninterrupted one on the CPU. At each evaluation the run folder
gets a sample grid PNG (fixed prompts and seeds) and a loss-curve PNG.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from gen_engine.models.encoder import (
    ImageEncoder,
    encoder_meta,
    info_nce,
    load_encoder,
    save_encoder,
    train_encoder,
)
from gen_engine.models.gan import Discriminator, GANConfig, Generator
from gen_engine.models.noise import seed_noise
from gen_engine.training.augment import diff_augment
from gen_engine.training.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    model_id_for,
    save_checkpoint,
    save_model,
)

log = logging.getLogger(__name__)
# Descriptive columns of a dataset's rows kept beside the images (the starter data has them).
META_COLUMNS = ("lang", "category", "color", "source_set", "name", "file_name")


class TrainConfig(BaseModel):
    """Everything that defines a training run (YAML under configs/)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "generator"
    resolution: int = 32
    nf: int = 32
    batch_size: int = Field(32, ge=2)
    steps: int = Field(2000, ge=1)
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.9)
    magp_weight: float = Field(2.0, description="Weight of the matching-aware gradient penalty.")
    magp_power: float = Field(6.0, description="Exponent p of the gradient norm in MA-GP.")
    magp_every: int = Field(1, ge=1, description="Lazy MA-GP: apply it every k D steps with weight x k "
                                                "(the double backward is a third of a step's cost).")
    bf16: Literal["auto", "on", "off"] = Field(
        "auto", description="bf16 autocast: auto = on CUDA GPUs with bf16 and on CPUs with native bf16 (AVX512-BF16 "
                            "or AMX, detected at run time; shapes32 there: 177 vs 125 images/s in fp32), fp32 "
                            "elsewhere (emulated bf16 made an AVX2-only CPU 14x slower). The run's config.json "
                            "records what was chosen and why. Use `on` / `off` only to force a trial.")
    diffaug: str = Field("translation,cutout", description="DiffAugment policy; empty for none.")
    channel_mult: tuple[int, ...] | None = Field(
        None, description="Channels per stage (4x4 upward) as multiples of nf; unset = DF-GAN's ladder.")
    text_stem: bool = Field(False, description="The generator's 4x4 stem sees the caption too (GANConfig).")
    text_norm: bool = Field(False, description="G and D's conditional head see the caption embedding centred "
                                               "and scaled by the training captions' statistics (GANConfig).")
    d_res_init: float = Field(0.0, description="Initial gain of D's residual branches (see Discriminator).")
    contrastive_weight: float = Field(
        0.0, ge=0, description="Weight of the image-text contrastive term (XMC-GAN, LAFITE): D learns to embed "
                               "real images next to their captions, G is pushed to make its images embed next "
                               "to theirs. A dense text-alignment signal that the matching-aware hinge lacks.")
    guide_weight: float = Field(
        0.0, ge=0, description="Weight of the text-alignment guidance (StyleGAN-T's CLIP guidance, with a "
                               "small image encoder trained on the run's own captions at its start instead "
                               "of CLIP): G is pushed to make augmented fakes embed next to their captions in "
                               "a frozen space that already tells shapes apart, while D is still learning.")
    guide_steps: int = Field(1000, ge=1, description="Training steps (batch 128) of the guide encoder.")
    init_from: str = Field(
        "none", description="Warm start: 'none' trains from scratch; 'production' (or another alias, a model id "
                            "or a model folder) starts G (and D, when the artifact has it) from that model's "
                            "weights and fine-tunes; the parent's id goes into the new model's lineage.")
    ema_decay: float = 0.999
    ema_start: int = Field(0, description="Step after which EMA averaging starts (copy before).")
    seed: int = 0
    eval_every: int = Field(500, description="Steps between sample grids, loss plots and checkpoints.")
    sample_prompts: tuple[str, ...] = Field(
        (), description="Prompts of the sample grids (and the model's parity set); empty = 8 of the dataset's own "
                        "held-out captions, chosen by `pick_prompts`.")

    @classmethod
    def from_yaml(cls, path: Path, **overrides: Any) -> TrainConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls(**{**data, **overrides})

    @property
    def gan(self) -> GANConfig:
        extra = {"channel_mult": self.channel_mult} if self.channel_mult else {}
        return GANConfig(resolution=self.resolution, nf=self.nf, text_stem=self.text_stem,
                         text_norm=self.text_norm, **extra)


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


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is visible to torch")
    return torch.device(device)


# --- data ------------------------------------------------------------------------------------------------
class TrainData:
    """Images as uint8 (N, 3, R, R) and caption embeddings (N, 384), all in memory."""

    def __init__(self, images: torch.Tensor, text: torch.Tensor, captions: list[str], version: str,
                 dataset_version_id: str | None = None) -> None:
        """version: a description of the data; dataset_version_id: the curated version (lineage), if any."""
        assert images.dtype == torch.uint8 and images.shape[0] == text.shape[0] == len(captions)
        self.images, self.text, self.captions, self.version = images, text, captions, version
        self.dataset_version_id = dataset_version_id
        self.attributes: dict[str, list[str]] = {}  # e.g. color/shape of synthetic shapes, for evaluation
        self.meta: dict[str, list[str]] = {}  # per-row descriptive columns (language, category, source set, ...)
        self.heldout_captions: list[str] = []  # the dataset's held-out captions: sample grids and parity prompts

    def labels(self, vocab: dict[str, list[str]] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
        """Attribute columns as class indices (vocabulary sorted, or the one given)."""
        vocab = vocab or {k: sorted(set(v)) for k, v in self.attributes.items()}
        return {k: torch.tensor([vocab[k].index(x) for x in self.attributes[k]]) for k in vocab}, vocab

    def __len__(self) -> int:
        return self.images.shape[0]

    @classmethod
    def from_imagefolder(cls, root: Path, resolution: int, split: str | None = None) -> TrainData:
        """Read ``metadata.jsonl`` + images; encode captions with MiniLM once.

        split: None keeps every row; "train" / "val" keep the rows whose image the ingest would put in
        that split (by content hash), and a "train" read also collects the held-out captions."""
        import hashlib
        import io

        from gen_engine.datasets.images import split_of, square
        from gen_engine.text import shared_encoder

        root = Path(root)
        rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines() if line]
        decoded: dict[str, tuple[np.ndarray, str]] = {}  # file name -> (image, content hash)
        keep, held = [], []
        for r in rows:
            fn = r["file_name"]
            if fn not in decoded:
                raw = (root / fn).read_bytes()
                decoded[fn] = (np.asarray(square(Image.open(io.BytesIO(raw)), resolution)),
                               hashlib.sha256(raw).hexdigest())
            if split is None or split_of(decoded[fn][1]) == split:
                keep.append(r)
            elif split == "train":
                held.append(r["text"])
        imgs = np.stack([decoded[r["file_name"]][0] for r in keep]) if keep else \
            np.empty((0, resolution, resolution, 3), np.uint8)
        h = hashlib.sha256(str(split).encode())
        for r in keep:
            h.update(r["file_name"].encode() + r["text"].encode())
        captions = [r["text"] for r in keep]
        text = torch.from_numpy(shared_encoder().encode(captions, cache=False))
        data = cls(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), text, captions,
                   f"imagefolder:{h.hexdigest()[:16]}")
        data.attributes = {k: [str(r[k]) for r in keep] for k in ("color", "shape") if rows and "shape" in rows[0]}
        data.meta = {k: [str(r.get(k, "")) for r in keep] for k in META_COLUMNS if rows and k in rows[0]}
        data.heldout_captions = list(dict.fromkeys(held))
        return data

    @classmethod
    def from_curated(cls, ref: str, settings: Any, resolution: int, split: str = "train") -> TrainData:
        """A curated version (``name`` = latest, or ``name@vN``) from S3: stored embeddings, no re-encoding."""
        import io

        import polars as pl

        from gen_engine.lineage import LineageStore
        from gen_engine.storage import Storage

        name, _, v = ref.partition("@")
        row = LineageStore.from_settings(settings).dataset_version(name, int(v.lstrip("v")) if v else None)
        if row is None:
            raise ValueError(f"no curated dataset '{ref}'; ingest one first (`genengine dataset ingest`)")
        store = Storage.from_settings(settings)
        prefix = row["uri"].removeprefix(f"s3://{settings.bucket_datasets}/")
        cols = ["image", "caption", "embedding", "split", "extra"]
        frames = [pl.read_parquet(io.BytesIO(store.get_bytes(settings.bucket_datasets, o.key)), columns=cols)
                  for o in store.list(settings.bucket_datasets, prefix)
                  if o.key.endswith(".parquet") and "/masters/" not in o.key]
        everything = pl.concat(frames)
        df = everything.filter(pl.col("split") == split)
        imgs = np.empty((df.height, resolution, resolution, 3), np.uint8)
        for i, png in enumerate(df["image"]):
            im = Image.open(io.BytesIO(png)).convert("RGB")
            if im.size != (resolution, resolution):
                im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
            imgs[i] = np.asarray(im)
        text = torch.from_numpy(df["embedding"].to_numpy().astype(np.float32))
        data = cls(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), text, df["caption"].to_list(),
                   row["version_id"], dataset_version_id=row["version_id"])
        extras = [json.loads(e or "{}") for e in df["extra"].to_list()]
        data.meta = {k: [str(e.get(k, "")) for e in extras] for k in META_COLUMNS if extras and k in extras[0]}
        if split == "train":
            data.heldout_captions = list(dict.fromkeys(everything.filter(pl.col("split") == "val")["caption"]))
        return data

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``step`` of an epoch-wise shuffle seeded by (seed, epoch): a pure function of step."""
        n = len(self)
        start = step * batch_size
        idx = []
        while len(idx) < batch_size:
            epoch, off = divmod(start + len(idx), n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            idx.extend(perm[off : off + batch_size - len(idx)].tolist())
        ix = torch.tensor(idx)
        return self.images[ix].float() / 127.5 - 1.0, self.text[ix]


# --- one step -----------------------------------------------------------------------------------
def contrastive_loss(d: Discriminator, feats: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between D's image embeddings and the batch's caption embeddings."""
    return info_nce(d.embed(feats), text, d.logit_scale)


def d_loss(g: Generator, d: Discriminator, real: torch.Tensor, fake: torch.Tensor, text: torch.Tensor,
           cfg: TrainConfig, aug: torch.Generator, with_gp: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge loss on real/fake/mismatched pairs plus (``with_gp``) the matching-aware gradient penalty.

    ``fake`` is G's output for ``text``, detached: D's step does not reach into G."""
    real_a = diff_augment(real, cfg.diffaug, aug).requires_grad_(with_gp)
    cond = g.norm_text(text)  # D's conditional head sees the caption as G does
    text_gp = cond.clone().requires_grad_(with_gp)
    feats_real = d.features(real_a)
    out_real = d.score(feats_real, text_gp)
    out_mis = d.score(feats_real, torch.roll(cond, 1, dims=0))  # mismatched captions
    out_fake = d(diff_augment(fake, cfg.diffaug, aug), cond)
    loss_real = F.relu(1.0 - out_real).mean()
    loss_fake = F.relu(1.0 + out_fake).mean()
    loss_mis = F.relu(1.0 + out_mis).mean()
    loss = loss_real + (loss_fake + loss_mis) / 2
    logs = {"d_real": loss_real.item(), "d_fake": loss_fake.item(), "d_mis": loss_mis.item()}
    if cfg.contrastive_weight:
        con = contrastive_loss(d, feats_real, text)
        loss = loss + cfg.contrastive_weight * con
        logs["d_con"] = con.item()
    if with_gp:
        grads = torch.autograd.grad(out_real.sum(), (real_a, text_gp), create_graph=True)
        gnorm = torch.cat([g_.reshape(g_.shape[0], -1) for g_ in grads], dim=1).float().norm(2, dim=1)
        magp = cfg.magp_weight * cfg.magp_every * (gnorm ** cfg.magp_power).mean()
        loss = loss + magp
        logs["magp"] = magp.item() / cfg.magp_every
    return loss, logs


def g_loss(g: Generator, d: Discriminator, fake: torch.Tensor, text: torch.Tensor, cfg: TrainConfig,
           aug: torch.Generator, guide: ImageEncoder | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Adversarial hinge (G side) plus, if configured, the contrastive and guidance pulls toward the captions.

    ``fake`` is G's output for ``text`` with its graph, the same tensor D's step saw detached."""
    fake = diff_augment(fake, cfg.diffaug, aug)
    feats = d.features(fake)
    loss, logs = -d.score(feats, g.norm_text(text)).mean(), {}
    if cfg.contrastive_weight:
        con = contrastive_loss(d, feats, text)
        loss = loss + cfg.contrastive_weight * con
        logs["g_con"] = con.item()
    if guide is not None and cfg.guide_weight:
        gl = info_nce(guide(fake.float()), text, guide.logit_scale)
        loss = loss + cfg.guide_weight * gl
        logs["g_guide"] = gl.item()
    return loss, logs


@torch.no_grad()
def ema_update(g_ema: Generator, g: Generator, decay: float) -> None:
    for pe, p in zip(g_ema.parameters(), g.parameters(), strict=True):
        pe.lerp_(p, 1.0 - decay)


def cpu_info(cpuinfo: str | None = None) -> tuple[str, list[str]]:
    """The CPU's model name and flags from /proc/cpuinfo (``cpuinfo``: that file's text, for tests);
    ("unknown", []) where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text() if cpuinfo is None else cpuinfo
    except OSError:
        return "unknown", []
    field = lambda key: next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith(key)), "")  # noqa: E731
    return field("model name").strip() or "unknown", field("flags").split()


def cpu_bf16_native(cpuinfo: str | None = None) -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo's flags
    (``cpuinfo``: that file's text, for tests).

    Without it, torch emulates bf16 matmuls and convolutions: measured on an AVX2-only AMD EPYC, a
    shapes32 step took ~10 s under bf16 against ~0.7 s in fp32."""
    _, flags = cpu_info(cpuinfo)
    if not flags:
        return False, "CPU flags unreadable (no /proc/cpuinfo): fp32"
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    if native:
        return True, f"CPU has native bf16 ({', '.join(native)})"
    return False, "CPU lacks native bf16 (no avx512_bf16 / amx_bf16): fp32"


def bf16_autocast(mode: str, device: torch.device) -> tuple[bool, str]:
    """Whether to train under bf16 autocast, and why (see TrainConfig.bf16)."""
    if mode != "auto":
        return mode == "on", f"bf16 {mode} in the config"
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, "CUDA GPU with bf16" if ok else "CUDA GPU without bf16: fp32"
    if device.type == "cpu":
        return cpu_bf16_native()
    return False, f"{device.type}: fp32"


# --- the run ---------------------------------------------------------------------------------------
class Trainer:
    """Owns the networks, optimizers and run folder; `train()` runs (or resumes) to cfg.steps."""

    def __init__(self, cfg: TrainConfig, data: TrainData, run_dir: Path, device: str = "cpu",
                 init: Path | None = None, parent: str | None = None) -> None:
        """init: a model folder to warm-start from (cfg.init_from resolved by the caller); parent: its model id."""
        self.cfg, self.data, self.run_dir = cfg, data, Path(run_dir)
        self.device = pick_device(device)
        torch.manual_seed(cfg.seed)
        self.g = Generator(cfg.gan)
        self.d = Discriminator(cfg.gan, cfg.d_res_init)
        self.parent: str | None = None
        if init is not None:
            self._warm_start(Path(init), parent)  # the champion's text statistics come with its weights
        elif cfg.text_norm:
            self.g.fit_text_norm(data.text)
        self.g, self.d = self.g.to(self.device), self.d.to(self.device)
        self.g_ema = copy.deepcopy(self.g).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr_g, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr_d, betas=cfg.betas)
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.autocast, self.precision_reason = bf16_autocast(cfg.bf16, self.device)
        self.guide_seconds = 0.0  # time spent training the guide encoder in this process
        self.sample_prompts = list(cfg.sample_prompts) or pick_prompts(data)
        self.guide = self._guide() if cfg.guide_weight else None

    def _warm_start(self, model_dir: Path, parent: str | None) -> None:
        """Load a published model's generator (and discriminator, if its artifact has one) exactly."""
        from safetensors.torch import load_file

        meta = json.loads((model_dir / "model.json").read_text())
        if meta["architecture"] != self.cfg.gan.to_dict():
            raise ValueError(f"cannot warm-start from {model_dir}: its architecture {meta['architecture']} differs "
                             f"from this config's {self.cfg.gan.to_dict()}; set init_from: none to train from "
                             "scratch, or use a config with the champion's architecture")
        self.g.load_state_dict(load_file(model_dir / "generator.safetensors"))
        if (model_dir / "discriminator.safetensors").exists():
            self.d.load_state_dict(load_file(model_dir / "discriminator.safetensors"))
        self.parent = parent or model_id_for(model_dir, meta.get("name", "generator"))
        log.info("warm start from %s (%s)", self.parent, model_dir)

    def _guide(self) -> ImageEncoder:
        """The frozen guidance encoder of this run: trained once on its data, kept in the run folder (so a
        resumed run uses exactly the same one). A guide file trained on other data or settings (a run
        folder reused for a new dataset) is replaced, not reused."""
        path = self.run_dir / "guide.safetensors"
        key = {"data_version": self.data.version, "steps": str(self.cfg.guide_steps), "seed": str(self.cfg.seed + 1)}
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
        return enc.eval().requires_grad_(False).to(self.device)

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
        real, text = self.data.batch(self.step, cfg.batch_size, cfg.seed)
        real, text = real.to(dev), text.to(dev)
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
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.autocast):
            loss_g, logs_g = g_loss(self.g, self.d, fake, text, cfg, rng, self.guide)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
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
        """Grid: one row per fixed prompt, 6 fixed seeds per row."""
        from gen_engine.text import shared_encoder

        prompts = self.sample_prompts
        text = torch.from_numpy(shared_encoder().encode(prompts)).repeat_interleave(6, 0).to(self.device)
        z = torch.from_numpy(np.stack([seed_noise(s, self.cfg.gan.z_dim) for s in range(6)] * len(prompts)))
        imgs = to_uint8(self.g_ema(z.to(self.device), text))
        path = self.run_dir / f"samples_{self.step:07d}.png"
        image_grid(imgs, cols=6, labels=[p for p in prompts]).save(path)
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
                "precision": {"bf16": self.autocast, "reason": self.precision_reason}, **(extra or {})}
        return save_model(self.run_dir / "model", self.g_ema, meta, d=self.d)


def pick_prompts(data: TrainData, k: int = 8) -> list[str]:
    """``k`` of the dataset's own held-out captions (its training captions if it holds none out), spread
    evenly over them in a fixed order: mostly English (ASCII), two in other scripts where there are any."""
    pool = sorted(set(data.heldout_captions or data.captions))
    english, others = [c for c in pool if c.isascii()], [c for c in pool if not c.isascii()]
    n_other = min(len(others), 2 if english else k)

    def spread(items: list[str], n: int) -> list[str]:
        return [items[int(i * len(items) / n)] for i in range(n)] if n < len(items) else items

    return spread(english, k - n_other) + spread(others, n_other)


def to_uint8(imgs: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((imgs.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(imgs: np.ndarray, cols: int, labels: list[str] | None = None, scale: int = 0) -> Image.Image:
    """Tile (B, H, W, 3) uint8 images; one label per row drawn above it."""
    from PIL import ImageDraw

    b, h, w, _ = imgs.shape
    scale = scale or max(1, 96 // h)
    h, w = h * scale, w * scale
    rows = math.ceil(b / cols)
    label_h = 14 if labels else 0
    sheet = Image.new("RGB", (cols * w, rows * (h + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i in range(b):
        r, c = divmod(i, cols)
        tile = Image.fromarray(imgs[i]).resize((w, h), Image.Resampling.NEAREST)
        sheet.paste(tile, (c * w, r * (h + label_h) + label_h))
        if labels and c == 0 and r < len(labels):
            draw.text((2, r * (h + label_h) + 1), labels[r][: cols * w // 6], fill=(0, 0, 0))
    return sheet

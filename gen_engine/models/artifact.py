"""The generator's artifact folder: ``generator.safetensors`` + ``model.json`` (+ ``discriminator.safetensors``,
and ``samples.png``: the sample grid the models page shows).

Safetensors and JSON only, never pickle. Training writes it, the registry publishes it, compile and
the render backends read it: it lives with the models so none of them depends on the training code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gen_engine.models.gan import GANConfig, Generator

if TYPE_CHECKING:
    from collections.abc import Callable

    from PIL import Image

SAMPLES = "samples.png"
SAMPLE_SEEDS = 6


def sample_grid(render: Callable[[np.ndarray, np.ndarray], np.ndarray], z_dim: int, prompts: list[str],
                text_encoder: str | None = None) -> Image.Image:
    """A generator's sample grid: one row per prompt (labelled), seeds 0-5 across, through ``render(z, text)``
    (uint8 images). The same prompts and seeds at every checkpoint, so grids compare across a run and runs.
    text_encoder: the model's (`gen_engine.text`; default MiniLM)."""
    from gen_engine.models.noise import seed_noise
    from gen_engine.sheets import image_grid
    from gen_engine.text import shared_encoder

    text = np.repeat(shared_encoder(text_encoder).encode(prompts), SAMPLE_SEEDS, axis=0)
    z = np.stack([seed_noise(s, z_dim) for s in range(SAMPLE_SEEDS)] * len(prompts))
    return image_grid(render(z, text), cols=SAMPLE_SEEDS, labels=list(prompts))


def model_id_for(model_dir: Path, name: str) -> str:
    """A model's id: its name and a hash of its generator weights (publishing twice is one version)."""
    digest = hashlib.sha256((Path(model_dir) / "generator.safetensors").read_bytes()).hexdigest()
    return f"{name}-{digest[:12]}"


def save_model(out: Path, g_ema: Generator, meta: dict[str, Any], d: torch.nn.Module | None = None) -> Path:
    """Write the inference artifact: generator.safetensors + model.json (+ discriminator.safetensors, which
    a warm start fine-tunes against; rendering never reads it)."""
    out.mkdir(parents=True, exist_ok=True)
    if d is not None:
        save_file({k: v.detach().contiguous() for k, v in d.state_dict().items()}, out / "discriminator.safetensors",
                  metadata={"format": "gen_engine.discriminator/1"})
    save_file({k: v.detach().contiguous() for k, v in g_ema.state_dict().items()}, out / "generator.safetensors",
              metadata={"format": "gen_engine.generator/1"})
    (out / "model.json").write_text(json.dumps({"architecture": g_ema.cfg.to_dict(), **meta}, indent=1, default=str))
    return out


def load_generator(model_dir: Path, device: str = "cpu") -> tuple[Generator, dict[str, Any]]:
    """Rebuild the generator from its artifact folder alone (weights_only by construction)."""
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    g = Generator(GANConfig(**meta["architecture"]))
    g.load_state_dict(load_file(Path(model_dir) / "generator.safetensors", device=device))
    return g.eval().to(device), meta

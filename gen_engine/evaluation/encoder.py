"""The evaluation encoder of a dataset version: trained once against its caption embeddings, cached.

Every metric that compares images to captions or to each other does it in this encoder's space
(`encode`), not with Inception or CLIP weights, which this factory cannot download.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gen_engine.config import Settings
from gen_engine.models.encoder import ImageEncoder, load_encoder, save_encoder
from gen_engine.training.encoder import train_encoder

log = logging.getLogger(__name__)

# Training steps of an evaluation encoder: the settings' default (Settings.eval_encoder_steps).
ENCODER_STEPS: int = Settings.model_fields["eval_encoder_steps"].default


@torch.no_grad()
def encode(enc: ImageEncoder, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    chunks = [enc(images[i : i + batch].float() / 127.5 - 1).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(chunks)


def cached_encoder(data: Any, cache_dir: Path, steps: int = ENCODER_STEPS) -> tuple[ImageEncoder, dict[str, list[str]]]:
    """The evaluation encoder of a dataset version (and step count): trained once, then loaded."""
    key = f"{data.dataset_version_id or data.version.replace(':', '-')}-s{steps}"
    w, meta = cache_dir / f"{key}.safetensors", cache_dir / f"{key}.json"
    labels, vocab = data.labels() if data.attributes else ({}, {})
    if w.exists() and meta.exists():
        vocab = json.loads(meta.read_text())["vocab"]
        enc = load_encoder(w, heads={k: len(v) for k, v in vocab.items()})
        return enc, vocab
    log.info("training the evaluation encoder of %s (%d steps, once: cached in %s)", key, steps, cache_dir)
    enc = train_encoder(data.images, data.text, labels, steps=steps)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_encoder(enc, w)
    meta.write_text(json.dumps({"vocab": vocab, "dataset": key}))
    return enc, vocab

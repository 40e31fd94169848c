"""The evaluation encoder of a dataset version: trained once against its caption embeddings, cached.

Every metric that compares images to captions or to each other does it in this encoder's space
(`encode`), not with Inception or CLIP weights, which this factory cannot download.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gen_engine.config import Settings
from gen_engine.models.encoder import ImageEncoder, load_encoder, save_encoder
from gen_engine.text import DEFAULT_ENCODER
from gen_engine.training.encoder import train_encoder

if TYPE_CHECKING:
    from gen_engine.infra.storage import Storage

log = logging.getLogger(__name__)

# Training steps of an evaluation encoder: the settings' default (Settings.eval_encoder_steps).
ENCODER_STEPS: int = Settings.model_fields["eval_encoder_steps"].default


@torch.no_grad()
def encode(enc: ImageEncoder, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    chunks = [enc(images[i : i + batch].float() / 127.5 - 1).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(chunks)


def cached_encoder(data: Any, cache_dir: Path, steps: int = ENCODER_STEPS, store: Storage | None = None,
                   ) -> tuple[ImageEncoder, dict[str, list[str]]]:
    """The evaluation encoder of a dataset version, at its images' resolution and step count: trained
    once, then reused.

    Looked up in the local ``cache_dir``, then (for a curated version, with ``store``) in S3 beside the
    version (`s3_key`), where the ingest puts it (`orchestration.prepare_evaluation`), so a worker on
    another disk never trains it again; trained only where neither has it, then saved to both."""
    name = f"encoder-r{data.images.shape[-1]}-s{steps}"
    if data.text_encoder != DEFAULT_ENCODER:  # trained against that encoder's caption space
        name += f"-{data.text_encoder}"
    key = f"{data.dataset_version_id or data.version.replace(':', '-')}-{name.removeprefix('encoder-')}"
    w, meta = cache_dir / f"{key}.safetensors", cache_dir / f"{key}.json"
    remote = s3_key(data, name) if store is not None else None
    if not (w.exists() and meta.exists()) and remote and store.exists(*remote["weights"]):
        cache_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write(w, store.get_bytes(*remote["weights"]))
        _atomic_write(meta, store.get_bytes(*remote["meta"]))
        log.info("evaluation encoder of %s loaded from s3://%s/%s", key, *remote["weights"])
    if w.exists() and meta.exists():
        vocab = json.loads(meta.read_text())["vocab"]
        return load_encoder(w, heads={k: len(v) for k, v in vocab.items()}), vocab
    labels, vocab = data.labels() if data.attributes else ({}, {})
    log.info("training the evaluation encoder of %s (%d steps, once: cached in %s%s)", key, steps, cache_dir,
             f" and s3://{remote['weights'][0]}/{remote['weights'][1]}" if remote else "")
    t0 = time.monotonic()
    enc = train_encoder(data.images, data.text, labels, steps=steps)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_encoder(enc, w)
    _atomic_write(meta, json.dumps({"vocab": vocab, "dataset": key, "steps": steps,
                                    "resolution": data.images.shape[-1], "rows": len(data),
                                    "train_seconds": round(time.monotonic() - t0, 2)}).encode())
    if remote:
        store.put_bytes(*remote["weights"], w.read_bytes())
        store.put_bytes(*remote["meta"], meta.read_bytes(), content_type="application/json")
    return enc, vocab


def s3_key(data: Any, name: str) -> dict[str, tuple[str, str]] | None:
    """Where a curated version keeps its evaluation encoder ``name``: ``evaluation/<name>.safetensors``
    (and ``.json``, its vocabulary and provenance) beside the version's parquet shards; None for data that
    is not a curated version."""
    uri = getattr(data, "curated_uri", None)
    if not uri:
        return None
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    base = f"{prefix.rstrip('/')}/evaluation/{name}"
    return {"weights": (bucket, f"{base}.safetensors"), "meta": (bucket, f"{base}.json")}


def _atomic_write(path: Path, data: bytes) -> None:
    """Write beside, then rename: a worker killed mid-write leaves no half file that would load."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)

"""Offline evaluation of a generator on the held-out split, without Inception or CLIP weights.

    genengine evaluate --model RUN_OR_VERSION --data DATASET --out run/metrics.jsonl

Per dataset version, a small image encoder is trained against the frozen MiniLM caption embeddings
(contrastive, the DAMSM recipe), once: at ingest, kept in S3 beside the version (`encoder`). On
held-out captions the generator renders one image each (seed = index), and we report:
- ``fd``: Frechet distance between real and generated images in that encoder's feature space;
- ``r_precision``: how often the true caption ranks first among 100 (itself + 99 others);
- ``cosine``: mean image-text cosine of generated images and their captions;
- on the synthetic shapes data, ``color_acc`` and ``shape_acc`` of generated images, judged by
  attribute classifiers trained on real synthetic images;
- on data whose captions name colours (the starter artwork), ``color_judge``: the share of images whose
  dominant foreground colour is the one their caption gives its object (`colour`, a rule, not a network);
- optionally (``diversity``), ``seed_diversity_ratio``: how far 8 seeds of one prompt spread, against
  the spread of different real images of one category (`diversity`).

Each metric is one module here, registered by name (`registry`): ``fd``, ``r_precision``,
``color_judge`` and ``attributes`` run by default, ``seed_diversity`` on request.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

# The metric modules register themselves on import.
import gen_engine.evaluation.attributes
import gen_engine.evaluation.colour
import gen_engine.evaluation.diversity
import gen_engine.evaluation.fd
import gen_engine.evaluation.rprecision  # noqa: F401
from gen_engine.errors import UserError
from gen_engine.evaluation.encoder import ENCODER_STEPS, cached_encoder, encode
from gen_engine.evaluation.fd import frechet_distance
from gen_engine.evaluation.registry import DEFAULT, METRICS, EvalContext
from gen_engine.evaluation.rprecision import r_precision, r_precision_subset
from gen_engine.models.encoder import ImageEncoder
from gen_engine.models.noise import seed_noise

if TYPE_CHECKING:
    from gen_engine.compile.quantize import GateData
    from gen_engine.infra.storage import Storage

log = logging.getLogger(__name__)

__all__ = ["DEFAULT", "ENCODER_STEPS", "METRICS", "EvalContext", "append_metrics", "cached_encoder", "encode",
           "evaluate", "evaluate_model", "frechet_distance", "in_model_space", "int8_gate_data", "r_precision",
           "r_precision_subset", "render_heldout"]


def render_heldout(render: Any, data: Any, n: int) -> torch.Tensor:
    """One image per held-out caption (the first ``n``), seed = index: (n, 3, R, R) uint8."""
    text = data.text[:n].numpy()
    z = np.stack([seed_noise(i, 100) for i in range(n)])
    fake = np.concatenate([render(z[i : i + 64], text[i : i + 64]) for i in range(0, n, 64)])
    return torch.from_numpy(fake).permute(0, 3, 1, 2).contiguous()


def evaluate(render: Any, data: Any, enc: ImageEncoder, labels: dict[str, torch.Tensor] | None = None,
             n: int = 1000, diversity: bool = False, metrics: Sequence[str] | None = None) -> dict[str, float]:
    """Metrics of a backend (``render(z, text) -> uint8 NHWC``) on held-out ``data`` (a TrainData).

    ``metrics``: names from `METRICS` (default `DEFAULT`, plus ``seed_diversity`` when ``diversity``)."""
    names = list(metrics or DEFAULT) + (["seed_diversity"] if diversity and not metrics else [])
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise UserError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    t0 = time.monotonic()
    n = min(n, len(data))
    fake = render_heldout(render, data, n)
    ctx = EvalContext(render=render, data=data, enc=enc, n=n, text=data.text[:n].numpy(),
                      captions=data.captions[:n], fake=fake, real_features=encode(enc, data.images[:n]),
                      fake_features=encode(enc, fake), labels=labels, encode=lambda x: encode(enc, x))
    out: dict[str, float] = {"n": n}
    for name in names:
        out.update(METRICS[name](ctx))
    out["seconds"] = time.monotonic() - t0
    return out


def in_model_space(render: Any, meta: dict[str, Any], data: Any) -> Any:
    """``render`` fed with the model's own text encoder, for data embedded by another one.

    Champion and challenger are scored in one evaluation space (the captions' embeddings in ``data``, by
    `data.text_encoder`), but each renders from the embeddings it was trained on: a model on another
    encoder gets, for each caption's row, its own encoder's vector of the same caption."""
    from gen_engine.text import encoder_for, model_encoder_name

    if model_encoder_name(meta) == data.text_encoder:
        return render
    own = encoder_for(meta).encode(data.captions, cache=False)
    table = {row.tobytes(): v for row, v in zip(data.text.numpy(), own, strict=True)}

    def translated(z: np.ndarray, text: np.ndarray) -> np.ndarray:
        return render(z, np.stack([table[np.ascontiguousarray(row, dtype=np.float32).tobytes()] for row in text]))

    return translated


def append_metrics(path: Path, step: int, metrics: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")


def evaluate_model(model_dir: Path, train: Any, heldout: Any, cache_dir: Path, n: int = 1000,
                   encoder_steps: int = ENCODER_STEPS, store: Storage | None = None) -> dict[str, Any]:
    """Metrics of a model folder on held-out data, with the dataset's cached evaluation encoder (local
    ``cache_dir``, then S3 beside a curated version with ``store``; see `cached_encoder`)."""
    from gen_engine.runtime import TorchBackend

    t0 = time.monotonic()
    enc, vocab = cached_encoder(train, cache_dir, encoder_steps, store)
    t1 = time.monotonic()
    labels = heldout.labels(vocab)[0] if vocab and heldout.attributes else None
    render = in_model_space(TorchBackend(model_dir, device="cpu").render,
                            json.loads((Path(model_dir) / "model.json").read_text()), heldout)
    out = evaluate(render, heldout, enc, labels, n=n)
    # Progress lines for the Airflow log: which part of an evaluation takes the time.
    log.info("evaluated %s on %d held-out captions: evaluation encoder %.1fs, render and metrics %.1fs",
             Path(model_dir).name, len(heldout), t1 - t0, time.monotonic() - t1)
    return out


def int8_gate_data(held: Any, enc: ImageEncoder, meta: dict[str, Any], n: int, source: str) -> GateData:
    """The int8 gate's held-out data (`compile.quantize.GateData`): the first ``n`` rows of a held-out split
    (a TrainData), their captions in the model's own text space (re-embedded where the split holds another
    encoder's), and the Frechet distance of images of them from the real ones in ``enc``'s space."""
    from gen_engine.compile.quantize import GateData
    from gen_engine.text import encoder_for, model_encoder_name

    n = min(n, len(held))
    text = (held.text[:n].numpy() if model_encoder_name(meta) == held.text_encoder
            else encoder_for(meta).encode(held.captions[:n], cache=False))
    real = encode(enc, held.images[:n])

    def fd(images: np.ndarray) -> float:
        return frechet_distance(real, encode(enc, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()))

    return GateData(np.ascontiguousarray(text, np.float32), fd, f"{source}, {n} captions")

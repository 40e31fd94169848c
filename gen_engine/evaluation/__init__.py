"""Offline evaluation of a generator on the held-out split, without Inception or CLIP weights.

    genengine evaluate --model RUN_OR_VERSION --data DATASET --out run/metrics.jsonl

Per dataset version, a small image encoder is trained against the frozen MiniLM caption embeddings
(contrastive, the DAMSM recipe) and cached. On held-out captions the generator renders one image
each (seed = index), and we report:
- ``fd``: Frechet distance between real and generated images in that encoder's feature space;
- ``r_precision``: how often the true caption ranks first among 100 (itself + 99 others);
- ``cosine``: mean image-text cosine of generated images and their captions;
- on the synthetic shapes data, ``color_acc`` and ``shape_acc`` of generated images, judged by
  attribute classifiers trained on real synthetic images;
- on data whose captions name colours (the starter artwork), ``color_judge``: the share of images whose
  dominant foreground colour is the one their caption gives its object (`colour`, a rule, not a network);
- optionally (``diversity``), ``seed_diversity_ratio``: how far 8 seeds of one prompt spread, against
  the spread of different real images of one category (`diversity`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import linalg

from gen_engine.models.encoder import ImageEncoder, load_encoder, save_encoder, train_encoder
from gen_engine.models.noise import seed_noise

log = logging.getLogger(__name__)
ENCODER_STEPS = 1500  # training steps of an evaluation encoder (Settings.eval_encoder_steps in the DAGs)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)  # (scipy >= 1.16 dropped `disp`; the default returns the matrix alone)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def r_precision(img: np.ndarray, text: np.ndarray, captions: list[str], seed: int = 0, pool: int = 100) -> float:
    """Fraction of images whose own caption scores highest among ``pool`` (itself + distinct others)."""
    return r_precision_subset(img, text, captions, np.arange(len(img)), seed, pool)


def r_precision_subset(img: np.ndarray, text: np.ndarray, captions: list[str], rows: np.ndarray, seed: int = 0,
                       pool: int = 100) -> float:
    """R-precision of the images at ``rows`` only (their negatives drawn from every caption)."""
    rng = np.random.default_rng(seed)
    distinct = np.array(captions)
    hits = 0
    for i in rows:
        others = np.flatnonzero(distinct != captions[i])
        pick = rng.choice(others, size=min(pool - 1, len(others)), replace=False)
        hits += int((text[np.concatenate([[i], pick])] @ img[i]).argmax() == 0)
    return hits / max(len(rows), 1)


@torch.no_grad()
def encode(enc: ImageEncoder, images: torch.Tensor, batch: int = 256) -> np.ndarray:
    chunks = [enc(images[i : i + batch].float() / 127.5 - 1).numpy() for i in range(0, len(images), batch)]
    return np.concatenate(chunks)


def render_heldout(render: Any, data: Any, n: int) -> torch.Tensor:
    """One image per held-out caption (the first ``n``), seed = index: (n, 3, R, R) uint8."""
    text = data.text[:n].numpy()
    z = np.stack([seed_noise(i, 100) for i in range(n)])
    fake = np.concatenate([render(z[i : i + 64], text[i : i + 64]) for i in range(0, n, 64)])
    return torch.from_numpy(fake).permute(0, 3, 1, 2).contiguous()


def evaluate(render: Any, data: Any, enc: ImageEncoder, labels: dict[str, torch.Tensor] | None = None,
             n: int = 1000, diversity: bool = False) -> dict[str, float]:
    """Metrics of a backend (``render(z, text) -> uint8 NHWC``) on held-out ``data`` (a TrainData)."""
    from gen_engine.evaluation.colour import colour_judge

    t0 = time.monotonic()
    n = min(n, len(data))
    text = data.text[:n].numpy()
    fake_t = render_heldout(render, data, n)
    real_f, fake_f = encode(enc, data.images[:n]), encode(enc, fake_t)
    out = {"fd": frechet_distance(real_f, fake_f), "r_precision": r_precision(fake_f, text, data.captions[:n]),
           "cosine": float((fake_f * text).sum(1).mean()), "n": n,
           "real_r_precision": r_precision(real_f, text, data.captions[:n])}
    if "lang" in getattr(data, "meta", {}):  # captions in several languages: R-precision per language too
        langs = np.array(data.meta["lang"][:n])
        for lang in sorted(set(langs.tolist())):
            sel = np.flatnonzero(langs == lang)
            if len(sel) >= 10:
                hits = r_precision_subset(fake_f, text, data.captions[:n], sel)
                out[f"r_precision_{lang}"] = hits
    if "color" in getattr(data, "meta", {}):  # artwork shown on white whose captions colour their objects
        judge = colour_judge(fake_t.permute(0, 2, 3, 1).numpy(), data.captions[:n])
        if judge["color_judged"]:
            out.update(judge)
    if diversity:
        from gen_engine.evaluation.diversity import seed_diversity

        out.update(seed_diversity(render, data, lambda x: encode(enc, x)))
    if labels and enc.heads:
        with torch.no_grad():
            preds = enc.attributes(fake_t.float() / 127.5 - 1)
        for k, logits in preds.items():
            out[f"{k}_acc"] = float((logits.argmax(1) == labels[k][:n]).float().mean())
    out["seconds"] = time.monotonic() - t0
    return out


def append_metrics(path: Path, step: int, metrics: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps({"step": step, "time": time.time(), **metrics}) + "\n")


def cached_encoder(data: Any, cache_dir: Path, steps: int = ENCODER_STEPS) -> tuple[ImageEncoder, dict[str, list[str]]]:
    """The evaluation encoder of a dataset version (and step count): trained once, then loaded."""
    key = f"{data.dataset_version_id or data.version.replace(':', '-')}-s{steps}"
    w, meta = cache_dir / f"{key}.safetensors", cache_dir / f"{key}.json"
    labels, vocab = data.labels() if data.attributes else ({}, {})
    if w.exists() and meta.exists():
        vocab = json.loads(meta.read_text())["vocab"]
        enc = load_encoder(w, heads={k: len(v) for k, v in vocab.items()})
        return enc, vocab
    enc = train_encoder(data.images, data.text, labels, steps=steps)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_encoder(enc, w)
    meta.write_text(json.dumps({"vocab": vocab, "dataset": key}))
    return enc, vocab


def evaluate_model(model_dir: Path, train: Any, heldout: Any, cache_dir: Path, n: int = 1000,
                   encoder_steps: int = ENCODER_STEPS) -> dict[str, Any]:
    """Metrics of a model folder on held-out data, with the dataset's cached evaluation encoder."""
    from gen_engine.runtime import TorchBackend

    enc, vocab = cached_encoder(train, cache_dir, encoder_steps)
    labels = heldout.labels(vocab)[0] if vocab and heldout.attributes else None
    return evaluate(TorchBackend(model_dir, device="cpu").render, heldout, enc, labels, n=n)

"""Seed diversity: do different seeds give different pictures of the same prompt?

For each of up to ``n`` distinct held-out captions the generator renders ``seeds`` images (seeds 0..k-1);
the score is the mean pairwise distance of their features in the evaluation encoder's space. The
reference is the mean distance between *different* real images of the same category (rows of one
image under several captions are one image), in the same space: a generator that ignores z scores 0,
and "a quarter of the reference" (the starter issue's bar) means seeds move the image a visible part
of the way between two real artworks of its kind.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from gen_engine.evaluation.registry import EvalContext, metric
from gen_engine.models.noise import seed_noise


def _mean_pairwise(f: np.ndarray) -> float:
    d = np.sqrt(np.maximum(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1), 0))
    n = len(f)
    return float(d.sum() / (n * (n - 1))) if n > 1 else 0.0


def seed_spread(render: Any, encode: Any, text: np.ndarray, seeds: int = 8) -> float:
    """Mean over captions (rows of ``text``) of the mean pairwise feature distance of ``seeds`` renders."""
    z = np.stack([seed_noise(s, 100) for s in range(seeds)])
    spreads = []
    for t in text:
        imgs = render(z, np.repeat(t[None], seeds, axis=0))  # (k, H, W, 3) uint8
        spreads.append(_mean_pairwise(encode(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous())))
    return float(np.mean(spreads)) if spreads else float("nan")


def category_spread(images: torch.Tensor, categories: list[str], encode: Any, per_category: int = 64) -> float:
    """Mean pairwise feature distance of distinct real images within a category, averaged over categories
    (each category's first ``per_category`` distinct images)."""
    groups: dict[str, dict[str, int]] = {}
    for i, cat in enumerate(categories):
        key = hashlib.sha256(images[i].numpy().tobytes()).hexdigest()
        g = groups.setdefault(cat, {})
        if key not in g and len(g) < per_category:
            g[key] = i
    spreads = [_mean_pairwise(encode(images[list(g.values())])) for g in groups.values() if len(g) > 1]
    return float(np.mean(spreads)) if spreads else float("nan")


def seed_diversity(render: Any, data: Any, encode: Any, n: int = 100, seeds: int = 8) -> dict[str, float]:
    """Both spreads and their ratio on held-out ``data`` (a TrainData whose meta has ``category``)."""
    distinct = list(dict.fromkeys(data.captions))
    step = max(1, len(distinct) // n)
    picked = distinct[::step][:n]
    index = {c: i for i, c in enumerate(data.captions)}
    text = data.text[[index[c] for c in picked]].numpy()
    gen = seed_spread(render, encode, text, seeds)
    real = category_spread(data.images, data.meta.get("category") or ["all"] * len(data), encode)
    return {"seed_spread": gen, "category_spread_real": real, "seed_diversity_ratio": gen / real if real else 0.0,
            "seed_captions": len(picked)}


@metric("seed_diversity")
def seed_diversity_metric(ctx: EvalContext) -> dict[str, float]:
    return seed_diversity(ctx.render, ctx.data, ctx.encode)

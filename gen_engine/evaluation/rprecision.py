"""R-precision (does the true caption rank first among 100?), per language where captions carry one,
plus the mean image-text cosine; the real images' R-precision is the ceiling reported beside it."""

from __future__ import annotations

import numpy as np

from gen_engine.evaluation.registry import EvalContext, metric


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


@metric("r_precision")
def r_precision_metric(ctx: EvalContext) -> dict[str, float]:
    out = {"r_precision": r_precision(ctx.fake_features, ctx.text, ctx.captions),
           "cosine": float((ctx.fake_features * ctx.text).sum(1).mean()),
           "real_r_precision": r_precision(ctx.real_features, ctx.text, ctx.captions)}
    if "lang" in getattr(ctx.data, "meta", {}):  # captions in several languages: R-precision per language too
        langs = np.array(ctx.data.meta["lang"][: ctx.n])
        for lang in sorted(set(langs.tolist())):
            sel = np.flatnonzero(langs == lang)
            if len(sel) >= 10:
                out[f"r_precision_{lang}"] = r_precision_subset(ctx.fake_features, ctx.text, ctx.captions, sel)
    return out

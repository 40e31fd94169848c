"""Frechet distance between real and generated images in the evaluation encoder's space."""

from __future__ import annotations

import numpy as np
from scipy import linalg

from gen_engine.evaluation.registry import EvalContext, metric


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)  # (scipy >= 1.16 dropped `disp`; the default returns the matrix alone)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@metric("fd")
def fd_metric(ctx: EvalContext) -> dict[str, float]:
    return {"fd": frechet_distance(ctx.real_features, ctx.fake_features)}

"""z for one image, the rendering contract: numpy PCG64 seeded by the image's seed.

Every backend, the training sample grids and the evaluation draw z here, so the same (prompt, seed)
is the same picture everywhere.
"""

from __future__ import annotations

import numpy as np


def seed_noise(seed: int, z_dim: int, variety: float = 1.0) -> np.ndarray:
    """(z_dim,) float32; variety < 1 truncates toward the mean image (lower is more typical)."""
    z = np.random.Generator(np.random.PCG64(seed)).standard_normal(z_dim).astype(np.float32)
    if variety < 1.0:
        z = np.clip(z, -2.0, 2.0) * variety
    return z

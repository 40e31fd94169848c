"""A small image encoder trained against the frozen MiniLM caption embeddings (the DAMSM recipe; its
training is `gen_engine.training.encoder`).

Two users, two separately trained instances:
- evaluation (`gen_engine.evaluation`): one per dataset version, with attribute heads on synthetic
  shapes, to score generated images (R-precision, Frechet distance, colour and shape accuracy);
- training (`TrainConfig.guide_weight`): a text-alignment guide for the generator, the role CLIP plays
  in StyleGAN-T and LAFITE, trained on the training split at the start of a run with its own seed and
  augmentations, captions only (no attribute labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Inputs larger than this are average-pooled down to it first: at 64 px the full-resolution encoder cost
# ~13 GMACs per batch of 128 (about 13 minutes for a guide's 1,000 steps on 2 CPU cores); at 32 px a quarter.
# Colour, layout and category survive the pooling; what the encoders judge is not pixel-level detail.
WORK_RES = 32


class ImageEncoder(nn.Module):
    """A small CNN: (B, 3, R, R) in [-1, 1] -> (B, 384) unit vectors, plus optional attribute heads.

    Images above WORK_RES pixels are average-pooled to WORK_RES before the network sees them."""

    def __init__(self, dim: int = 384, width: int = 32, heads: dict[str, int] | None = None) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(w, w * 2, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(w * 2, w * 4, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(w * 4, w * 8, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(w * 8, dim)
        self.heads = nn.ModuleDict({k: nn.Linear(w * 8, n) for k, n in (heads or {}).items()})
        self.logit_scale = nn.Parameter(torch.tensor(np.log(1 / 0.07), dtype=torch.float32))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, 8w) pooled features."""
        if x.shape[-1] > WORK_RES:
            x = F.adaptive_avg_pool2d(x, WORK_RES)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.trunk(x)), dim=1)

    def attributes(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(x)
        return {k: head(h) for k, head in self.heads.items()}


def save_encoder(enc: ImageEncoder, path: Path, meta: dict[str, str] | None = None) -> None:
    """Weights as safetensors (no pickle); the architecture is the class's, heads as the caller records.
    ``meta``: what the encoder was trained on, kept in the file's header (`encoder_meta`)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, path, metadata=meta)


def encoder_meta(path: Path) -> dict[str, str]:
    """The header metadata `save_encoder` wrote (empty if none)."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return f.metadata() or {}


def load_encoder(path: Path, heads: dict[str, int] | None = None) -> ImageEncoder:
    from safetensors.torch import load_file

    enc = ImageEncoder(heads=heads)
    enc.load_state_dict(load_file(path))
    return enc.eval()


def info_nce(img: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of unit image embeddings against their captions (the batch's others as negatives)."""
    logits = logit_scale.exp().clamp(max=100.0) * (img.float() @ text.float().T)
    target = torch.arange(len(text), device=text.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2

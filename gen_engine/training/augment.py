"""DiffAugment (Zhao et al., 2020): the same differentiable augmentations on real and fake images.

Randomness comes from an explicit ``torch.Generator`` so that a training step is a pure function
of (weights, step): resumed runs see exactly the augmentations an uninterrupted run would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gen_engine.models.gan import memory_format_of


def diff_augment(x: torch.Tensor, policy: str, gen: torch.Generator) -> torch.Tensor:
    """Apply the comma-separated policy ("color,translation,cutout") to (B, 3, H, W) in [-1, 1]."""
    for name in filter(None, (p.strip() for p in policy.split(","))):
        x = {"color": _color, "translation": _translation, "cutout": _cutout}[name](x, gen)
    return x


def _rand(x: torch.Tensor, gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(x.shape[0], *shape, generator=gen, device="cpu").to(x.device, x.dtype)


def _color(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    x = x + (_rand(x, gen, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_rand(x, gen, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_rand(x, gen, 1, 1, 1) + 0.5) + mean


def _translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    shift = (_rand(x, gen, 2) * 2 - 1) * ratio * 2  # in normalised [-1, 1] coordinates
    theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    # grid_sample always returns NCHW; keep a channels-last batch channels-last for the convs that follow.
    return out.contiguous(memory_format=memory_format_of(x))


def _cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = (_rand(x, gen, 1) * (h + 1 - ch % 2)).long() - ch // 2  # (B, 1)
    cx = (_rand(x, gen, 1) * (w + 1 - cw % 2)).long() - cw // 2
    ys = torch.arange(h, device=x.device)[None, :]
    xs = torch.arange(w, device=x.device)[None, :]
    in_y = (ys >= cy) & (ys < cy + ch)  # (B, H)
    in_x = (xs >= cx) & (xs < cx + cw)  # (B, W)
    mask = ~(in_y[:, :, None] & in_x[:, None, :])  # (B, H, W)
    return x * mask[:, None].to(x.dtype)

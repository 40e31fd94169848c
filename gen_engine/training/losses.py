"""The losses of one training step: hinge with mismatched-text negatives, MA-GP, and the optional
contrastive and guidance pulls toward the captions; plus the EMA update."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from gen_engine.models.encoder import ImageEncoder, info_nce
from gen_engine.models.gan import Discriminator, Generator
from gen_engine.training.augment import diff_augment

if TYPE_CHECKING:
    from gen_engine.training.config import TrainConfig


def contrastive_loss(d: Discriminator, feats: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between D's image embeddings and the batch's caption embeddings."""
    return info_nce(d.embed(feats), text, d.logit_scale)


def d_loss(g: Generator, d: Discriminator, real: torch.Tensor, fake: torch.Tensor, text: torch.Tensor,
           cfg: TrainConfig, aug: torch.Generator, with_gp: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """Hinge loss on real/fake/mismatched pairs plus (``with_gp``) the matching-aware gradient penalty.

    ``fake`` is G's output for ``text``, detached: D's step does not reach into G."""
    real_a = diff_augment(real, cfg.diffaug, aug).requires_grad_(with_gp)
    cond = g.norm_text(text)  # D's conditional head sees the caption as G does
    text_gp = cond.clone().requires_grad_(with_gp)
    feats_real = d.features(real_a)
    out_real = d.score(feats_real, text_gp)
    out_mis = d.score(feats_real, torch.roll(cond, 1, dims=0))  # mismatched captions
    out_fake = d(diff_augment(fake, cfg.diffaug, aug), cond)
    loss_real = F.relu(1.0 - out_real).mean()
    loss_fake = F.relu(1.0 + out_fake).mean()
    loss_mis = F.relu(1.0 + out_mis).mean()
    loss = loss_real + (loss_fake + loss_mis) / 2
    logs = {"d_real": loss_real.item(), "d_fake": loss_fake.item(), "d_mis": loss_mis.item()}
    if cfg.contrastive_weight:
        con = contrastive_loss(d, feats_real, text)
        loss = loss + cfg.contrastive_weight * con
        logs["d_con"] = con.item()
    if with_gp:
        grads = torch.autograd.grad(out_real.sum(), (real_a, text_gp), create_graph=True)
        gnorm = torch.cat([g_.reshape(g_.shape[0], -1) for g_ in grads], dim=1).float().norm(2, dim=1)
        magp = cfg.magp_weight * cfg.magp_every * (gnorm ** cfg.magp_power).mean()
        loss = loss + magp
        logs["magp"] = magp.item() / cfg.magp_every
    return loss, logs


def g_loss(g: Generator, d: Discriminator, fake: torch.Tensor, text: torch.Tensor, cfg: TrainConfig,
           aug: torch.Generator, guide: ImageEncoder | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Adversarial hinge (G side) plus, if configured, the contrastive and guidance pulls toward the captions.

    ``fake`` is G's output for ``text`` with its graph, the same tensor D's step saw detached."""
    fake = diff_augment(fake, cfg.diffaug, aug)
    feats = d.features(fake)
    loss, logs = -d.score(feats, g.norm_text(text)).mean(), {}
    if cfg.contrastive_weight:
        con = contrastive_loss(d, feats, text)
        loss = loss + cfg.contrastive_weight * con
        logs["g_con"] = con.item()
    if guide is not None and cfg.guide_weight:
        gl = info_nce(guide(fake.float()), text, guide.logit_scale)
        loss = loss + cfg.guide_weight * gl
        logs["g_guide"] = gl.item()
    return loss, logs


@torch.no_grad()
def ema_update(g_ema: Generator, g: Generator, decay: float) -> None:
    # One multi-tensor op for all parameters, not one small lerp each.
    torch._foreach_lerp_(list(g_ema.parameters()), list(g.parameters()), 1.0 - decay)

"""Training the small image encoder (`gen_engine.models.encoder.ImageEncoder`) against caption embeddings.

Two callers: a run's guidance encoder (`Trainer`) and a dataset version's evaluation encoder
(`gen_engine.evaluation`); both train it here, the architecture and its files live with the models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gen_engine.models.encoder import ImageEncoder, info_nce
from gen_engine.training.augment import diff_augment


def train_encoder(images: torch.Tensor, text: torch.Tensor, labels: dict[str, torch.Tensor] | None = None,
                  steps: int = 1500, batch: int = 128, seed: int = 0, augment: str = "",
                  device: torch.device | str = "cpu") -> ImageEncoder:
    """Contrastive (symmetric InfoNCE) against fixed caption embeddings, plus attribute cross-entropy.

    Random horizontal flips always; ``augment`` adds a DiffAugment policy (e.g. "translation").
    Batches are drawn on the CPU (the same ones on any device); the encoder trains on ``device``.
    """
    torch.manual_seed(seed)
    labels = labels or {}
    enc = ImageEncoder(heads={k: int(v.max()) + 1 for k, v in labels.items()}).to(device)
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    n = images.shape[0]
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, n, (min(batch, n),), generator=g)
        x = images[idx].to(device).float() / 127.5 - 1
        if torch.rand(1, generator=g).item() < 0.5:
            x = x.flip(3)
        x = diff_augment(x, augment, g)
        h = enc.trunk(x)
        loss = info_nce(F.normalize(enc.proj(h), dim=1), text[idx].to(device), enc.logit_scale)
        for k, head in enc.heads.items():
            loss = loss + F.cross_entropy(head(h), labels[k][idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return enc.cpu().eval()

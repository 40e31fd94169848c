"""Training the x4 upsampler (`models.upsampler`) on a dataset's masters.

Pairs are made the way the generator's renders come to look: a 256 px master is downscaled to 64 px
with Lanczos, exactly as ingest makes the 64 px training images the generator learns from, plus a
little noise (the generator's outputs are not perfectly clean). The network learns 64 -> 256 on random
aligned crops.

Loss: L1 against the master, and from a quarter of the way in a small hinge-loss adversarial term from
a patch discriminator (weight ``adv_weight``), which sharpens edges that L1 alone leaves soft. Held-out
masters (the dataset's val split, by content hash) are never trained on; `evaluate` scores them against
Lanczos (PSNR and SSIM).
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from gen_engine.datasets.images import split_of, square
from gen_engine.errors import UserError
from gen_engine.models.upsampler import Upsampler, UpsamplerConfig, upsample_uint8

log = logging.getLogger(__name__)
MASTER = 256
MIN_MASTERS = 8


@dataclass(frozen=True)
class UpsamplerTrainConfig:
    steps: int = 3000
    batch_size: int = 16
    crop: int = 128  # HR crop side (LR crop = crop / 4)
    lr: float = 4e-4
    adv_weight: float = 0.005
    noise: float = 1.0 / 255  # std of the Gaussian noise added to the LR input
    seed: int = 0
    features: int = 32
    body: int = 8
    unshuffle: int = 1


@dataclass
class Masters:
    """Masters as uint8 (N, 256, 256, 3) with their content hashes and split."""

    hr: np.ndarray
    hashes: list[str]
    split: list[str]
    dataset_version_id: str | None = None

    def subset(self, split: str) -> Masters:
        ix = [i for i, s in enumerate(self.split) if s == split]
        return Masters(self.hr[ix], [self.hashes[i] for i in ix], [split] * len(ix), self.dataset_version_id)

    @classmethod
    def from_folder(cls, folder: Path, val_percent: int = 5) -> Masters:
        """An imagefolder (images anywhere below ``folder``): each image squared to 256 px as ingest does."""
        files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
        if not files:
            raise UserError(f"no images under {folder}")
        hr = np.empty((len(files), MASTER, MASTER, 3), np.uint8)
        hashes = []
        for i, f in enumerate(files):
            data = f.read_bytes()
            hashes.append(hashlib.sha256(data).hexdigest())
            hr[i] = np.asarray(square(Image.open(io.BytesIO(data)), MASTER))
        return cls(hr, hashes, [split_of(h, val_percent) for h in hashes], None)

    @classmethod
    def from_curated(cls, ref: str, res: Any, train_hashes: set[str] | None = None) -> Masters:
        """The masters of a curated version (``name`` or ``name@vN``) from S3, split as its shards say;
        ``train_hashes`` (the content hashes of its train split, when the caller has them) spares reading
        the shards again."""
        import polars as pl

        row, splits, master_keys = _curated(ref, res, read_splits=train_hashes is None)
        if not master_keys:
            raise UserError(f"curated version {row['version_id']} has no masters (ingest with a master size)")
        bucket = res.settings.bucket_datasets
        df = pl.concat([pl.read_parquet(io.BytesIO(res.storage.get_bytes(bucket, k))) for k in master_keys])
        df = df.filter(pl.col("side") >= MASTER)
        if df.height < MIN_MASTERS:
            raise UserError(f"curated version {row['version_id']} has {df.height} masters of at least {MASTER} px; "
                            f"an upsampler needs {MIN_MASTERS} or more")
        hr = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB").resize((MASTER, MASTER),
                                                                                 Image.Resampling.LANCZOS))
                       for b in df["master"]])
        hashes = df["content_hash"].to_list()
        split = [("train" if h in train_hashes else "val") if train_hashes is not None else splits.get(h, "train")
                 for h in hashes]
        return cls(hr, hashes, split, row["version_id"])


def _curated(ref: str, res: Any, read_splits: bool = True) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """A curated version's lineage row, the split of each content hash (from its shards' columns, not
    recomputed; empty without ``read_splits``), and the keys of its masters' parquet files."""
    import polars as pl

    name, _, v = ref.partition("@")
    row = res.lineage.dataset_version(name, int(v.lstrip("v")) if v else None)
    if row is None:
        raise UserError(f"no curated dataset '{ref}'")
    bucket = res.settings.bucket_datasets
    prefix = row["uri"].removeprefix(f"s3://{bucket}/")
    keys = [o.key for o in res.storage.list(bucket, prefix) if o.key.endswith(".parquet")]
    frames = [pl.read_parquet(io.BytesIO(res.storage.get_bytes(bucket, k)), columns=["content_hash", "split"])
              for k in keys if "/masters/" not in k] if read_splits else []
    both = pl.concat(frames).unique("content_hash", maintain_order=True) if frames else None
    splits = dict(zip(both["content_hash"].to_list(), both["split"].to_list(), strict=True)) if both is not None else {}
    return row, splits, [k for k in keys if "/masters/" in k]


def masters_digest(hashes: list[str]) -> str:
    """What an upsampler was trained on: a hash of its training masters' content hashes (sorted, unique).
    The retrain compares it with the new dataset version's to decide whether to train a new one."""
    return hashlib.sha256("\n".join(sorted(set(hashes))).encode()).hexdigest()


def short_hashes(hashes: list[str]) -> list[str]:
    """The training masters' content hashes, 16 hex digits each, sorted: recorded with the upsampler so the
    retrain can tell whether a new dataset version brings images it has not learned."""
    return sorted({h[:16] for h in hashes})


def degrade(hr: np.ndarray, scale: int = 4) -> np.ndarray:
    """What the generator's renders look like: Lanczos-downscaled masters (as ingest makes training images)."""
    n, h, w, _ = hr.shape
    out = np.empty((n, h // scale, w // scale, 3), np.uint8)
    for i in range(n):
        out[i] = np.asarray(Image.fromarray(hr[i]).resize((w // scale, h // scale), Image.Resampling.LANCZOS))
    return out


def lanczos_up(lr: np.ndarray, scale: int = 4) -> np.ndarray:
    n, h, w, _ = lr.shape
    out = np.empty((n, h * scale, w * scale, 3), np.uint8)
    for i in range(n):
        out[i] = np.asarray(Image.fromarray(lr[i]).resize((w * scale, h * scale), Image.Resampling.LANCZOS))
    return out


class PatchD(nn.Module):
    """A small patch discriminator on [0, 1] images (the adversarial term)."""

    def __init__(self, ch: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(ch, ch * 2, 4, 2, 1), nn.LeakyReLU(0.2, True),
            nn.Conv2d(ch * 2, ch * 4, 4, 2, 1), nn.LeakyReLU(0.2, True), nn.Conv2d(ch * 4, 1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 2 - 1)


def train_upsampler(masters: Masters, cfg: UpsamplerTrainConfig = UpsamplerTrainConfig(), progress: bool = False,
                    time_budget_s: float | None = None) -> tuple[Upsampler, dict[str, Any]]:
    """Train on ``masters`` (the train split: the caller passes ``masters.subset("train")``)."""
    from tqdm import tqdm

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    hr = torch.from_numpy(masters.hr).permute(0, 3, 1, 2).contiguous()  # uint8 N,3,256,256
    lr = torch.from_numpy(degrade(masters.hr)).permute(0, 3, 1, 2).contiguous()
    up = Upsampler(UpsamplerConfig(cfg.features, cfg.body, unshuffle=cfg.unshuffle))
    d = PatchD()
    opt_g = torch.optim.Adam(up.parameters(), cfg.lr, betas=(0.9, 0.99))
    opt_d = torch.optim.Adam(d.parameters(), cfg.lr, betas=(0.5, 0.99))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt_g, cfg.steps)
    c, cl = cfg.crop, cfg.crop // 4
    adv_from = cfg.steps // 4
    hist: list[dict[str, float]] = []
    t0 = time.monotonic()
    bar = tqdm(range(cfg.steps), desc="upsampler", disable=not progress, mininterval=2.0)
    step = 0
    for step in bar:
        ix = torch.randint(0, len(hr), (cfg.batch_size,), generator=gen)
        ys = torch.randint(0, (MASTER - c) // 4 + 1, (cfg.batch_size,), generator=gen)
        xs = torch.randint(0, (MASTER - c) // 4 + 1, (cfg.batch_size,), generator=gen)
        x = torch.stack([lr[i, :, yy:yy + cl, xx:xx + cl] for i, yy, xx in zip(ix, ys, xs, strict=True)]).float() / 255
        y = torch.stack([hr[i, :, 4 * yy:4 * yy + c, 4 * xx:4 * xx + c] for i, yy, xx in zip(ix, ys, xs, strict=True)]
                        ).float() / 255
        if torch.rand((), generator=gen) < 0.5:  # flips: artwork is not symmetric, but its strokes are
            x, y = x.flip(-1), y.flip(-1)
        x = (x + torch.randn(x.shape, generator=gen) * cfg.noise).clamp(0, 1)
        out = up(x)
        l1 = F.l1_loss(out, y)
        loss = l1
        adv = torch.zeros(())
        if step >= adv_from and cfg.adv_weight > 0:
            opt_d.zero_grad(set_to_none=True)
            ld = F.relu(1 - d(y)).mean() + F.relu(1 + d(out.detach())).mean()
            ld.backward()
            opt_d.step()
            adv = -d(out).mean()
            loss = l1 + cfg.adv_weight * adv
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()
        sched.step()
        if step % 50 == 0:
            hist.append({"step": step, "l1": float(l1.detach()), "adv": float(adv.detach())})
            bar.set_postfix(l1=f"{hist[-1]['l1']:.4f}")
            if not progress and step % 500 == 0:
                log.info("upsampler step %d/%d: L1 %.4f", step, cfg.steps, hist[-1]["l1"])
        if time_budget_s and time.monotonic() - t0 > time_budget_s:
            log.warning("upsampler: time budget of %.0f s reached at step %d of %d", time_budget_s, step, cfg.steps)
            break
    bar.close()
    return up.eval(), {"config": asdict(cfg), "steps_done": step + 1, "seconds": time.monotonic() - t0,
                       "history": hist, "train_images": len(hr), "dataset_version_id": masters.dataset_version_id,
                       "masters_digest": masters_digest(masters.hashes), "masters": short_hashes(masters.hashes)}


def train_into(model_dir: Path, masters: Masters, cfg: UpsamplerTrainConfig = UpsamplerTrainConfig(),
               progress: bool = False, time_budget_s: float | None = None, **meta: Any) -> dict[str, Any]:
    """Train on the masters' train split, score on their val split (when there is one) and write the
    upsampler into ``model_dir``; returns the held-out scores. The one path of `genengine train-upsampler`,
    the starter model's build and the retrain."""
    from gen_engine.models.upsampler import save_upsampler

    up, info = train_upsampler(masters.subset("train"), cfg, progress=progress, time_budget_s=time_budget_s)
    scores = evaluate(up, masters.subset("val")) if "val" in masters.split else {}
    save_upsampler(Path(model_dir), up, {"training": {k: v for k, v in info.items() if k != "history"},
                                         "heldout": scores, **meta})
    log.info("upsampler written to %s: %d masters, %d steps, held-out %s", model_dir, info["train_images"],
             info["steps_done"], scores)
    return scores


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None].repeat(3, 1, 1, 1)


def psnr_ssim(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image PSNR (dB) and SSIM (Gaussian window 11, sigma 1.5, averaged over RGB) of uint8 NHWC."""
    psnrs, ssims = [], []
    w = _gauss()
    c1, c2 = 0.01**2, 0.03**2
    for i in range(0, len(a), 16):  # float32 in chunks: double-precision convolutions are very slow on CPU
        x = torch.from_numpy(a[i:i + 16]).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(b[i:i + 16]).permute(0, 3, 1, 2).float() / 255
        mse = ((x.double() - y.double()) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
        psnrs.append(10 * torch.log10(1 / mse))
        mu_x, mu_y = F.conv2d(x, w, groups=3), F.conv2d(y, w, groups=3)
        sxx = F.conv2d(x * x, w, groups=3) - mu_x**2
        syy = F.conv2d(y * y, w, groups=3) - mu_y**2
        sxy = F.conv2d(x * y, w, groups=3) - mu_x * mu_y
        ssim = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
        ssims.append(ssim.mean(dim=(1, 2, 3)))
    return torch.cat(psnrs).numpy(), torch.cat(ssims).double().numpy()


def gradient_energy(imgs: np.ndarray) -> float:
    """Mean squared gradient of the luminance (a sharpness figure: blur lowers it)."""
    lum = imgs.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    gx, gy = np.diff(lum, axis=2), np.diff(lum, axis=1)
    return float((gx**2).mean() + (gy**2).mean())


def evaluate(up: Upsampler, masters: Masters, batch: int = 32) -> dict[str, Any]:
    """Held-out masters: upsample(degrade(master)) and Lanczos(degrade(master)) against the master."""
    lr = degrade(masters.hr)
    ours = np.concatenate([upsample_uint8(up, lr[i:i + batch]) for i in range(0, len(lr), batch)])
    base = lanczos_up(lr)
    p_up, s_up = psnr_ssim(ours, masters.hr)
    p_lz, s_lz = psnr_ssim(base, masters.hr)
    return {"images": len(lr), "psnr_upsampler": float(p_up.mean()), "psnr_lanczos": float(p_lz.mean()),
            "psnr_gain_db": float(p_up.mean() - p_lz.mean()), "ssim_upsampler": float(s_up.mean()),
            "ssim_lanczos": float(s_lz.mean()), "psnr_gain_median_db": float(np.median(p_up - p_lz)),
            "images_better": int((p_up > p_lz).sum()), "finite": bool(math.isfinite(float(p_up.mean())))}

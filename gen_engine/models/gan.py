"""DF-GAN-style text-conditional generator and discriminator (Tao et al., 2022), export-friendly.

Generator: z (100) -> linear -> 8nf x 4 x 4 -> up-blocks (nearest x2, then two text-conditioned
affine fusions + LeakyReLU + conv3x3, with a shortcut) -> LeakyReLU -> conv3x3 -> tanh.
Affine scale/shift come from small MLPs on cat(z, text). Only ops that export cleanly to ONNX and
TensorRT: constant scale-factor upsampling, reshape with a -1 batch, no in-graph randomness.

Discriminator: conv stem, downsampling residual blocks to 4 x 4; a separate conditional head tiles
the sentence embedding, concatenates and scores (so the matching-aware gradient penalty can take
gradients with respect to both image and text). A linear projection of the pooled 4 x 4 features
into the caption space (`embed`) serves the optional image-text contrastive term of training.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gen_engine.errors import UserError

RESOLUTIONS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class GANConfig:
    """Architecture of a generator/discriminator pair; stored with every checkpoint.

    resolution: output side in pixels (16, 32, 64, 128 or 256).
    nf: base width; the 4x4 stage has 8*nf channels, halving down to nf.
    z_dim: noise dimension (100 in DF-GAN).
    text_dim: sentence-embedding dimension (384 for MiniLM).
    channel_mult: channels at 4x4, 8x8, 16x16, ... as multiples of nf. DF-GAN's ladder keeps 8nf down
        to 16x16; a CPU recipe can narrow it sooner (8, 8, 4, 2) for several times fewer FLOPs at 32 px.
    text_stem: the 4x4 stem sees cat(z, text) instead of z alone (DF-GAN). Then the caption also lays out
        the coarse spatial map (where the shape goes, what outline it starts from), not only per-channel
        scales and shifts of a layout drawn by the noise.
    text_norm: the generator centres the caption embedding on the training captions' mean and scales it
        up (buffers ``text_mean``, ``text_scale``, set by the trainer with `Generator.fit_text_norm` and
        saved with the weights) before using it. Captions of one domain share most of their embedding (MiniLM
        cosines of ~0.7 between "a small red star on black" and "a large blue circle on white"), so the
        words that tell them apart move the raw unit vector very little next to z's norm of ~10;
        centred and scaled, those differences are the whole signal.
    """

    resolution: int = 64
    nf: int = 32
    z_dim: int = 100
    text_dim: int = 384
    channel_mult: tuple[int, ...] = (8, 8, 8, 4, 2, 1, 1)
    text_stem: bool = False
    text_norm: bool = False

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise UserError(f"resolution must be one of {RESOLUTIONS}, got {self.resolution}")
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))  # JSON gives a list
        n_stages = int(math.log2(self.resolution)) - 1
        if len(self.channel_mult) < n_stages or min(self.channel_mult) < 1:
            raise UserError(f"channel_mult needs {n_stages} positive entries for {self.resolution} px "
                             f"(4x4 up to {self.resolution}x{self.resolution}), got {list(self.channel_mult)}")

    @property
    def channels(self) -> list[int]:
        """Channels at 4x4, 8x8, ..., resolution (nf * channel_mult)."""
        n_up = int(math.log2(self.resolution)) - 2
        return [self.nf * self.channel_mult[i] for i in range(n_up + 1)]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "channel_mult": list(self.channel_mult)}


class Affine(nn.Module):
    """Per-channel scale and shift predicted from the condition (identity at init)."""

    def __init__(self, cond_dim: int, ch: int) -> None:
        super().__init__()
        self.gamma = nn.Sequential(nn.Linear(cond_dim, ch), nn.ReLU(inplace=True), nn.Linear(ch, ch))
        self.beta = nn.Sequential(nn.Linear(cond_dim, ch), nn.ReLU(inplace=True), nn.Linear(ch, ch))
        nn.init.zeros_(self.gamma[2].weight)
        nn.init.ones_(self.gamma[2].bias)
        nn.init.zeros_(self.beta[2].weight)
        nn.init.zeros_(self.beta[2].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # One fused op instead of mul + add: one full-size temporary less per fusion (memory at batch 64).
        return torch.addcmul(self.beta(c)[:, :, None, None], self.gamma(c)[:, :, None, None], x)


class Fuse(nn.Module):
    """DF-GAN's deep fusion: affine -> LeakyReLU -> affine -> LeakyReLU."""

    def __init__(self, cond_dim: int, ch: int) -> None:
        super().__init__()
        self.a1, self.a2 = Affine(cond_dim, ch), Affine(cond_dim, ch)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # In place is autograd-safe here: each affine output is consumed only by its activation.
        x = F.leaky_relu(self.a1(x, c), 0.2, inplace=True)
        return F.leaky_relu(self.a2(x, c), 0.2, inplace=True)


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int) -> None:
        super().__init__()
        self.fuse1, self.conv1 = Fuse(cond_dim, cin), nn.Conv2d(cin, cout, 3, 1, 1)
        self.fuse2, self.conv2 = Fuse(cond_dim, cout), nn.Conv2d(cout, cout, 3, 1, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x2 nearest upsampling, fusion, 3x3 conv, fusion, 3x3 conv, plus a 1x1 shortcut of the upsampled x.

        Computed at the low resolution wherever that is the same function: the fusion (per-channel affine,
        elementwise LeakyReLU) and the 1x1 shortcut commute with nearest upsampling, and conv1 of the
        upsampled map is one stride-2 transposed 4x4 convolution of the map itself (`up_conv3x3`). Only the
        order of float additions differs from the literal sequence; training steps run ~2x faster here."""
        h = up_conv3x3(self.fuse1(x, c), self.conv1)  # Fuse never writes to its input: x is intact below
        h = self.conv2(self.fuse2(h, c))
        return F.interpolate(self.shortcut(x), scale_factor=2.0, mode="nearest") + h


def up_conv3x3(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """conv(upsample_nearest_x2(x)) for a 3x3, stride-1, padding-1 conv, without the upsampled map.

    Nearest x2 upsampling is a stride-2 transposed convolution with a 2x2 box kernel; composed with the 3x3
    kernel it is one stride-2 transposed convolution whose 4x4 kernel is the 3x3 kernel's full convolution
    with the box. It does 16 multiply-adds per input pixel (4 per output pixel) instead of 9 per output
    pixel, and its backward pass skips the 4x larger upsampled gradient. The kernel is rebuilt from
    conv.weight on every call, so gradients reach the conv's own (saved, exported) parameters."""
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
    if torch.onnx.is_in_onnx_export():
        # The exporter needs a convolution's kernel shape as a constant, which a kernel computed from the
        # weights does not have: the exported eager graph (compile's fallback) is the literal definition.
        return conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    wp = F.pad(conv.weight, (1, 1, 1, 1))  # (Cout, Cin, 5, 5); the full convolution with the box, as 4 shifts:
    k = wp[:, :, 1:, 1:] + wp[:, :, :-1, 1:] + wp[:, :, 1:, :-1] + wp[:, :, :-1, :-1]
    # conv_transpose2d correlates with the flipped kernel and takes it as (Cin, Cout, kh, kw).
    return F.conv_transpose2d(x, k.flip(2, 3).transpose(0, 1), conv.bias, stride=2, padding=1)


class Generator(nn.Module):
    def __init__(self, cfg: GANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        cond = cfg.z_dim + cfg.text_dim
        self.fc = nn.Linear(cond if cfg.text_stem else cfg.z_dim, ch[0] * 16)
        self.blocks = nn.ModuleList(GBlock(a, b, cond) for a, b in zip(ch[:-1], ch[1:], strict=True))
        self.to_rgb = nn.Conv2d(ch[-1], 3, 3, 1, 1)
        if cfg.text_norm:
            self.register_buffer("text_mean", torch.zeros(cfg.text_dim))
            self.register_buffer("text_scale", torch.ones(1))

    def norm_text(self, text: torch.Tensor) -> torch.Tensor:
        """The caption embedding as the network sees it (see GANConfig.text_norm)."""
        return (text - self.text_mean) * self.text_scale if self.cfg.text_norm else text

    @torch.no_grad()
    def fit_text_norm(self, text: torch.Tensor, rms: float = 0.25) -> None:
        """Set the text_norm statistics from the training captions' embeddings (N, text_dim).

        rms: per-dimension RMS of the centred embedding; 0.25 gives it a norm of ~5 over 384 dimensions,
        half that of z. At 1.0 (norm ~20) the generator ignored z in our shapes32 trials and drew one
        picture per prompt whatever the seed.
        """
        mean = text.float().mean(0)
        spread = float((text.float() - mean).pow(2).mean().sqrt())
        self.text_mean.copy_(mean)
        self.text_scale.fill_(rms / spread if spread > 0 else 1.0)  # one distinct caption: nothing to scale

    def forward(self, z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, z_dim), (B, text_dim) -> (B, 3, R, R) in [-1, 1]."""
        c = torch.cat([z, self.norm_text(text)], dim=1)
        x = self.fc(c if self.cfg.text_stem else z).reshape(-1, self.cfg.channels[0], 4, 4)  # (B, 8nf, 4, 4)
        # In the layout of the convolutions' weights (channels-last in training): a layout mismatch makes
        # every block below convert its activations, or run a slow mixed-layout kernel.
        x = x.contiguous(memory_format=memory_format_of(self.to_rgb.weight))
        for block in self.blocks:
            x = block(x, c)
        # tanh in float32 even under bf16 autocast: in bf16 an output near +-1 rounds to exactly +-1, its
        # gradient (1 - y^2) to zero, and a saturated generator could never leave saturation.
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)).float())


class DBlock(nn.Module):
    """Residual downsampling block (learned residual scaled by gamma, res_init at init)."""

    def __init__(self, cin: int, cout: int, res_init: float = 0.0) -> None:
        super().__init__()
        self.r = nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
                               nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.LeakyReLU(0.2, inplace=True))
        self.shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.gamma = nn.Parameter(torch.full((1,), float(res_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pool, then the 1x1 shortcut: the same linear map as conv-then-pool (both commute, bias included)
        # at a quarter of the convolution's cost, on cin rather than cout channels.
        return self.shortcut(F.avg_pool2d(x, 2)) + self.gamma * self.r(x)


class Discriminator(nn.Module):
    def __init__(self, cfg: GANConfig, res_init: float = 0.0) -> None:
        """res_init: initial gain (gamma) of the blocks' learned residual branch. DF-GAN starts it at 0, so
        its D begins as average pooling and 1x1 convolutions: a linear map of the image up to the head. In
        a CPU budget of a few thousand steps the gains never left 0 (|gamma| < 0.07 after 2,000 shapes32
        steps), and D never had the nonlinear features that tell a star from a blob. At 1, D is a full
        residual network from the first step. (A training setting: D is not part of the model artifact.)
        """
        super().__init__()
        self.cfg = cfg
        ch = list(reversed(cfg.channels))  # nf ... 8nf
        self.stem = nn.Conv2d(3, ch[0], 3, 1, 1)
        self.blocks = nn.Sequential(*(DBlock(a, b, res_init) for a, b in zip(ch[:-1], ch[1:], strict=True)))
        self.head = nn.Sequential(
            nn.Conv2d(ch[-1] + cfg.text_dim, cfg.nf * 2, 3, 1, 1, bias=False), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(cfg.nf * 2, 1, 4, 1, 0, bias=False),
        )
        # Image -> sentence-embedding projection for the contrastive term (XMC-GAN / LAFITE style).
        self.embed_proj = nn.Linear(ch[-1], cfg.text_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def features(self, img: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) -> (B, 8nf, 4, 4)."""
        return self.blocks(self.stem(img))

    def score(self, feats: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Conditional logit (B,) of features against sentence embeddings.

        The head's first conv sees the features concatenated with the caption tiled over the 4x4 map. The
        tiled part is constant in space, so its convolution is, at each position, the caption times the
        sum of the kernel taps that land inside the map (zero padding): computed so, it costs 3x3 dot
        products per caption instead of a 3x3 conv over 384 extra channels (3/4 of the head's work)."""
        conv, act, out = self.head
        n = feats.shape[1]
        h = F.conv2d(feats, conv.weight[:, :n], padding=1)
        taps = torch.einsum("bc,ocyx->boyx", text, conv.weight[:, n:])  # (B, O, 3, 3)
        side = feats.shape[-1]
        # inside[i, k]: whether kernel row k of output row i reads a row of the map (not the padding)
        row = torch.arange(side)[:, None] + torch.arange(3)[None, :] - 1
        inside = ((row >= 0) & (row < side)).to(taps)
        h = h + torch.einsum("iy,jx,boyx->boij", inside, inside, taps)
        return out(act(h)).reshape(-1)

    def embed(self, feats: torch.Tensor) -> torch.Tensor:
        """Unit image embeddings (B, text_dim) in the caption space, from the 4x4 features."""
        return F.normalize(self.embed_proj(feats.mean(dim=(2, 3))), dim=1)

    def forward(self, img: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(img), text)


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """The memory format a 4-D tensor is stored in (channels-last or the default NCHW)."""
    cl = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if cl else torch.contiguous_format


def to_uint8(imgs: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((imgs.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

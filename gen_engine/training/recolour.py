"""Recolouring augmentation: teach the colour word by showing the same artwork in other colours.

The starter data names a colour in about 1.5% of its captions ("green heart", "blue book"), and each
colour-object pair is a handful of images, so a generator learns the object from the caption and
the colour from the object (every heart comes out red). Here an artwork whose chromatic pixels
share one hue is shown, with probability ``TrainConfig.recolour``, with its hue rotated to one of
seven colours and captioned with that colour ("a sticker of blue apple"): colour words and objects
are decorrelated, and the colour word becomes the only cue for the hue.

The hue of an artwork is the circular mean of its chromatic pixels' hues (saturation >= 0.25,
value >= 0.25, not near white), used only when those pixels are at least a quarter of the foreground
and agree (mean resultant length >= 0.8). Chromatic targets are the colours' hue centres in HSV, with
saturation and value kept. Brown, black and grey are made by also scaling saturation and darkening
each pixel in proportion to its saturation (`Target`): white background, highlights and dark outlines
(low saturation) stay as they are, the coloured body turns dark orange, black or grey. These are the
colours the evaluation's colour judge names (`evaluation.colour.pixel_names`); white is not a target
(a white object on a white background is its outline alone).

A row whose caption is Chinese (the data's ``lang`` column) is recaptioned in Chinese (蓝色的苹果, 绿心):
Chinese colour words are taught too, and a recoloured Chinese row keeps its language.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from gen_engine.datasets.starter import COLOURS, ZH_PHRASES, caption_colour

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """How to make one colour from an artwork of one hue: its hue (degrees), a saturation multiplier, and
    how much a fully saturated pixel is darkened (value x (1 - darken), less for less saturated pixels)."""

    hue: float
    saturation: float = 1.0
    darken: float = 0.0


TARGETS = {"red": Target(0.0), "orange": Target(28.0), "yellow": Target(55.0), "green": Target(120.0),
           "blue": Target(220.0), "purple": Target(275.0), "pink": Target(320.0),
           # dark, muted orange; near-black; mid grey (see `evaluation.colour.pixel_names` for the bands)
           "brown": Target(25.0, 0.75, 0.45), "black": Target(0.0, 0.0, 0.85), "grey": Target(0.0, 0.0, 0.35)}
# Per-target parameters as tensors, in TARGETS order: columns hue, saturation, darken.
_TABLE = torch.tensor([[getattr(t, f.name) for f in fields(Target)] for t in TARGETS.values()])
TEMPLATES = ("{colour} {name}", "a sticker of {colour} {name}", "an icon of {colour} {name}")
# Chinese rows are recoloured in Chinese: the colour words as CLDR's Chinese names write them (the one
# character, as in 蓝心 "blue heart", with 色 as in 蓝色圆 "blue circle"), in the starter data's zh phrasings.
ZH_COLOURS = {"red": "红", "orange": "橙", "yellow": "黄", "green": "绿", "blue": "蓝", "purple": "紫", "pink": "粉",
              "brown": "棕", "black": "黑", "grey": "灰", "white": "白"}
ZH_TEMPLATES = ("{name}", "{name}贴纸", "{name}图标")
# The captioning scheme's version, part of a stored table's key (`RecolourTable.cached`): bump it when
# the captions a row gets change, so that no run reuses embeddings of the old ones.
CAPTION_SCHEME = "2"


def image_hue(img: np.ndarray) -> float | None:
    """(H, W, 3) uint8 -> the artwork's hue in degrees, or None when it has no single chromatic hue."""
    x = img.reshape(-1, 3).astype(np.float32) / 255.0
    mx, mn = x.max(1), x.min(1)
    fg = (3.0 - x.sum(1)) > 60 / 255.0  # not (near) white: the background
    c = mx - mn
    s = np.where(mx > 0, c / np.maximum(mx, 1e-6), 0.0)
    chroma = fg & (s >= 0.25) & (mx >= 0.25)
    if fg.sum() == 0 or chroma.sum() < 0.25 * fg.sum():
        return None
    r, g, b = x[chroma, 0], x[chroma, 1], x[chroma, 2]
    cc = np.maximum(c[chroma], 1e-6)
    mxc = mx[chroma]
    h = np.where(mxc == r, ((g - b) / cc) % 6, np.where(mxc == g, (b - r) / cc + 2, (r - g) / cc + 4)) * 60.0
    vec = np.exp(1j * np.deg2rad(h)).mean()
    if abs(vec) < 0.8:
        return None
    return float(np.rad2deg(np.angle(vec)) % 360.0)


def hue_rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of (B, 3, H, W) images in [-1, 1] by ``degrees`` (B,); saturation and value kept."""
    return recolour_hsv(x, degrees, torch.ones_like(degrees), torch.zeros_like(degrees))


def recolour_hsv(x: torch.Tensor, degrees: torch.Tensor, saturation: torch.Tensor,
                 darken: torch.Tensor) -> torch.Tensor:
    """Per image (all (B,)): hue rotated by ``degrees``, saturation scaled by ``saturation``, value scaled
    by ``1 - darken * w`` where w = min(1, 2 x saturation): pixels without colour (white, grey, black
    outlines) keep their value, coloured ones darken fully from saturation 0.5 up."""
    rgb = (x + 1) / 2
    mx, _ = rgb.max(1)
    mn, _ = rgb.min(1)
    c = mx - mn
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    safe = c.clamp(min=1e-6)
    h = torch.where(mx == r, ((g - b) / safe) % 6, torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    h = (h + degrees.view(-1, 1, 1) / 60.0) % 6
    s = torch.where(mx > 0, c / mx.clamp(min=1e-6), torch.zeros_like(mx))
    v = mx * (1 - darken.view(-1, 1, 1) * (2 * s).clamp(max=1))
    s = s * saturation.view(-1, 1, 1)

    def channel(n: float) -> torch.Tensor:
        k = (n + h) % 6
        return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)

    return torch.stack([channel(5), channel(3), channel(1)], 1) * 2 - 1


def recoloured_name(name: str, colour: str) -> str:
    """The artwork's name in ``colour``: its own colour word replaced, or the colour put in front."""
    own = caption_colour(name)
    if own is not None and re.search(rf"\b{own}\b", name, re.IGNORECASE):
        return re.sub(rf"\b{own}\b", colour, name, count=1, flags=re.IGNORECASE)
    return f"{colour} {name}"


def recoloured_name_zh(name_zh: str, own: str | None, colour: str) -> str:
    """The Chinese name in ``colour``: the character of its own colour (``own``, from the English name;
    with a following 色) replaced by the new one's, or ``<colour>色的`` put in front (蓝色的苹果)."""
    word = ZH_COLOURS[colour] + "色"
    if own in ZH_COLOURS and ZH_COLOURS[own] in name_zh:
        return re.sub(ZH_COLOURS[own] + "色?", word, name_zh, count=1)
    return f"{word}的{name_zh}"


def zh_name(caption: str) -> str:
    """A Chinese starter caption without its phrasing (贴纸, 图标, 表情): the artwork's Chinese name."""
    for phrase in ZH_PHRASES:
        suffix = phrase.format("")
        if caption.endswith(suffix) and len(caption) > len(suffix):
            return caption[: -len(suffix)]
    return caption


def recoloured_caption(name: str, caption: str, lang: str, colour: str, pick: int) -> str:
    """The caption of a row recoloured to ``colour``, in the row's language where it can be (en, zh):
    the English name, or the Chinese one taken from a Chinese row's own caption."""
    if lang == "zh" and colour in ZH_COLOURS:
        own = caption_colour(name)
        return ZH_TEMPLATES[pick % len(ZH_TEMPLATES)].format(name=recoloured_name_zh(zh_name(caption), own, colour))
    return TEMPLATES[pick % len(TEMPLATES)].format(colour=colour, name=recoloured_name(name, colour))


@dataclass
class RecolourTable:
    """Per training row: its hue (NaN if not recolourable) and the embeddings of its recoloured captions."""

    hue: torch.Tensor  # (N,) degrees, NaN where the row is not eligible
    slot: torch.Tensor  # (N,) index into emb, -1 where not eligible
    emb: torch.Tensor  # (M, len(TARGETS), D)

    @classmethod
    def build(cls, data: object, encoder: object, seed: int = 0) -> RecolourTable:
        """From a TrainData with a ``name`` column (the starter data has it; English names only) and, where it
        has a ``lang`` column, each row's caption language: Chinese rows get Chinese colour captions."""
        meta = getattr(data, "meta", {})
        names = meta.get("name") or []
        langs = meta.get("lang") or [""] * len(names)
        n = len(data.captions)  # type: ignore[attr-defined]
        hue = torch.full((n,), float("nan"))
        slot = torch.full((n,), -1, dtype=torch.long)
        rows: list[int] = []
        images = data.images.permute(0, 2, 3, 1).numpy()  # type: ignore[attr-defined]
        hue_of: dict[int, float | None] = {}
        for i, name in enumerate(names):
            if not name or not name.isascii() or any(w in name.lower().split() for w in ("skin", "tone")):
                continue
            key = hash(images[i].tobytes())
            if key not in hue_of:
                hue_of[key] = image_hue(images[i])
            if hue_of[key] is not None:
                hue[i], slot[i] = hue_of[key], len(rows)
                rows.append(i)
        rng = np.random.default_rng(seed)
        texts = data.captions  # type: ignore[attr-defined]
        captions = [[recoloured_caption(names[i], texts[i], langs[i], c, int(rng.integers(len(TEMPLATES))))
                     for c in TARGETS] for i in rows]
        flat = [c for row in captions for c in row]
        unique = sorted(set(flat))
        dim = data.text.shape[1]  # type: ignore[attr-defined]
        emb = torch.empty(0, len(TARGETS), dim)
        if rows:
            emb_u = torch.from_numpy(encoder.encode(unique, cache=False))  # type: ignore[attr-defined]
            index = {c: j for j, c in enumerate(unique)}
            emb = emb_u[[index[c] for c in flat]].view(len(rows), len(TARGETS), dim)
        log.info("recolour: %d of %d rows recolourable (%d distinct captions embedded)", len(rows), n, len(unique))
        assert set(TARGETS) <= set(COLOURS)
        return cls(hue, slot, emb)

    @classmethod
    def cached(cls, path: Path, key: dict[str, str], data: object, encoder: object, seed: int = 0) -> RecolourTable:
        """`build`, kept in ``path`` (safetensors, ``key`` in its header) and loaded from there while the key
        matches: embedding the recoloured captions is minutes of a run's start (372 s for the starter
        data's 10,891 recolourable rows on multilingual-e5-small, 2 cores; loading the 168 MB file takes a
        fraction of a second), which a resumed or re-evaluated run need not repeat."""
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        key = {**key, "captions": CAPTION_SCHEME}
        if path.exists():
            with safe_open(path, framework="pt") as f:
                stored = f.metadata() or {}
            if stored == key:
                t = load_file(path)
                log.info("recolour: table loaded from %s", path)
                return cls(t["hue"], t["slot"], t["emb"])
            log.warning("%s was built for %s, this run needs %s: building a new table", path, stored, key)
        table = cls.build(data, encoder, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"hue": table.hue.contiguous(), "slot": table.slot.contiguous(), "emb": table.emb.contiguous()},
                  path, metadata=key)
        return table

    def apply(self, real: torch.Tensor, text: torch.Tensor, idx: torch.Tensor, p: float,
              gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Recolour each eligible row of the batch with probability ``p`` (draws from ``gen``: a pure
        function of the step, so resume stays exact)."""
        b = len(idx)
        coin = torch.rand(b, generator=gen)
        pick = torch.randint(len(TARGETS), (b,), generator=gen)
        slots = self.slot[idx]
        sel = (coin < p) & (slots >= 0)
        if not bool(sel.any()):
            return real, text
        hue, saturation, darken = _TABLE[pick[sel]].unbind(1)
        real, text = real.clone(), text.clone()
        real[sel] = recolour_hsv(real[sel], hue - self.hue[idx][sel], saturation, darken)
        text[sel] = self.emb[slots[sel], pick[sel]].to(text.dtype)
        return real, text


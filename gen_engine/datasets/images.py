"""Image helpers shared by ingest, curated-data loading and the starter builder.

Artwork arrives with transparency (emoji, stickers, icons); every consumer sees it the same way:
composited onto white, centre-cropped to a square, resized with Lanczos. The train/val split is a
pure function of an image's content hash, so the same image is held out wherever it appears.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

VAL_PERCENT = 5
HIGH_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # 16/32-bit greyscale and float


def _to_8bit(img: Image.Image) -> Image.Image:
    """High-depth greyscale scaled to 8 bits (a plain convert clips everything above 255 to white)."""
    a = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
    if img.mode == "F":
        top = max(float(a.max(initial=1.0)), 1.0)
    return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")


def flatten(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB, upright (EXIF orientation applied), high-depth greyscale scaled to 8 bits; transparent pixels
    composited onto ``background`` (white: how stickers are shown)."""
    img = ImageOps.exif_transpose(img) or img
    if img.mode in HIGH_DEPTH:
        img = _to_8bit(img)
    if img.mode in ("RGBA", "LA", "P", "PA", "La", "RGBa") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, background)
        bg.paste(rgba, mask=rgba.split()[-1])
        return bg
    return img.convert("RGB")


def square(img: Image.Image, size: int) -> Image.Image:
    """Flattened, centre-cropped to a square and resized (Lanczos) to ``size`` x ``size``."""
    img = flatten(img)
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    return img if img.size == (size, size) else img.resize((size, size), Image.Resampling.LANCZOS)


def split_of(content_hash: str, val_percent: int = VAL_PERCENT) -> str:
    """'val' for ``val_percent`` of images (by their sha256 hex digest), 'train' for the rest."""
    return "val" if int(content_hash[:8], 16) % 100 < val_percent else "train"

"""Pictures of many images at once: labelled sample grids (training) and contact sheets (ingest, campaigns).

Plain PIL and numpy, shared by every stage that shows images, so none of them imports another's code."""

from __future__ import annotations

import io
import math
import textwrap

import numpy as np
from PIL import Image, ImageDraw


def image_grid(imgs: np.ndarray, cols: int, labels: list[str] | None = None, scale: int = 0) -> Image.Image:
    """Tile (B, H, W, 3) uint8 images; one label per row drawn above it."""
    b, h, w, _ = imgs.shape
    scale = scale or max(1, 96 // h)
    h, w = h * scale, w * scale
    rows = math.ceil(b / cols)
    label_h = 14 if labels else 0
    sheet = Image.new("RGB", (cols * w, rows * (h + label_h)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i in range(b):
        r, c = divmod(i, cols)
        tile = Image.fromarray(imgs[i]).resize((w, h), Image.Resampling.NEAREST)
        sheet.paste(tile, (c * w, r * (h + label_h) + label_h))
        if labels and c == 0 and r < len(labels):
            draw.text((2, r * (h + label_h) + 1), labels[r][: cols * w // 6], fill=(0, 0, 0))
    return sheet


def contact_sheet(items: list[tuple[bytes, str, str]], cols: int = 8, tile: int = 160) -> bytes:
    """PNG of up to 64 (image bytes, asset label, prompt) tiles with their prompts underneath."""
    items = items[:64]
    rows = max(1, -(-len(items) // cols))
    cap_h = 44
    sheet = Image.new("RGB", (cols * tile, rows * (tile + cap_h)), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    for i, (data, label, prompt) in enumerate(items):
        r, c = divmod(i, cols)
        x, y = c * tile, r * (tile + cap_h)
        img = Image.open(io.BytesIO(data)).convert("RGB")
        scale = (tile - 8) / max(img.size)  # small native renders are scaled up too
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS)
        sheet.paste(img, (x + (tile - img.width) // 2, y + 4))
        lines = [label[:26]] + textwrap.wrap(prompt, 26)[:2]
        for j, line in enumerate(lines):
            draw.text((x + 4, y + tile + 2 + j * 13), line, fill=(20, 20, 20) if j else (90, 90, 160))
    buf = io.BytesIO()
    sheet.save(buf, "PNG", optimize=True)
    return buf.getvalue()

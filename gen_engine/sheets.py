"""Pictures of many images at once: labelled sample grids (training) and contact sheets (ingest, campaigns).

Plain PIL and numpy, shared by every stage that shows images, so none of them imports another's code.

Labels are prompts, in whatever script the team wrote them: each character is drawn with the first
of these fonts that has a glyph for it, so no script turns into missing-glyph boxes:
- DejaVu Sans (ships inside matplotlib): Latin, Greek, Cyrillic, Arabic, Hebrew, many symbols;
- Noto Sans CJK SC (PyPI ``noto-cjk-sans-otc``, SIL OFL 1.1): Chinese, Japanese kana, Korean hangul.
Characters neither font covers (colour emoji) are drawn by the first font. Arabic is drawn letter by
letter, left to right (no shaping without libraqm): legible, not typeset.
"""

from __future__ import annotations

import functools
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LABEL_PX = 11  # label text size (the height PIL's old bitmap default had)
CJK_FACE = 2  # NotoSansCJK-Regular.ttc: 0 JP, 1 KR, 2 SC, 3 TC, 4 HK (same glyph set, regional forms)


def _font_files() -> list[tuple[Path, int]]:
    import matplotlib
    import noto_cjk_sans_otc

    return [(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", 0),
            (Path(str(noto_cjk_sans_otc.FONT_PATH)), CJK_FACE)]


@functools.cache
def label_fonts(size: int = LABEL_PX) -> tuple[tuple[ImageFont.FreeTypeFont, frozenset[int]], ...]:
    """(font, code points it covers) in order of preference; read once per size."""
    from fontTools.ttLib import TTFont

    out = []
    for path, index in _font_files():
        cmap = TTFont(str(path), fontNumber=index, lazy=True).getBestCmap()
        out.append((ImageFont.truetype(str(path), size, index=index), frozenset(cmap)))
    return tuple(out)


def _runs(text: str, size: int) -> list[tuple[str, ImageFont.FreeTypeFont]]:
    """``text`` cut into runs of characters that one font draws."""
    fonts = label_fonts(size)
    runs: list[tuple[str, ImageFont.FreeTypeFont]] = []
    for ch in text:
        font = next((f for f, covered in fonts if ord(ch) in covered or ch.isspace()), fonts[0][0])
        if runs and runs[-1][1] is font:
            runs[-1] = (runs[-1][0] + ch, font)
        else:
            runs.append((ch, font))
    return runs


def text_width(text: str, size: int = LABEL_PX) -> float:
    return sum(font.getlength(run) for run, font in _runs(text, size))


def draw_label(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: tuple[int, int, int],
               size: int = LABEL_PX) -> None:
    """Draw one line of text in any script, font by font (see the module docstring), every run on one
    baseline (fonts differ in ascent: top-aligned runs would jump up and down)."""
    x, y = xy
    runs = _runs(text, size)
    baseline = y + max((font.getmetrics()[0] for _, font in runs), default=0)
    for run, font in runs:
        draw.text((x, baseline), run, font=font, fill=fill, anchor="ls")
        x += font.getlength(run)


def fit_lines(text: str, width: float, max_lines: int, size: int = LABEL_PX) -> list[str]:
    """Greedy wrap to ``width`` pixels: at spaces where there are any, else between characters (CJK);
    what does not fit in ``max_lines`` is cut, the last line ending in an ellipsis."""
    lines: list[str] = []
    line = ""
    for ch in text:
        if text_width(line + ch, size) <= width:
            line += ch
            continue
        cut = line.rfind(" ")
        if cut > 0 and not ch.isspace():
            lines.append(line[:cut])
            line = line[cut + 1:] + ch
        else:
            lines.append(line)
            line = "" if ch.isspace() else ch
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and text_width(last + "…", size) > width:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last + "…"]
    return lines


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
            line = fit_lines(labels[r], cols * w - 4, 1)
            draw_label(draw, (2, r * (h + label_h)), line[0] if line else "", (0, 0, 0))
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
        lines = fit_lines(label, tile - 8, 1) + fit_lines(prompt, tile - 8, 2)
        for j, line in enumerate(lines):
            draw_label(draw, (x + 4, y + tile + 1 + j * 13), line, (20, 20, 20) if j else (90, 90, 160))
    buf = io.BytesIO()
    sheet.save(buf, "PNG", optimize=True)
    return buf.getvalue()

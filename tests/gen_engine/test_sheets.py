"""Sample grids and contact sheets draw prompts in every script the teams write, never missing-glyph boxes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from gen_engine.sheets import contact_sheet, draw_label, fit_lines, image_grid, label_fonts


def _ink(text: str) -> np.ndarray:
    img = Image.new("RGB", (200, 20), (255, 255, 255))
    draw_label(ImageDraw.Draw(img), (2, 2), text, (0, 0, 0))
    return np.asarray(img.convert("L")) < 128


def test_chinese_japanese_korean_and_arabic_are_real_glyphs_not_boxes() -> None:
    # Missing glyphs all render as the same box: distinct characters with distinct ink are real glyphs.
    for a, b in (("红", "心"), ("ハ", "ト"), ("하", "트"), ("ق", "ل"), ("a", "b")):
        ia, ib = _ink(a), _ink(b)
        assert ia.sum() > 5 and ib.sum() > 5, (a, b)
        assert (ia != ib).sum() > 5, f"'{a}' and '{b}' draw the same shape: a missing-glyph box"
    fonts = label_fonts()
    assert all(any(ord(ch) in covered for _, covered in fonts) for ch in "红色的心ハートقلب")


def test_a_contact_sheet_with_a_chinese_prompt_has_its_glyphs_under_the_tile() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buf, "PNG")
    items = [(buf.getvalue(), "hero", "红色的心"), (buf.getvalue(), "b", "蓝色的星")]
    sheet = Image.open(io.BytesIO(contact_sheet(items, cols=2, tile=160))).convert("L")
    caption = np.asarray(sheet)[160 + 14: 160 + 28]  # the prompt's line under the first row of tiles
    left, right = caption[:, :150] < 128, caption[:, 160:310] < 128
    assert left.sum() > 30 and right.sum() > 30 and (left != right).sum() > 30


def test_long_prompts_wrap_to_the_tile_in_any_script() -> None:
    long_zh = "一颗带着金色丝带和闪光的红色爱心贴纸，适合情人节促销活动的海报"
    for text in ("a sticker of a red heart with a golden ribbon and sparkles", long_zh):
        lines = fit_lines(text, 150, 2)
        assert len(lines) == 2 and lines[-1].endswith("…")
    assert fit_lines("red heart", 150, 2) == ["red heart"]


def test_grid_labels_draw_non_latin_prompts() -> None:
    imgs = np.full((2, 16, 16, 3), 255, np.uint8)
    grid = np.asarray(image_grid(imgs, cols=2, labels=["心形贴纸"]).convert("L"))
    assert (grid[:14] < 128).sum() > 20

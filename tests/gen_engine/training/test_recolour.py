"""The recolouring augmentation: exact hue rotation, which artworks qualify, captions that name the new colour."""

from __future__ import annotations

import numpy as np
import torch

from gen_engine.datasets.curated import TrainData
from gen_engine.evaluation.colour import dominant_colour
from gen_engine.training.recolour import (
    TARGETS,
    ZH_COLOURS,
    RecolourTable,
    hue_rotate,
    image_hue,
    recolour_hsv,
    recoloured_name,
    recoloured_name_zh,
    zh_name,
)


def _disc(rgb: tuple[int, int, int], size: int = 32) -> np.ndarray:
    img = np.full((size, size, 3), 255, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2] = rgb
    return img


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()


def test_hue_rotation_moves_the_colour_and_keeps_white_and_grey() -> None:
    red = _to_tensor(_disc((220, 30, 30)))
    for colour, target in TARGETS.items():
        if target.saturation != 1 or target.darken:
            continue
        out = _to_uint8(hue_rotate(red, torch.tensor([target.hue - image_hue(_disc((220, 30, 30)))])))
        assert dominant_colour(out) == colour, colour
        assert (out[0, 0] == 255).all()  # the white background stays white
    grey = _to_tensor(np.full((8, 8, 3), 128, np.uint8))
    assert torch.allclose(hue_rotate(grey, torch.tensor([90.0])), grey, atol=1e-6)
    assert torch.allclose(hue_rotate(red, torch.tensor([360.0])), red, atol=1e-5)


def test_every_target_colour_is_made_from_any_hue_and_outlines_and_background_are_kept() -> None:
    """Brown, black and grey too: the judge names each recoloured disc by its target (from saturated
    sources; light ones become light colours, so only the made colours are checked on them), the white
    background stays white and a black outline stays black."""
    for rgb in ((220, 30, 30), (30, 60, 230), (250, 220, 60), (120, 200, 255)):
        img = _disc(rgb)
        img[16, :3] = (20, 20, 20)  # an outline pixel on the left edge
        src, hue = _to_tensor(img), image_hue(img)
        for colour, t in TARGETS.items():
            if rgb == (120, 200, 255) and t.saturation == 1:
                continue  # light blue turned red is pink, rightly
            out = _to_uint8(recolour_hsv(src, torch.tensor([t.hue - hue]), torch.tensor([t.saturation]),
                                         torch.tensor([t.darken])))
            assert dominant_colour(out) == colour, (rgb, colour)
            assert (out[0, 0] == 255).all() and (np.abs(out[16, 1].astype(int) - 20) <= 1).all()


def test_only_artworks_with_one_chromatic_hue_qualify() -> None:
    assert abs(image_hue(_disc((220, 30, 30))) - 0.0) < 1 or abs(image_hue(_disc((220, 30, 30))) - 360) < 1
    assert abs(image_hue(_disc((30, 200, 30))) - 120.0) < 1
    assert image_hue(_disc((40, 40, 40))) is None  # black: no hue to rotate
    half = _disc((220, 30, 30))
    half[:, 16:][half[:, 16:, 0] == 220] = (30, 30, 220)
    assert image_hue(half) is None  # red and blue halves: no single hue


def test_recoloured_names_replace_the_colour_word_or_lead_with_it() -> None:
    assert recoloured_name("red apple", "blue") == "blue apple"
    assert recoloured_name("sun", "green") == "green sun"
    assert recoloured_name("Red Heart", "pink") == "pink Heart"


class _Encoder:
    def encode(self, texts: list[str], cache: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), 16), np.float32)
        for i, t in enumerate(texts):
            out[i, list(TARGETS).index(next(c for c in TARGETS if c in t.split()))] = 1.0
        return out


def test_a_recoloured_batch_carries_the_new_colours_caption_and_is_a_function_of_the_step() -> None:
    imgs = np.stack([_disc((220, 30, 30)), _disc((40, 40, 40))])
    data = TrainData(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.zeros(2, 16),
                     ["red circle", "black circle"], "t")
    data.meta = {"name": ["red circle", "black circle"]}
    table = RecolourTable.build(data, _Encoder())
    assert table.slot.tolist() == [0, -1]  # the black one cannot be recoloured
    idx = torch.tensor([0, 1, 0, 1])
    real = data.images[idx].float() / 127.5 - 1
    runs = [table.apply(real, data.text[idx], idx, 1.0, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    out, text = runs[0]
    for row in (0, 2):
        colour = list(TARGETS)[int(text[row].argmax())]
        assert dominant_colour(_to_uint8(out[row : row + 1])) == colour
    assert torch.equal(out[1], real[1]) and torch.equal(text[1], data.text[1])  # not eligible: untouched


def test_chinese_names_change_their_own_colour_character_or_lead_with_the_new_colour() -> None:
    assert recoloured_name_zh("蓝心", "blue", "red") == "红色心"  # CLDR's "blue heart"
    assert recoloured_name_zh("黑色圆", "black", "green") == "绿色圆"  # "black circle": the 色 is not doubled
    assert recoloured_name_zh("太阳", None, "yellow") == "黄色的太阳"  # "sun" names no colour
    assert recoloured_name_zh("纵向的红绿灯", None, "blue") == "蓝色的纵向的红绿灯"  # 红 here is not its colour
    assert zh_name("蓝心图标") == "蓝心" and zh_name("太阳贴纸") == "太阳" and zh_name("贴纸") == "贴纸"


class _Recorder:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode(self, texts: list[str], cache: bool = False) -> np.ndarray:
        self.texts += texts
        return np.zeros((len(texts), 16), np.float32)


def test_a_chinese_row_is_recoloured_with_a_chinese_caption_and_an_english_row_with_an_english_one() -> None:
    imgs = np.stack([_disc((220, 30, 30))] * 2)
    data = TrainData(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.zeros(2, 16),
                     ["red circle", "红色圆贴纸"], "t")
    data.meta = {"name": ["red circle", "red circle"], "lang": ["en", "zh"]}
    enc = _Recorder()
    table = RecolourTable.build(data, enc)
    assert table.slot.tolist() == [0, 1]
    chinese = [t for t in enc.texts if not t.isascii()]
    english = [t for t in enc.texts if t.isascii()]
    for colour in TARGETS:
        assert any(f"{colour} circle" in t for t in english), colour
        assert any(f"{ZH_COLOURS[colour]}色圆" in t for t in chinese), (colour, chinese)
    assert len(chinese) == len(english) == len(TARGETS)


def test_the_table_is_kept_and_reused_while_its_key_matches(tmp_path) -> None:
    imgs = np.stack([_disc((220, 30, 30)), _disc((30, 30, 220))])
    data = TrainData(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.zeros(2, 16),
                     ["red circle", "blue circle"], "t")
    data.meta = {"name": ["red circle", "blue circle"]}
    path, key = tmp_path / "run" / "recolour.safetensors", {"data_version": "v1"}
    first_enc, again_enc, other_enc = _Recorder(), _Recorder(), _Recorder()
    first = RecolourTable.cached(path, key, data, first_enc)
    again = RecolourTable.cached(path, key, data, again_enc)
    assert first_enc.texts and not again_enc.texts  # loaded: nothing embedded the second time
    assert torch.equal(first.slot, again.slot) and torch.equal(first.emb, again.emb)
    assert torch.allclose(first.hue, again.hue, equal_nan=True)
    RecolourTable.cached(path, {"data_version": "v2"}, data, other_enc)
    assert other_enc.texts  # another data version: built anew

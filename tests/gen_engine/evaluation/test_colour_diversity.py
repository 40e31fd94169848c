"""The starter data's judges: the colour rule and seed diversity, on images whose answer is known."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from gen_engine.evaluation.colour import colour_judge, dominant_colour, object_colour
from gen_engine.evaluation.diversity import category_spread, seed_spread

FILLS = {"red": (221, 46, 68), "green": (120, 177, 89), "blue": (85, 172, 238), "yellow": (253, 203, 88),
         "purple": (170, 142, 214), "orange": (244, 144, 12), "brown": (193, 105, 79), "pink": (244, 171, 186),
         "black": (20, 20, 20), "grey": (140, 140, 140)}


def sticker(fill: tuple[int, int, int], outline: bool = True, px: int = 64) -> np.ndarray:
    img = Image.new("RGB", (px, px), (255, 255, 255))
    ImageDraw.Draw(img).ellipse([8, 8, px - 8, px - 8], fill=fill, outline=(0, 0, 0) if outline else None, width=2)
    return np.asarray(img)


def test_dominant_colour_names_the_fill_through_outlines_and_ignores_the_white_background() -> None:
    for name, fill in FILLS.items():
        assert dominant_colour(sticker(fill)) == name, name
    full = np.zeros((64, 64, 3), np.uint8) + np.array(FILLS["blue"], np.uint8)  # a square filling the canvas
    assert dominant_colour(full) == "blue"
    assert dominant_colour(np.full((64, 64, 3), 255, np.uint8)) == "none"


def test_only_captions_that_colour_their_object_are_judged() -> None:
    assert object_colour("green heart") == "green" and object_colour("a sticker of blue circle") == "blue"
    assert object_colour("man: red hair") is None and object_colour("mahjong red dragon") is None
    assert object_colour("white flower") == "white"  # named, but not judged (white on white)
    imgs = np.stack([sticker(FILLS["green"]), sticker(FILLS["red"]), sticker(FILLS["blue"]), sticker(FILLS["red"])])
    res = colour_judge(imgs, ["green heart", "blue circle", "blue square", "man: red hair"])
    assert res["color_judged"] == 3 and abs(res["color_judge"] - 2 / 3) < 1e-9
    assert res["color_judge_blue"] == 0.5 and res["color_judge_green"] == 1.0


def flat_encode(x: torch.Tensor) -> np.ndarray:
    return x.float().flatten(1).numpy() / 255.0


def test_seed_spread_is_zero_for_a_generator_that_ignores_z_and_grows_with_its_effect() -> None:
    text = np.eye(3, 8, dtype=np.float32)

    def constant(z: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.repeat(sticker(FILLS["red"])[None], len(z), axis=0)

    def noisy(scale: float):
        def render(z: np.ndarray, t: np.ndarray) -> np.ndarray:
            base = sticker(FILLS["red"]).astype(np.float32)[None]
            return np.clip(base + scale * z[:, :1, None, None], 0, 255).astype(np.uint8)
        return render

    assert seed_spread(constant, flat_encode, text) == 0.0
    assert 0 < seed_spread(noisy(5), flat_encode, text) < seed_spread(noisy(20), flat_encode, text)


def test_category_spread_counts_distinct_images_only() -> None:
    same = torch.from_numpy(np.stack([sticker(FILLS["red"])] * 4)).permute(0, 3, 1, 2)
    assert np.isnan(category_spread(same, ["hearts"] * 4, flat_encode))  # one image under four captions
    two = torch.from_numpy(np.stack([sticker(FILLS["red"]), sticker(FILLS["blue"])] * 2)).permute(0, 3, 1, 2)
    assert category_spread(two, ["hearts"] * 4, flat_encode) > 0

"""The colour judge: does an image's dominant foreground colour match the colour its caption gives it?

A rule, not a network, so it cannot be fooled the way a learned judge can be. The artwork is shown on
white (see `datasets.images.flatten`): foreground pixels are those far from white; each is named in HSV
(black, grey, then red, orange, yellow, green, blue, purple, pink, brown by hue, saturation and value).
The dominant colour is the most frequent chromatic name when chromatic pixels are at least a quarter
of the foreground (outlines and shading are achromatic), else the most frequent achromatic one.

Judged captions are those whose object carries the colour: the colour is the caption's first word
("green heart", "a sticker of blue square"), not a detail ("man: red hair", "mahjong red dragon").
"white" is not judged: on a white background a white object is its outline alone.
"""

from __future__ import annotations

import numpy as np

from gen_engine.datasets.starter import caption_colour
from gen_engine.evaluation.registry import EvalContext, metric

JUDGED = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "pink", "grey")
CHROMATIC = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")


def pixel_names(rgb: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 -> (N,) colour names."""
    x = rgb.astype(np.float32) / 255.0
    mx, mn = x.max(1), x.min(1)
    v, c = mx, mx - mn
    s = np.where(mx > 0, c / np.maximum(mx, 1e-6), 0)
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    safe = np.maximum(c, 1e-6)
    h = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    names = np.full(len(x), "grey", dtype=object)
    names[(s < 0.2) & (v > 0.85)] = "white"
    chroma = (s >= 0.2) & (v >= 0.25)
    hue = np.select([h < 15, h < 40, h < 70, h < 165, h < 255, h < 290, h < 340],
                    ["red", "orange", "yellow", "green", "blue", "purple", "pink"], "red")
    names[chroma] = hue[chroma]
    warm = chroma & ((hue == "red") | (hue == "orange") | (h >= 340))
    names[warm & (v < 0.78) & (s < 0.8) & (h < 45)] = "brown"  # dark, muted warm hues read as brown
    names[warm & (s < 0.55) & (v > 0.75) & ((h < 15) | (h >= 290))] = "pink"  # light reds read as pink
    names[v < 0.25] = "black"
    return names


def dominant_colour(img: np.ndarray) -> str:
    """(H, W, 3) uint8 -> the dominant foreground colour name ("none" for an empty image)."""
    flat = img.reshape(-1, 3)
    fg = flat[(255 - flat.astype(np.int16)).sum(1) > 60]
    if len(fg) < 0.01 * len(flat):
        return "none"
    names, counts = np.unique(pixel_names(fg), return_counts=True)
    tally = dict(zip(names.tolist(), counts.tolist(), strict=True))
    chromatic = {k: v for k, v in tally.items() if k in CHROMATIC}
    if chromatic and sum(chromatic.values()) >= 0.25 * len(fg):
        return max(chromatic, key=chromatic.get)
    return max(tally, key=tally.get)


_LEADS = ("a sticker of ", "an icon of ", "a ", "an ")


def object_colour(caption: str) -> str | None:
    """The colour a caption gives its object: its first word, if that is a colour word (see module doc)."""
    text = caption.lower().strip()
    for lead in _LEADS:
        text = text.removeprefix(lead)
    first = text.split(" ", 1)[0].strip(",:")
    return caption_colour(first)


def colour_judge(images: np.ndarray, captions: list[str]) -> dict[str, float | int]:
    """Share of images (N, H, W, 3) whose dominant colour is the one colour their caption names.

    Only captions naming exactly one judged colour count (``judged``); the rest are counted apart."""
    hits = judged = 0
    per: dict[str, list[int]] = {}
    for img, cap in zip(images, captions, strict=True):
        want = object_colour(cap)
        if want not in JUDGED:
            continue
        judged += 1
        ok = int(dominant_colour(img) == want)
        hits += ok
        per.setdefault(want, []).append(ok)
    out: dict[str, float | int] = {"color_judge": hits / judged if judged else float("nan"), "color_judged": judged}
    out.update({f"color_judge_{k}": float(np.mean(v)) for k, v in sorted(per.items())})
    return out


@metric("color_judge")
def colour_judge_metric(ctx: EvalContext) -> dict[str, float]:
    """Only on data whose rows carry a ``color`` column (artwork shown on white, like the starter data)."""
    if "color" not in getattr(ctx.data, "meta", {}):
        return {}
    judge = colour_judge(ctx.fake.permute(0, 2, 3, 1).numpy(), ctx.captions)
    return dict(judge) if judge["color_judged"] else {}

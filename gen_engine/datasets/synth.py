"""The synthetic captioned-shapes dataset: coloured shapes on plain backgrounds, varied captions.

It exists so that every stage (ingest, training, evaluation, rendering) can be exercised and its
quality measured without any download: the attributes behind each caption are known, so colour and
shape accuracy of generated images can be scored.

    genengine dataset synth --out data/shapes --n 10000 --size 64 --seed 0

Layout (the ecosystem's imagefolder convention): ``images/*.png`` and ``metadata.jsonl`` with
``file_name``, ``text`` and the attribute columns (shape, color, background, size, position).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star", "hexagon")
COLORS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220), "yellow": (240, 220, 30),
    "orange": (245, 130, 20), "purple": (140, 40, 190), "pink": (245, 120, 190), "cyan": (30, 210, 220),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128), "beige": (225, 210, 180)}
SIZES = ("small", "large")
POSITIONS = ("center", "left", "right", "top", "bottom")

_SHAPE_WORDS = {
    "circle": ("circle", "disc", "round dot"), "square": ("square", "box", "square block"),
    "triangle": ("triangle", "three-sided shape", "triangle"), "diamond": ("diamond", "rhombus", "diamond shape"),
    "star": ("star", "five-pointed star", "star shape"), "hexagon": ("hexagon", "six-sided shape", "hexagon"),
}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
_POS_WORDS = {"center": ("in the middle", "in the center", "centered"), "left": ("on the left", "to the left"),
              "right": ("on the right", "to the right"), "top": ("at the top", "near the top"),
              "bottom": ("at the bottom", "near the bottom")}
_TEMPLATES = (
    "a {size} {color} {shape} {pos} on a {bg} background",
    "{size} {color} {shape} on {bg}",
    "a {color} {shape} {pos}, {bg} backdrop",
    "an image of a {size} {color} {shape} against {bg}",
    "{color} {shape}, {size}, {bg} background",
    "there is a {color} {shape} {pos} over a plain {bg} background",
)


@dataclass(frozen=True)
class ShapeRecord:
    """Attributes of one image; ``text`` is its caption."""

    file_name: str
    text: str
    shape: str
    color: str
    background: str
    size: str
    position: str


def caption(rng: np.random.Generator, shape: str, color: str, bg: str, size: str, pos: str) -> str:
    t = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    pick = lambda words: words[rng.integers(len(words))]  # noqa: E731
    text = t.format(size=pick(_SIZE_WORDS[size]), color=color, shape=pick(_SHAPE_WORDS[shape]),
                    pos=pick(_POS_WORDS[pos]), bg=bg)
    return text.replace("a a", "an a").replace("a o", "an o")


def draw(shape: str, color: str, bg: str, size: str, pos: str, px: int, rng: np.random.Generator) -> Image.Image:
    """Render one shape at 4x and downsample (antialiased edges, like real images)."""
    s = px * 4
    img = Image.new("RGB", (s, s), BACKGROUNDS[bg])
    d = ImageDraw.Draw(img)
    r = s * (0.16 if size == "small" else 0.30) * rng.uniform(0.9, 1.1)
    cx, cy = {"center": (0.5, 0.5), "left": (0.3, 0.5), "right": (0.7, 0.5), "top": (0.5, 0.3),
              "bottom": (0.5, 0.7)}[pos]
    cx, cy = (cx + rng.uniform(-0.04, 0.04)) * s, (cy + rng.uniform(-0.04, 0.04)) * s
    fill = tuple(int(np.clip(c + rng.integers(-12, 13), 0, 255)) for c in COLORS[color])
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=fill)
    else:
        n, inner = {"triangle": (3, None), "diamond": (4, None), "hexagon": (6, None), "star": (5, 0.45)}[shape]
        rot = -math.pi / 2
        pts = []
        for i in range(n * (2 if inner else 1)):
            rad = r * (inner if inner and i % 2 else 1.0)
            a = rot + i * math.pi * 2 / (n * (2 if inner else 1))
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        d.polygon(pts, fill=fill)
    return img.resize((px, px), Image.Resampling.LANCZOS)


def generate(n: int, size: int, seed: int) -> Iterator[tuple[ShapeRecord, Image.Image]]:
    """``n`` (record, image) pairs; the same seed gives the same dataset."""
    rng = np.random.default_rng(seed)
    width = len(str(max(n - 1, 1)))
    for i in range(n):
        shape = SHAPES[rng.integers(len(SHAPES))]
        color = list(COLORS)[rng.integers(len(COLORS))]
        bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
        sz = SIZES[rng.integers(len(SIZES))]
        pos = POSITIONS[rng.integers(len(POSITIONS))]
        rec = ShapeRecord(f"images/{i:0{width}d}.png", caption(rng, shape, color, bg, sz, pos), shape, color, bg,
                          sz, pos)
        yield rec, draw(shape, color, bg, sz, pos, size, rng)


def write_imagefolder(out: Path, n: int, size: int, seed: int, progress: bool = True) -> Path:
    """Write the dataset in the imagefolder layout; returns the metadata.jsonl path."""
    from tqdm import tqdm

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    meta = out / "metadata.jsonl"
    with open(meta, "w", encoding="utf-8") as f:
        for rec, img in tqdm(generate(n, size, seed), total=n, desc="synth", disable=not progress, unit="img"):
            img.save(out / rec.file_name, optimize=False)
            f.write(json.dumps(asdict(rec)) + "\n")
    return meta

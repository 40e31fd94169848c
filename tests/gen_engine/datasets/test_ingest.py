"""Dataset ingest against the real S3 server: every format, every hostile drop, nothing lost, idempotent."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gen_engine.config import Settings
from gen_engine.datasets.ingest import CurationConfig, DropRejected, ingest
from gen_engine.datasets.readers import DropError
from gen_engine.datasets.synth import generate
from gen_engine.infra.lineage import LineageStore
from gen_engine.infra.storage import Storage
from gen_engine.resources import resources

LENIENT = CurationConfig(max_rejected_fraction=1.0, size=32)


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def synth_pngs(n: int, seed: int = 0) -> list[tuple[str, bytes]]:
    return [(rec.text, png_bytes(img)) for rec, img in generate(n, 48, seed)]


def bomb_header(w: int = 30000, h: int = 30000) -> bytes:
    """A PNG whose header claims w x h pixels (valid CRC), with no real data behind it."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")


@pytest.fixture()
def env(s3_settings: Settings) -> tuple[Settings, Storage, LineageStore]:
    return s3_settings, Storage.from_settings(s3_settings), LineageStore.from_settings(s3_settings)


def run(env, path: Path, name: str, cfg: CurationConfig = LENIENT):
    settings, store, lineage = env
    r = ingest(str(path), name, resources(settings), cfg)
    assert r.records_in == r.accepted + r.rejected + r.duplicates_merged
    return r


def reasons(env, r) -> list[str]:
    settings, store, _ = env
    rows = store.list(settings.bucket_datasets, f"quarantine/{r.dataset}/")
    key = next(o.key for o in rows if o.key.endswith("rejected.jsonl"))
    return [json.loads(line)["reason"] for line in store.get_bytes(settings.bucket_datasets, key).splitlines()]


def test_imagefolder_zip_with_duplicates_and_several_captions(env, tmp_path: Path) -> None:
    items = synth_pngs(20)
    path = tmp_path / "drop.zip"
    with zipfile.ZipFile(path, "w") as z:
        meta = []
        for i, (text, data) in enumerate(items):
            z.writestr(f"images/{i:03d}.png", data)
            meta.append({"file_name": f"images/{i:03d}.png", "text": text, "source": "synth"})
        z.writestr("images/dup.png", items[0][1])  # the same bytes under another name
        meta.append({"file_name": "images/dup.png", "text": "another caption for image zero"})
        meta.append({"file_name": "images/001.png", "caption": "ignored: text wins"} | {"text": "a second caption"})
        meta.append({"file_name": "images/002.png", "text": items[2][0]})  # exact duplicate row
        z.writestr("metadata.jsonl", "\n".join(json.dumps(m) for m in meta))
    r = run(env, path, "zipped shapes", CurationConfig(size=32))
    assert (r.records_in, r.accepted, r.rejected, r.duplicates_merged) == (23, 22, 0, 1)
    settings, store, lineage = env
    prefix = r.uri.removeprefix(f"s3://{settings.bucket_datasets}/")
    keys = {o.key.removeprefix(prefix) for o in store.list(settings.bucket_datasets, prefix)}
    assert {"part-00000.parquet", "card.json", "sample_grid.png", "validation.json"} <= keys
    df = pl.read_parquet(io.BytesIO(store.get_bytes(settings.bucket_datasets, prefix + "part-00000.parquet")))
    assert df.height == 22 and df["content_hash"].n_unique() == 20
    assert df["embedding"].dtype == pl.Array(pl.Float32, 384)
    emb = np.stack(df["embedding"].to_numpy())
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    from PIL import Image

    assert Image.open(io.BytesIO(df["image"][0])).size == (32, 32)
    assert set(df["split"]) <= {"train", "val"}
    card = json.loads(store.get_bytes(settings.bucket_datasets, prefix + "card.json"))
    assert card["records"] == 22 and card["duplicates_merged"] == 1
    assert sum(card["caption_length_histogram"].values()) == 22
    report = json.loads(store.get_bytes(settings.bucket_datasets, prefix + "validation.json"))
    assert report["records_validation"]["success"] and report["drop_validation"]["success"]
    # GX Data Docs beside the version: an index linking both suites' validation pages.
    assert card["data_docs"] == f"s3://{settings.bucket_datasets}/{prefix}data_docs/index.html"
    index = store.get_bytes(settings.bucket_datasets, prefix + "data_docs/index.html").decode()
    assert "dataset_records" in index and "dataset_drop" in index
    pages = [k for k in keys if k.startswith("data_docs/validations/") and k.endswith(".html")]
    assert len(pages) == 2, pages
    index_info = store.client.stat_object(settings.bucket_datasets, prefix + "data_docs/index.html")
    assert index_info.content_type == "text/html"
    # Re-ingest: a no-op reporting the same version.
    again = run(env, path, "zipped shapes", CurationConfig(size=32))
    assert not again.created and again.version == r.version and again.version_id == r.version_id
    assert lineage.dataset_version("zipped-shapes")["version"] == r.version


def test_imagefolder_tar_with_csv_and_caption_column(env, tmp_path: Path) -> None:
    items = synth_pngs(6, seed=1)
    path = tmp_path / "drop.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        rows = ["file_name,caption,photographer"]
        for i, (text, data) in enumerate(items):
            info = tarfile.TarInfo(f"drop/{i}.png")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
            rows.append(f'{i}.png,"{text}",ann')
        meta = "\n".join(rows).encode()
        info = tarfile.TarInfo("drop/metadata.csv")
        info.size = len(meta)
        t.addfile(info, io.BytesIO(meta))
    r = run(env, path, "tarred", CurationConfig(size=32))
    assert (r.accepted, r.rejected) == (6, 0) and r.created


def test_webdataset_shard(env, tmp_path: Path) -> None:
    items = synth_pngs(8, seed=2)
    path = tmp_path / "shard-000000.tar"
    with tarfile.open(path, "w") as t:
        for i, (text, data) in enumerate(items):
            cap = text.encode() if i % 2 else json.dumps({"caption": text, "license": "cc0"}).encode()
            for name, payload in ((f"s{i:04d}.png", data), (f"s{i:04d}.{'txt' if i % 2 else 'json'}", cap)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
    r = run(env, path, "wds", CurationConfig(size=32))
    assert (r.accepted, r.rejected) == (8, 0)


def hostile_zip(tmp_path: Path) -> Path:
    good = synth_pngs(4, seed=3)
    path = tmp_path / "hostile.zip"
    with zipfile.ZipFile(path, "w") as z:
        meta = []
        for i, (text, data) in enumerate(good):
            z.writestr(f"ok{i}.png", data)
            meta.append({"file_name": f"ok{i}.png", "text": text})
        z.writestr("../evil.png", good[0][1])
        z.writestr(zipfile.ZipInfo("/abs.png"), good[0][1])
        link = zipfile.ZipInfo("link.png")
        link.external_attr = (0o120777 << 16)
        z.writestr(link, "/etc/passwd")
        z.writestr("truncated.png", good[1][1][: len(good[1][1]) // 2])
        z.writestr("text.png", b"this is a text file, not an image\n")
        z.writestr("bomb.png", bomb_header())
        for name, caption in (("truncated.png", "a truncated image"), ("text.png", "text named png"),
                              ("bomb.png", "a huge header"), ("missing.png", "no such file"),
                              ("ok0.png", ""), ("ok1.png", "x" * 1001)):
            meta.append({"file_name": name, "text": caption})
        z.writestr("metadata.jsonl", "\n".join(json.dumps(m) for m in meta))
    return path


def test_hostile_zip_records_each_get_their_reason(env, tmp_path: Path) -> None:
    r = run(env, hostile_zip(tmp_path), "hostile")
    why = reasons(env, r)
    assert r.accepted == 4 and r.rejected == len(why) == 9
    for expected in ("zip slip", "absolute path", "symlink", "does not decode fully", "not a decodable image",
                     "too many pixels", "not in the drop", "caption is empty", "1001 characters"):
        assert any(expected in w for w in why), (expected, why)
    assert not (tmp_path / "evil.png").exists() and not Path("/abs.png").exists()


def test_hostile_drop_fails_as_a_whole_with_the_default_limit(env, tmp_path: Path) -> None:
    with pytest.raises(DropRejected, match=r"rejected \(69%; the limit is 20%") as e:
        run(env, hostile_zip(tmp_path), "hostile-default", CurationConfig())
    assert e.value.report["accepted"] == 4 and not e.value.report["drop_validation"]["success"]
    settings, store, lineage = env
    assert lineage.dataset_version("hostile-default") is None  # nothing published
    # The failed drop's report and its Data Docs (showing the failing expectation) are in the quarantine.
    docs = e.value.report["data_docs"].removeprefix(f"s3://{settings.bucket_datasets}/")
    assert docs.startswith("quarantine/hostile-default/") and docs.endswith("data_docs/index.html")
    page = next(k for k in store.iter_keys(settings.bucket_datasets, docs.removesuffix("index.html") + "validations/")
                if k.endswith(".html"))
    html = store.get_bytes(settings.bucket_datasets, page).decode()
    assert "rejected_fraction" in html and "Failed" in html


def test_tar_symlink_and_cp1252_caption(env, tmp_path: Path) -> None:
    items = synth_pngs(3, seed=4)
    path = tmp_path / "wds.tar"
    with tarfile.open(path, "w") as t:
        for i, (text, data) in enumerate(items):
            caption = text.encode() if i else "caf\u00e9 cr\u00e8me circle".encode("cp1252")
            for name, payload in ((f"k{i}.png", data), (f"k{i}.txt", caption)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                t.addfile(info, io.BytesIO(payload))
        link = tarfile.TarInfo("k9.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        t.addfile(link)
    r = run(env, path, "wds-hostile")
    why = reasons(env, r)
    assert r.accepted == 2 and any("not valid UTF-8" in w for w in why) and any("symlink" in w for w in why)


@pytest.mark.parametrize(("build", "match"), [
    ("empty_zip", "is empty"),
    ("no_text_column", "needs a 'file_name' and a 'text'"),
    ("not_an_archive", "neither a zip nor a tar"),
])
def test_drop_level_errors(env, tmp_path: Path, build: str, match: str) -> None:
    path = tmp_path / "drop.zip"
    if build == "empty_zip":
        zipfile.ZipFile(path, "w").close()
    elif build == "no_text_column":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("a.png", synth_pngs(1)[0][1])
            z.writestr("metadata.jsonl", json.dumps({"file_name": "a.png", "description": "no text column"}))
    else:
        path.write_bytes(b"just some bytes")
    with pytest.raises(DropError, match=match):
        run(env, path, "broken")


def test_a_curated_version_gives_another_encoders_embeddings_computed_once_and_kept_beside_it(
        env, tmp_path: Path, monkeypatch) -> None:
    from gen_engine.datasets import curated
    from gen_engine.datasets.curated import TrainData
    from gen_engine.text import shared_encoder

    items = synth_pngs(12, seed=3) + [("一颗红色的心", synth_pngs(1, seed=4)[0][1])]
    path = tmp_path / "multi.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i, (_, data) in enumerate(items):
            z.writestr(f"images/{i:03d}.png", data)
        z.writestr("metadata.jsonl", "\n".join(json.dumps({"file_name": f"images/{i:03d}.png", "text": t})
                                               for i, (t, _) in enumerate(items)))
    r = run(env, path, "multi-encoder")
    settings, store, _ = env
    res = resources(settings)
    e5 = "multilingual-e5-small"
    parts = [TrainData.from_curated("multi-encoder", res, 32, split=s, text_encoder=e5) for s in ("train", "val")]
    assert all(p.text_encoder == e5 for p in parts) and sum(len(p) for p in parts) == 13
    for p in parts:  # each row holds its own caption's E5 vector
        np.testing.assert_allclose(p.text.numpy(), shared_encoder(e5).encode(p.captions, cache=False), atol=1e-6)
    prefix = r.uri.removeprefix(f"s3://{settings.bucket_datasets}/")
    assert store.exists(settings.bucket_datasets, f"{prefix}embeddings/{e5}.npz")
    # Every later read (any split, any worker) takes them from S3: nothing is encoded again.
    monkeypatch.setattr(curated, "shared_encoder", lambda name=None: pytest.fail(f"encoded again with {name}"))
    again = TrainData.from_curated("multi-encoder", res, 32, split="train", text_encoder=e5)
    assert np.array_equal(again.text.numpy(), parts[0].text.numpy())
    minilm = TrainData.from_curated("multi-encoder", res, 32, split="train")  # the stored column, as before
    assert minilm.text_encoder == "all-MiniLM-L6-v2" and not np.allclose(minilm.text.numpy(), again.text.numpy())

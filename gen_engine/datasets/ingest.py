"""Dataset ingest: a raw drop in; a validated, versioned, curated dataset out. Nothing is lost.

    genengine dataset ingest s3://datasets/raw/shapes/drop1.zip --name shapes

1. Read the drop (imagefolder zip/tar/folder or WebDataset tar; see `readers`), streamed.
2. Check every record (image decodes fully, allowed format, size bounds, decompression-bomb guard,
   bytes; caption UTF-8, non-empty, <= 1,000 characters, no control characters). Rejected records
   go to the quarantine with their reason and original bytes. Exact duplicate images (sha256) are
   merged, keeping every distinct caption.
3. Validate with the Great Expectations suites in ``validation/suites`` (records, then the drop:
   at least N records, rejected fraction <= 20% by default). A failing drop raises `DropRejected`
   with its report and GX Data Docs in the quarantine; nothing is published.
4. Publish ``datasets/curated/<name>/<version id>/``: parquet shards (PNG bytes centre-cropped and resized
   to the training size, caption, MiniLM embedding, content hash, split), ``card.json``,
   ``sample_grid.png``, the validation report and GX Data Docs (``data_docs/index.html``). The
   version id is a content hash of the accepted records and the curation config: ingesting the same
   drop again is a no-op. The version's number (v1, v2, ...) is allocated when the lineage row is
   written, the commit of the version.

Accounting always balances: records in = accepted + rejected + merged duplicates.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import time
import unicodedata
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from gen_engine.config import Settings
from gen_engine.datasets.images import split_of, square
from gen_engine.datasets.readers import ArchiveLimits, RawRecord, RawReject, read_drop
from gen_engine.errors import UserError
from gen_engine.infra.storage import Storage
from gen_engine.naming import slugify
from gen_engine.sheets import contact_sheet

if TYPE_CHECKING:
    from gen_engine.resources import Resources

log = logging.getLogger(__name__)
PROGRESS_EVERY = 2000


@dataclass(frozen=True)
class CurationConfig:
    """What a curated version is made with; part of its version hash."""

    size: int = 64  # side of the stored training images (the largest training resolution)
    master_size: int = 256  # side of the stored masters (never upscaled); 0 = no masters
    min_side: int = 32
    max_pixels: int = 40_000_000  # decompression-bomb guard, checked from the header before decoding
    max_bytes: int = 20 * 1024 * 1024
    max_caption: int = 1000
    formats: tuple[str, ...] = ("PNG", "JPEG", "WEBP")
    val_percent: int = 5
    min_records: int = 1
    max_rejected_fraction: float = 0.2
    shard_records: int = 1000  # ~1 MB shards at 64 px; smaller shards keep peak memory flat with drop size

    @classmethod
    def from_settings(cls, settings: Settings) -> CurationConfig:
        """The deployment's curation thresholds (``GEN_INGEST_*``); the defaults above are the settings'."""
        return cls(size=settings.ingest_image_size, master_size=settings.ingest_master_size,
                   min_side=settings.ingest_min_side, max_pixels=settings.ingest_max_pixels,
                   max_bytes=settings.ingest_max_bytes, max_caption=settings.ingest_max_caption_chars,
                   val_percent=settings.ingest_val_percent, min_records=settings.ingest_min_records,
                   max_rejected_fraction=settings.ingest_max_rejected_fraction,
                   shard_records=settings.ingest_shard_records)


class DropRejected(UserError):
    """The drop failed its drop-level expectations; ``report`` says which and by how much."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class IngestResult:
    dataset: str
    version: int
    version_id: str
    uri: str
    records_in: int
    accepted: int
    rejected: int
    duplicates_merged: int
    created: bool  # False: this exact content was already a version (re-ingest no-op)
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


# --- record checks ------------------------------------------------------------------------------------
def check_caption(raw: bytes | str | None, max_len: int) -> str:
    if raw is None:
        raise ValueError("no caption")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"caption is not valid UTF-8 (byte 0x{raw[e.start]:02x} at {e.start}); "
                             "re-save the captions as UTF-8") from None
    text = " ".join(str(raw).split())  # line breaks and tabs in a caption become single spaces
    if not text:
        raise ValueError("caption is empty")
    if len(text) > max_len:
        raise ValueError(f"caption is {len(text)} characters long; the limit is {max_len}")
    bad = next((c for c in text if unicodedata.category(c) == "Cc"), None)
    if bad is not None:
        raise ValueError(f"caption contains a control character (U+{ord(bad):04X})")
    return text


def check_image(data: bytes | None, cfg: CurationConfig) -> tuple[Image.Image, str]:
    """The fully decoded image and its format, or ValueError with the reason."""
    if data is None:
        raise ValueError("the referenced image file is missing from the drop")
    if len(data) > cfg.max_bytes:
        raise ValueError(f"image is {len(data)} bytes; the limit is {cfg.max_bytes}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ValueError("image header declares too many pixels (decompression-bomb guard)") from None
        except Exception:  # Pillow raises several types for non-images
            raise ValueError("not a decodable image (is it really a PNG/JPEG/WebP file?)") from None
    w, h = img.size
    if w * h > cfg.max_pixels:
        raise ValueError(f"image is {w}x{h} = {w * h} pixels; the limit is {cfg.max_pixels} "
                         "(decompression-bomb guard)")
    if img.format not in cfg.formats:
        raise ValueError(f"image format {img.format} is not accepted; use {', '.join(cfg.formats)}")
    if min(w, h) < cfg.min_side:
        raise ValueError(f"image is {w}x{h}; the smaller side must be at least {cfg.min_side} pixels")
    if getattr(img, "n_frames", 1) > 1:
        raise ValueError(f"image is animated ({img.n_frames} frames); give a still image (the first frame would "
                         "be used without saying so)")
    try:
        img.load()  # full decode: truncated files fail here
    except Exception as e:
        raise ValueError(f"image does not decode fully ({str(e)[:80]}); the file is truncated or corrupt") from None
    return img, img.format or "?"


def curate_image(img: Image.Image, size: int) -> bytes:
    """RGB (transparency composited onto white), centre-cropped to a square, resized (Lanczos), as PNG."""
    buf = io.BytesIO()
    square(img, size).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


# --- the ingest -------------------------------------------------------------------------------------------
def _fetch(source: str, store: Storage, tmp: Path) -> tuple[Path, str]:
    if source.startswith("s3://"):
        bucket, _, key = source.removeprefix("s3://").partition("/")
        return store.get_file(bucket, key, tmp / Path(key).name), f"{bucket}/{key}"
    p = Path(source)
    if not p.exists():
        raise UserError(f"no dataset drop at {source}: give a zip, a tar, a folder, or s3://bucket/key")
    return p, str(p.resolve())


@dataclass
class _Intake:
    """The checked records of one drop: accepted images (bytes in a scratch file) and rejected records."""

    scratch: Any  # binary file: each image's training copy, then its master
    images: dict[str, dict[str, Any]] = field(default_factory=dict)  # content hash -> offsets, size, captions
    rejected: list[dict[str, Any]] = field(default_factory=list)
    records_in: int = 0
    duplicates: int = 0

    @property
    def accepted(self) -> int:
        return sum(len(e["captions"]) for e in self.images.values())


def check_records(items: Any, cfg: CurationConfig, store: Storage, bucket: str, quarantine: str, source_key: str,
                  scratch: Any) -> _Intake:
    """Step 1: every record checked; bad ones quarantined with their reason and bytes, duplicates merged.
    Memory holds ~100 bytes per image whatever the drop size (image bytes go to ``scratch``)."""
    t0 = time.monotonic()
    got = _Intake(scratch)
    for item in items:
        got.records_in += 1
        if got.records_in % PROGRESS_EVERY == 0:  # progress lines for the Airflow task log and the CLI
            log.info("%s: %d records read (%d rejected so far), %.0f records/s", source_key, got.records_in,
                     len(got.rejected), got.records_in / (time.monotonic() - t0))
        if isinstance(item, RawReject):
            got.rejected.append(_quarantine(store, bucket, quarantine, len(got.rejected), item.source, item.reason,
                                            item.data))
            continue
        try:
            caption = check_caption(item.caption_raw, cfg.max_caption)
            sha = hashlib.sha256(item.image or b"").hexdigest()
            if sha in got.images:
                entry = got.images[sha]
                if caption in entry["captions"]:
                    got.duplicates += 1  # the same image and caption again: merged, nothing new
                else:
                    entry["captions"].append(caption)
                    entry["extra"].append(_jsonable(item.extra))
                continue
            img, img_format = check_image(item.image, cfg)
        except ValueError as e:
            got.rejected.append(_quarantine(store, bucket, quarantine, len(got.rejected), item.source, str(e),
                                            item.image or _raw_bytes(item)))
            continue
        png = curate_image(img, cfg.size)
        master_side = min(cfg.master_size, img.width, img.height)  # never upscaled
        master = curate_image(img, master_side) if cfg.master_size else b""
        scratch.write(png + master)
        got.images[sha] = {"offset": scratch.tell() - len(png) - len(master), "length": len(png),
                           "master_length": len(master), "master_side": master_side, "width": img.width,
                           "height": img.height, "mode": img.mode, "format": img_format, "source": item.source,
                           "captions": [caption], "extra": [_jsonable(item.extra)]}
    assert got.records_in == got.accepted + len(got.rejected) + got.duplicates, got
    return got


def validate_drop(got: _Intake, cfg: CurationConfig, docs: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Step 2: the Great Expectations suites over the accepted records and over the drop as a whole.
    Returns (drop report, records report); Data Docs for both are written to ``docs``."""
    import polars as pl

    from gen_engine.validation import SuiteRunner

    table = pl.DataFrame([{"content_hash": sha, "caption": c, "caption_chars": len(c), "width": e["width"],
                           "height": e["height"], "mode": e["mode"], "format": e["format"]}
                          for sha, e in got.images.items() for c in e["captions"]],
                         schema={"content_hash": pl.Utf8, "caption": pl.Utf8, "caption_chars": pl.Int64,
                                 "width": pl.Int64, "height": pl.Int64, "mode": pl.Utf8, "format": pl.Utf8})
    drop_table = pl.DataFrame({"accepted_records": [got.accepted], "rejected_fraction": [_rejected_fraction(got)]})
    suites = SuiteRunner(docs)
    drop_report = suites.run(drop_table, "dataset_drop", overrides={
        "accepted_records": {"min_value": cfg.min_records},
        "rejected_fraction": {"max_value": cfg.max_rejected_fraction}})
    records_report = suites.run(table, "dataset_records") if got.accepted else {"success": False, "skipped": True}
    return drop_report, records_report


def _rejected_fraction(got: _Intake) -> float:
    return len(got.rejected) / max(got.records_in - got.duplicates, 1)


def version_id_of(dataset: str, images: dict[str, dict[str, Any]], cfg: CurationConfig) -> str:
    """Step 3: the version's id, a hash of the accepted content and the curation config (same drop, same id)."""
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for sha in sorted(images):
        h.update(sha.encode() + b"\0" + "\0".join(sorted(images[sha]["captions"])).encode() + b"\n")
    return f"{dataset}-{h.hexdigest()[:16]}"


def ingest(source: str, name: str, res: Resources, cfg: CurationConfig | None = None) -> IngestResult:
    """Validate and publish one drop (see the module docstring). Raises DropRejected or DropError (both
    `UserError`s). ``cfg``: default the settings' curation thresholds."""
    from gen_engine.validation import upload_docs

    t0 = time.monotonic()
    cfg = cfg or CurationConfig.from_settings(res.settings)
    store, lineage, bucket = res.storage, res.lineage, res.settings.bucket_datasets
    dataset = slugify(name)
    if not dataset:
        raise UserError(f"dataset name '{name}' has no usable characters")
    with tempfile.TemporaryDirectory() as td, open(Path(td) / "images.bin", "w+b") as scratch:
        path, source_key = _fetch(source, store, Path(td))
        fmt, items = read_drop(path, ArchiveLimits.from_settings(res.settings))
        quarantine = f"quarantine/{dataset}/{hashlib.sha256(source_key.encode()).hexdigest()[:12]}/"
        got = check_records(items, cfg, store, bucket, quarantine, source_key, scratch)
        accepted, n_rejected = got.accepted, len(got.rejected)
        by_reason = Counter(_reason_kind(r["reason"]) for r in got.rejected)
        if got.rejected:
            store.put_bytes(bucket, quarantine + "rejected.jsonl",
                            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in got.rejected).encode(),
                            content_type="application/x-ndjson")
        docs = Path(td) / "data_docs"  # GX Data Docs for both suites, uploaded beside the version or the report
        drop_report, records_report = validate_drop(got, cfg, docs)
        frac = _rejected_fraction(got)
        report = {"dataset": dataset, "source": source_key, "format": fmt, "records_in": got.records_in,
                  "accepted": accepted, "rejected": n_rejected, "duplicates_merged": got.duplicates,
                  "rejected_fraction": frac, "rejected_by_reason": dict(by_reason),
                  "drop_validation": drop_report, "records_validation": records_report}
        if not drop_report["success"]:
            report["data_docs"] = upload_docs(store, bucket, quarantine + "data_docs/", docs)
            store.put_bytes(bucket, quarantine + "report.json", json.dumps(report, indent=1, default=str).encode(),
                            content_type="application/json")
            raise DropRejected(
                f"drop {source_key} rejected: {accepted} records accepted, {n_rejected} rejected "
                f"({frac:.0%}; the limit is {cfg.max_rejected_fraction:.0%}, at least {cfg.min_records} needed). "
                f"Reasons: {dict(by_reason)}. Report and rejected records: s3://{bucket}/{quarantine}", report)

        version_id = version_id_of(dataset, got.images, cfg)
        result = dict(dataset=dataset, version_id=version_id, records_in=got.records_in, accepted=accepted,
                      rejected=n_rejected, duplicates_merged=got.duplicates, rejected_by_reason=dict(by_reason))
        existing = lineage.dataset_version_by_id(version_id)
        if existing:
            log.info("drop %s is already %s v%d: nothing to do", source_key, dataset, existing["version"])
            return IngestResult(**result, version=existing["version"], uri=existing["uri"], created=False,
                                seconds=time.monotonic() - t0)
        # Step 4. The prefix is the content's own (its version id), never a number another ingest could
        # also pick: a failed publish leaves only objects that a retry of the same content rewrites
        # byte for byte, and two ingests at once write different prefixes (or the same bytes). The
        # lineage row is the commit: the version (and its number, allocated there) exists once it is in.
        prefix = f"curated/{dataset}/{version_id}/"
        report["data_docs"] = upload_docs(store, bucket, prefix + "data_docs/", docs)
        card = _publish(store, bucket, prefix, scratch, got.images, cfg, report, version_id)
        n = lineage.record_dataset_version(dataset, version_id, uri=f"s3://{bucket}/{prefix}",
                                           n_records=accepted, n_rejected=n_rejected, config=asdict(cfg), card=card)
    log.info("ingested %s as %s v%d: %d accepted, %d rejected, %d duplicates merged in %.1fs", source_key, dataset,
             n, accepted, n_rejected, got.duplicates, time.monotonic() - t0)
    return IngestResult(**result, version=n, uri=f"s3://{bucket}/{prefix}", created=True,
                        seconds=time.monotonic() - t0)


def _publish(store: Storage, bucket: str, prefix: str, scratch: Any, images: dict[str, dict[str, Any]],
             cfg: CurationConfig, report: dict[str, Any], version_id: str) -> dict[str, Any]:
    """Parquet shards with embeddings, the card, the sample grid and the validation report."""
    import polars as pl

    from gen_engine.text import shared_encoder

    encoder = shared_encoder()
    rows_written, shard, buf_rows = 0, 0, []
    splits: Counter[str] = Counter()

    def flush() -> None:
        nonlocal shard, buf_rows
        emb = encoder.encode([r["caption"] for r in buf_rows], cache=False)
        df = pl.DataFrame({
            "image": [r["image"] for r in buf_rows], "caption": [r["caption"] for r in buf_rows],
            "embedding": emb, "content_hash": [r["content_hash"] for r in buf_rows],
            "split": [r["split"] for r in buf_rows], "width": [r["width"] for r in buf_rows],
            "height": [r["height"] for r in buf_rows], "extra": [r["extra"] for r in buf_rows]},
            schema={"image": pl.Binary, "caption": pl.Utf8, "embedding": pl.Array(pl.Float32, emb.shape[1]),
                    "content_hash": pl.Utf8, "split": pl.Utf8, "width": pl.Int64, "height": pl.Int64,
                    "extra": pl.Utf8})
        out = io.BytesIO()
        df.write_parquet(out, compression="zstd")
        store.put_bytes(bucket, f"{prefix}part-{shard:05d}.parquet", out.getvalue(),
                        content_type="application/vnd.apache.parquet")
        shard, buf_rows = shard + 1, []
        log.info("curated shard %d written (%d/%d records, with embeddings)", shard, rows_written, total)

    total = sum(len(e["captions"]) for e in images.values())
    grid: list[tuple[bytes, str]] = []
    masters: list[dict[str, Any]] = []
    master_shards = 0

    def flush_masters() -> None:
        nonlocal master_shards, masters
        out = io.BytesIO()
        pl.DataFrame(masters, schema={"content_hash": pl.Utf8, "master": pl.Binary, "side": pl.Int64}).write_parquet(
            out, compression="zstd")
        store.put_bytes(bucket, f"{prefix}masters/part-{master_shards:05d}.parquet", out.getvalue(),
                        content_type="application/vnd.apache.parquet")
        master_shards, masters = master_shards + 1, []

    for sha in sorted(images):
        e = images[sha]
        scratch.seek(e["offset"])
        png = scratch.read(e["length"])
        if e["master_length"]:
            masters.append({"content_hash": sha, "master": scratch.read(e["master_length"]),
                            "side": e["master_side"]})
            if len(masters) >= cfg.shard_records // 4:  # masters are ~16x the bytes of a 64 px image
                flush_masters()
        split = split_of(sha, cfg.val_percent)
        for caption, extra in zip(e["captions"], e["extra"], strict=True):
            buf_rows.append({"image": png, "caption": caption, "content_hash": sha, "split": split,
                             "width": e["width"], "height": e["height"], "extra": json.dumps(extra)})
            splits[split] += 1
            rows_written += 1
            if len(grid) < 48:
                grid.append((png, caption))
            if len(buf_rows) >= cfg.shard_records:
                flush()
    if buf_rows:
        flush()
    if masters:
        flush_masters()
    caption_lengths = [len(c) for e in images.values() for c in e["captions"]]
    sides = [min(e["width"], e["height"]) for e in images.values()]
    card = {
        "version_id": version_id, "records": rows_written, "images": len(images), "shards": shard,
        "splits": dict(splits), "rejected": report["rejected"], "rejected_by_reason": report["rejected_by_reason"],
        "duplicates_merged": report["duplicates_merged"], "source": report["source"], "format": report["format"],
        "data_docs": report["data_docs"],
        "curation": asdict(cfg), "caption_length_histogram": _histogram(caption_lengths, [0, 20, 40, 60, 80, 120, 200,
                                                                                            500, 1001]),
        "image_min_side_histogram": _histogram(sides, [0, 64, 128, 256, 512, 1024, 4096, 10**6]),
        "masters": {"side": cfg.master_size, "shards": master_shards, "prefix": f"{prefix}masters/",
                    "columns": ["content_hash", "master (PNG bytes, never upscaled)", "side"]} if cfg.master_size
        else None,
        "licenses": _licenses(images),
        "columns": ["image (PNG bytes)", "caption", "embedding (384 x float32, all-MiniLM-L6-v2)", "content_hash",
                    "split", "width", "height", "extra (JSON)"],
    }
    store.put_bytes(bucket, prefix + "card.json", json.dumps(card, indent=1).encode(), content_type="application/json")
    store.put_bytes(bucket, prefix + "validation.json", json.dumps(report, indent=1, default=str).encode(),
                    content_type="application/json")
    store.put_bytes(bucket, prefix + "sample_grid.png",
                    contact_sheet([(png, f"#{i}", cap) for i, (png, cap) in enumerate(grid)], cols=8, tile=96),
                    content_type="image/png")
    return card


def _licenses(images: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Images per (source set, licence, attribution), from the records' own columns (the starter data has
    them; other drops may not)."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for e in images.values():
        x = e["extra"][0] if e["extra"] else {}
        if x.get("license") or x.get("source_set"):
            counts[(str(x.get("source_set", "")), str(x["license"]) if x.get("license") else "",
                    str(x.get("attribution", "")))] += 1
    return [{"source_set": s, "license": lic, "attribution": a, "images": n}
            for (s, lic, a), n in sorted(counts.items())]


def _histogram(values: list[int], edges: list[int]) -> dict[str, int]:
    counts, _ = np.histogram(values, bins=edges) if values else (np.zeros(len(edges) - 1, int), None)
    return {f"{lo}-{hi - 1}": int(c) for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)}


def _quarantine(store: Storage, bucket: str, prefix: str, i: int, source: str, reason: str,
                data: bytes) -> dict[str, Any]:
    """Keep a rejected record's original bytes (under a sanitised name) and return its reject row."""
    key = None
    if data:
        key = f"{prefix}originals/{i:06d}-{slugify(source.rsplit('/', 1)[-1]) or 'member'}"
        store.put_bytes(bucket, key, data)
    return {"source": source, "reason": reason, "original": key}


def _raw_bytes(item: RawRecord) -> bytes:
    cap = item.caption_raw
    return cap if isinstance(cap, bytes) else (str(cap).encode() if cap is not None else b"")


def _jsonable(extra: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(extra, default=str))


def _reason_kind(reason: str) -> str:
    """Group reasons for the card: the text before the first detail."""
    for key in ("zip slip", "absolute path", "link", "device", "not valid UTF-8", "caption is empty", "no caption",
                "characters long", "control character", "missing", "not in the drop", "too many pixels",
                "decompression-bomb", "not a decodable image", "truncated", "smaller side", "format", "bytes;",
                "no image", "no caption", "JSON"):
        if key in reason:
            return key
    return reason[:40]

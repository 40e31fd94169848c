"""Stage 1 of a campaign: read and validate the CSV (streamed), write accepted rows and rejections to the
run's ``work/`` prefix, cut the accepted rows into shards of about ``shard_size`` images, and return a
small JSON-able `Plan` (no image data ever travels through XCom).

A run is identified by what decides its images (`run_identity`): the campaign, the CSV's checksum, the
model id, the backend asked for, the shard size and the row rules. Its objects live under
``<campaign>/<run id>/``, and every key below is a pure function of the identity and (asset, k). So
the same CSV dropped twice for one campaign with one model reuses its results, while the same CSV in
two campaigns, or rendered again with another model or shard size, is another run: its own plan, images,
manifest, gallery and lineage rows, and the images already delivered are never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gen_engine.config import Settings
from gen_engine.errors import UserError
from gen_engine.hashing import sha256_file
from gen_engine.infra.storage import Storage
from gen_engine.naming import slugify
from gen_engine.render import imagemeta
from gen_engine.render.csvin import PromptCsv, Rejection, RowRules, RowSpec
from gen_engine.validation import ChunkedSuite, upload_docs

log = logging.getLogger(__name__)
PART_FORMAT = "shard-{:05d}.jsonl"
TABLE_CHUNK = 50_000


@dataclass
class Plan:
    """What `prepare` decided; small enough for XCom (a few hundred bytes per shard)."""

    campaign: str
    run_id: str
    prefix: str  # renders bucket prefix: <campaign>/<run_id>/
    csv_key: str
    csv_sha256: str
    model_ref: str
    backend: str
    stats: dict[str, Any]
    shards: list[dict[str, int]] = field(default_factory=list)
    plan_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Plan:
        return cls(**d)


def labelling(settings: Settings) -> dict[str, Any]:
    """The settings besides the row rules that change a delivered file's bytes (signing, producer,
    embedded keys): part of the run's identity, so changing them never overwrites delivered images."""
    return {"c2pa": settings.render_c2pa, "producer": settings.provenance_producer,
            "embed_source_keys": settings.render_embed_source_keys}


def run_identity(campaign: str, csv_sha256: str, model_id: str, backend: str, shard_size: int,
                 rules: RowRules, labelled: dict[str, Any] | None = None) -> str:
    """The run id: a hash of everything that decides the run's images and plan (see the module doc);
    ``labelled``: `labelling` of the settings."""
    doc = {"campaign": campaign, "csv_sha256": csv_sha256, "model": model_id, "backend": backend,
           "shard_size": shard_size, "rules": asdict(rules), **({"labels": labelled} if labelled else {})}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def derived_seed(campaign: str, asset: str, k: int) -> int:
    """Seed of an image whose row gave none: a pure function of (campaign, row key, index)."""
    return int.from_bytes(hashlib.sha256(f"{campaign}\x1f{asset}\x1f{k}".encode()).digest()[:4], "big")


def image_seed(spec: RowSpec, campaign: str, k: int) -> int:
    return (spec.seed + k) % 2**32 if spec.seed is not None else derived_seed(campaign, spec.asset, k)


def object_key(plan: Plan, spec: RowSpec, k: int) -> str:
    return f"{plan.prefix}images/{spec.asset}_{k}.{imagemeta.extension(spec.format)}"


def _spec_from_json(d: dict[str, Any]) -> RowSpec:
    d = dict(d)
    d["size"] = tuple(d["size"]) if d["size"] else None
    return RowSpec(**d)


def _fetch_source(source: str, settings: Settings, store: Storage, tmp: Path) -> tuple[Path, str]:
    """A local copy of the CSV and its key (``bucket/key`` for S3 sources)."""
    if source.startswith("s3://"):
        bucket, _, key = source.removeprefix("s3://").partition("/")
        return store.get_file(bucket, key, tmp / "source.csv"), f"{bucket}/{key}"
    path = Path(source)
    if not path.is_file():
        raise UserError(f"no CSV at {source}: give a local file or s3://bucket/key")
    return path, str(path.resolve())


def prepare(source: str, campaign: str, settings: Settings, store: Storage, *, model_ref: str = "production",
            model_id: str | None = None, backend: str = "auto", shard_size: int | None = None,
            rules: RowRules | None = None, upsampler: str | None = None) -> Plan:
    """Validate and plan; raises CsvError when the file as a whole is unusable.

    model_ref: how the shards find the model (a model id, or a local model folder); model_id: the id it
    resolved to, part of the run's identity (default ``model_ref``), so an alias must be resolved by the
    caller. shard_size, rules: default the settings' (``render_shard_size``, `RowRules.from_settings`).
    upsampler: the model's upsampler version (another upsampler makes other images: another run)."""
    t0 = time.monotonic()
    shard_size = shard_size or settings.render_shard_size
    rules = rules or RowRules.from_settings(settings)
    slug = slugify(campaign)
    if not slug:
        raise UserError(f"campaign name '{campaign}' has no usable characters (letters, digits, . _ -)")
    with tempfile.TemporaryDirectory() as td:
        path, csv_key = _fetch_source(source, settings, store, Path(td))
        sha = sha256_file(path)
        run_id = run_identity(slug, sha, model_id or model_ref, backend, shard_size, rules,
                              labelling(settings) | ({"upsampler": upsampler} if upsampler else {}))
        prefix = f"{slug}/{run_id}/"
        rejected_path = Path(td) / "rejected.jsonl"
        reader = PromptCsv(path, Path(csv_key).name, rules)
        bucket = settings.bucket_renders
        shards: list[dict[str, int]] = []
        images = 0
        current: list[str] = []
        first_row = shard_images = 0

        def flush(last_row: int) -> None:
            """Each shard's rows go to their own small object: memory stays flat in the CSV's size."""
            nonlocal current, shard_images
            idx = len(shards)
            body = "".join(current).encode("utf-8")
            store.put_bytes(bucket, f"{prefix}work/shards/{PART_FORMAT.format(idx)}", body,
                            content_type="application/x-ndjson")
            shards.append({"index": idx, "rows": len(current), "images": shard_images, "first_row": first_row,
                           "last_row": last_row, "rows_sha256": hashlib.sha256(body).hexdigest()})
            current, shard_images = [], 0

        last_row = 0
        table: dict[str, list[Any]] = {"prompt_chars": [], "seed": [], "count": [], "asset": [], "format": [],
                                       "variety": []}  # light columns for the GX suite (no prompt text)
        docs = Path(td) / "data_docs"  # GX Data Docs of the run's validation, uploaded beside its validation.json
        suite = ChunkedSuite("prompt_csv", docs_dir=docs)
        with open(rejected_path, "w", encoding="utf-8") as rej:
            for item in reader:
                if isinstance(item, Rejection):
                    rej.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
                    continue
                for col, val in (("prompt_chars", len(item.prompt)), ("seed", item.seed), ("count", item.count),
                                 ("asset", item.asset), ("format", item.format), ("variety", item.variety)):
                    table[col].append(val)
                if len(table["seed"]) >= TABLE_CHUNK:  # validated a chunk at a time: memory stays flat
                    suite.add(_light_frame(table))
                if not current:
                    first_row = item.row_number
                current.append(json.dumps(asdict(item), ensure_ascii=False) + "\n")
                images += item.count
                shard_images += item.count
                last_row = item.row_number
                if shard_images >= shard_size:
                    flush(last_row)
            if current:
                flush(last_row)
        st = reader.stats
        suite.add(_light_frame(table))
        validation = suite.result() if st.accepted else {"success": True, "skipped": "no accepted rows"}
        stats = {"rows_read": st.rows_read, "rows_accepted": st.accepted, "rows_rejected": st.rejected,
                 "rows_blank": st.blank, "images_planned": images, "encoding": st.encoding,
                 "delimiter": st.delimiter, "columns": st.columns}
        store.put_file(bucket, prefix + "work/rejected.jsonl", rejected_path, content_type="application/x-ndjson")
        store.put_bytes(bucket, prefix + "validation.json", json.dumps(validation, indent=1, default=str).encode(),
                        content_type="application/json")
        stats["validation"] = {"suite": validation.get("suite"), "success": validation["success"],
                               **validation.get("statistics", {})}
        if (docs / "index.html").exists():
            stats["validation"]["data_docs"] = upload_docs(store, bucket, prefix + "data_docs/", docs)
        plan = Plan(slug, run_id, prefix, csv_key, sha, model_ref, backend, stats, shards, time.monotonic() - t0)
        store.put_bytes(bucket, prefix + "work/plan.json", json.dumps(plan.to_json(), indent=1).encode(),
                        content_type="application/json")
    log.info("planned %s: %d rows read, %d accepted, %d rejected, %d blank -> %d images in %d shards",
             csv_key, st.rows_read, st.accepted, st.rejected, st.blank, images, len(shards))
    return plan


def _light_frame(table: dict[str, list[Any]]) -> Any:
    """The light columns gathered so far as a polars frame (and the lists emptied)."""
    import polars as pl

    frame = pl.DataFrame(table, schema={"prompt_chars": pl.Int64, "seed": pl.Int64, "count": pl.Int64,
                                        "asset": pl.Utf8, "format": pl.Utf8, "variety": pl.Float64})
    for v in table.values():
        v.clear()
    return frame


def part_key(plan: Plan, index: int, model_id: str) -> str:
    """Where a finished shard's outputs are listed. Keyed by the shard's rows and the model, so a
    changed rule set or a new production model never reuses a stale part."""
    digest = hashlib.sha256(f"{plan.shards[index]['rows_sha256']}:{model_id}".encode()).hexdigest()[:16]
    return f"{plan.prefix}work/parts/shard-{index:05d}-{digest}.jsonl"


def shard_rows(plan: Plan, index: int, store: Storage, settings: Settings) -> list[RowSpec]:
    data = store.get_bytes(settings.bucket_renders, f"{plan.prefix}work/shards/{PART_FORMAT.format(index)}")
    return [_spec_from_json(json.loads(line)) for line in data.decode("utf-8").splitlines() if line]

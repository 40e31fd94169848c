"""The main job: a prompt CSV in; images with metadata, manifests, rejects and a gallery out, in S3.

    genengine render s3://campaigns/claimed/spring_sale.csv --campaign spring_sale

Three stages, the same functions for the CLI and the Airflow DAG (which maps `render_shard`):
1. `prepare`: read and validate the CSV (streamed), write accepted rows and rejections to the
   run's ``work/`` prefix, cut the accepted rows into shards of about ``shard_size`` images, and
   return a small JSON-able plan (no image data ever travels through XCom).
2. `render_shard`: dedupe prompts, batch-encode text, z from PCG64 per image seed, batched inference,
   then encoding and upload in a bounded thread pool so compute, encoding and I/O overlap. Images
   already in S3 with matching render parameters are skipped, so a killed or failed shard resumes
   with no duplicates and no holes. A finished shard writes its part file; a rerun skips it.
3. `finalize`: manifests (parquet, CSV), rejected.csv, contact sheet, gallery, summary, lineage.

Keys are a pure function of (campaign, CSV checksum, asset, k): the run id is the CSV's checksum, so
the same CSV dropped twice reuses its results and two campaigns never touch each other's objects.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import logging
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gen_engine.config import Settings
from gen_engine.hashing import sha256_file
from gen_engine.lineage import LineageStore
from gen_engine.models.noise import seed_noise
from gen_engine.render import imagemeta
from gen_engine.render.csvin import PromptCsv, Rejection, RowRules, RowSpec, slugify
from gen_engine.storage import ObjectNotFound, Storage

log = logging.getLogger(__name__)
PART_FORMAT = "shard-{:05d}.jsonl"


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


# --- helpers ----------------------------------------------------------------------------------------
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
        raise FileNotFoundError(f"no CSV at {source}: give a local file or s3://bucket/key")
    return path, str(path.resolve())


# --- stage 1: prepare -----------------------------------------------------------------------------
def prepare(source: str, campaign: str, settings: Settings, store: Storage, *, model_ref: str = "production",
            backend: str = "auto", shard_size: int = 2048, rules: RowRules = RowRules()) -> Plan:
    """Validate and plan; raises CsvError when the file as a whole is unusable."""
    t0 = time.monotonic()
    slug = slugify(campaign)
    if not slug:
        raise ValueError(f"campaign name '{campaign}' has no usable characters (letters, digits, . _ -)")
    with tempfile.TemporaryDirectory() as td:
        path, csv_key = _fetch_source(source, settings, store, Path(td))
        sha = sha256_file(path)
        run_id = sha[:16]
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
        with open(rejected_path, "w", encoding="utf-8") as rej:
            for item in reader:
                if isinstance(item, Rejection):
                    rej.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
                    continue
                for col, val in (("prompt_chars", len(item.prompt)), ("seed", item.seed), ("count", item.count),
                                 ("asset", item.asset), ("format", item.format), ("variety", item.variety)):
                    table[col].append(val)
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
        validation = {"success": True, "skipped": "no accepted rows"}
        if st.accepted:
            import polars as pl

            from gen_engine.validation import run_suite

            validation = run_suite(pl.DataFrame(table, schema_overrides={"seed": pl.Int64}), "prompt_csv")
        del table
        stats = {"rows_read": st.rows_read, "rows_accepted": st.accepted, "rows_rejected": st.rejected,
                 "rows_blank": st.blank, "images_planned": images, "encoding": st.encoding,
                 "delimiter": st.delimiter, "columns": st.columns}
        store.put_file(bucket, prefix + "work/rejected.jsonl", rejected_path, content_type="application/x-ndjson")
        store.put_bytes(bucket, prefix + "validation.json", json.dumps(validation, indent=1, default=str).encode(),
                        content_type="application/json")
        stats["validation"] = {"suite": validation.get("suite"), "success": validation["success"],
                               **validation.get("statistics", {})}
        plan = Plan(slug, run_id, prefix, csv_key, sha, model_ref, backend, stats, shards, time.monotonic() - t0)
        store.put_bytes(bucket, prefix + "work/plan.json", json.dumps(plan.to_json(), indent=1).encode(),
                        content_type="application/json")
    log.info("planned %s: %d rows read, %d accepted, %d rejected, %d blank -> %d images in %d shards",
             csv_key, st.rows_read, st.accepted, st.rejected, st.blank, images, len(shards))
    return plan


def part_key(plan: Plan, index: int, model_id: str) -> str:
    """Where a finished shard's outputs are listed. Keyed by the shard's rows and the model, so a
    changed rule set or a new production model never reuses a stale part."""
    digest = hashlib.sha256(f"{plan.shards[index]['rows_sha256']}:{model_id}".encode()).hexdigest()[:16]
    return f"{plan.prefix}work/parts/shard-{index:05d}-{digest}.jsonl"


def shard_rows(plan: Plan, index: int, store: Storage, settings: Settings) -> list[RowSpec]:
    data = store.get_bytes(settings.bucket_renders, f"{plan.prefix}work/shards/{PART_FORMAT.format(index)}")
    return [_spec_from_json(json.loads(line)) for line in data.decode("utf-8").splitlines() if line]


# --- stage 2: render one shard --------------------------------------------------------------------
@dataclass
class RenderEnv:
    """What rendering needs besides the plan: the loaded backend and the model's identity."""

    backend: Any
    model: dict[str, Any]
    encoder: Any
    batch_size: int = 32  # the CPU's throughput sweet spot for 64 px; larger batches only add peak memory
    io_threads: int = 8


def render_params(plan: Plan, spec: RowSpec, k: int, env: RenderEnv) -> dict[str, Any]:
    size = spec.size or (env.backend.resolution, env.backend.resolution)
    return {"Seed": image_seed(spec, plan.campaign, k), "Size": f"{size[0]}x{size[1]}",
            "Native size": f"{env.backend.resolution}x{env.backend.resolution}", "Variety": spec.variety,
            "Model": env.model["model_id"], "Engine": env.backend.name, "Format": spec.format,
            "Campaign": plan.campaign, "Asset": spec.asset, "Index": k}


def params_digest(params: dict[str, Any], prompt: str) -> str:
    """Checksum of everything that determines an image; an existing object with it is reused."""
    blob = json.dumps({k: v for k, v in params.items() if k != "Engine"} | {"prompt": prompt}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def render_shard(plan: Plan, index: int, settings: Settings, store: Storage, env: RenderEnv,
                 progress: bool = False) -> dict[str, Any]:
    """Render one shard (resumable); returns its counts and timings."""
    bucket = settings.bucket_renders
    part = part_key(plan, index, env.model["model_id"])
    if store.exists(bucket, part):
        log.info("shard %d already complete, skipped", index)
        return {"shard": index, "rendered": 0, "reused": plan.shards[index]["images"], "skipped_shard": True,
                "backend": env.backend.name}
    shard = plan.shards[index]
    t0 = time.monotonic()
    specs = shard_rows(plan, index, store, settings)
    existing = {o.key for o in store.list(bucket, plan.prefix + "images/")}

    # Every image of the shard, in order; those already in S3 with the same parameters are reused.
    todo: list[tuple[RowSpec, int, dict[str, Any], str]] = []
    outputs: list[dict[str, Any]] = []
    for spec in specs:
        for k in range(spec.count):
            params = render_params(plan, spec, k, env)
            digest = params_digest(params, spec.prompt)
            key = object_key(plan, spec, k)
            if key in existing:
                try:
                    meta = store.stat(bucket, key).metadata
                except ObjectNotFound:
                    meta = {}
                if meta.get("params-digest") == digest:
                    outputs.append(_output_row(spec, k, key, params, meta.get("sha256", ""), int(meta.get("bytes", 0))))
                    continue
            todo.append((spec, k, params, digest))
    reused = len(outputs)

    # Text embeddings once per distinct prompt.
    prompts = sorted({spec.prompt for spec, *_ in todo})
    emb = dict(zip(prompts, env.encoder.encode(prompts), strict=True)) if prompts else {}
    t_infer = t_wait = 0.0
    lock = threading.Lock()
    in_flight = threading.BoundedSemaphore(env.batch_size * 4)  # bounded: memory is flat in campaign size

    def upload(img: np.ndarray, spec: RowSpec, k: int, params: dict[str, Any], digest: str) -> None:
        try:
            out = Image.fromarray(img)
            if spec.size and spec.size != out.size:
                out = out.resize(spec.size, Image.Resampling.LANCZOS)
            key = object_key(plan, spec, k)
            lineage = {"run_id": plan.run_id, "campaign": plan.campaign, "csv_key": plan.csv_key,
                       "csv_sha256": plan.csv_sha256, "row": spec.row_number, "k": k, "seed": params["Seed"],
                       "model_id": env.model["model_id"], "dataset_version_id": env.model.get("dataset_version_id"),
                       "code_version": env.model.get("code_version"), "object_key": key}
            data = imagemeta.encode(out, spec.format, spec.prompt, params, lineage)
            sha = hashlib.sha256(data).hexdigest()
            store.put_bytes(bucket, key, data, content_type=imagemeta.content_type(spec.format), metadata={
                "prompt": spec.prompt[:300], "prompt-sha256": hashlib.sha256(spec.prompt.encode()).hexdigest(),
                "seed": str(params["Seed"]), "model-id": env.model["model_id"], "engine": env.backend.name,
                "campaign": plan.campaign, "run-id": plan.run_id, "row": str(spec.row_number),
                "csv-sha256": plan.csv_sha256, "params-digest": digest, "sha256": sha, "bytes": str(len(data)),
                "digital-source-type": "trainedAlgorithmicMedia"})
            with lock:
                outputs.append(_output_row(spec, k, key, params, sha, len(data)))
        finally:
            in_flight.release()

    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"shard {index}", unit="img", disable=not progress, mininterval=1.0)
    with cf.ThreadPoolExecutor(env.io_threads, thread_name_prefix="encode-upload") as pool:
        futures = []
        for b in range(0, len(todo), env.batch_size):
            batch = todo[b : b + env.batch_size]
            z = np.stack([seed_noise(params["Seed"], env.backend.z_dim, spec.variety) for spec, _, params, _ in batch])
            text = np.stack([emb[spec.prompt] for spec, *_ in batch])
            ti = time.monotonic()
            imgs = env.backend.render(z, text)
            t_infer += time.monotonic() - ti
            tw = time.monotonic()
            for img, (spec, k, params, digest) in zip(imgs, batch, strict=True):
                in_flight.acquire()
                futures.append(pool.submit(upload, img, spec, k, params, digest))
            t_wait += time.monotonic() - tw
            bar.update(len(batch))
            if b // env.batch_size % 10 == 0:
                log.info("shard %d: %d/%d images", index, min(b + len(batch), len(todo)), len(todo))
        for f in futures:
            f.result()  # re-raise the first upload failure: the shard fails, a rerun resumes it
    bar.close()

    outputs.sort(key=lambda o: (o["row_number"], o["k"]))
    assert len(outputs) == shard["images"], (len(outputs), shard["images"])
    body = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in outputs).encode("utf-8")
    store.put_bytes(bucket, part, body, content_type="application/x-ndjson")
    dt = time.monotonic() - t0
    log.info("shard %d done: %d rendered, %d reused in %.1fs (inference %.1fs)", index, len(todo), reused, dt, t_infer)
    return {"shard": index, "rendered": len(todo), "reused": reused, "seconds": dt, "inference_seconds": t_infer,
            "backpressure_seconds": t_wait, "backend": env.backend.name}


def _output_row(spec: RowSpec, k: int, key: str, params: dict[str, Any], sha: str, nbytes: int) -> dict[str, Any]:
    return {"object_key": key, "row_number": spec.row_number, "asset": spec.asset, "k": k, "prompt": spec.prompt,
            "seed": params["Seed"], "size": params["Size"], "format": spec.format, "variety": spec.variety,
            "model_id": params["Model"], "engine": params["Engine"], "sha256": sha, "bytes": nbytes,
            "extra": spec.extra}


# --- stage 3: finalize -----------------------------------------------------------------------------
MANIFEST_COLUMNS = ["object_key", "row_number", "asset", "k", "prompt", "seed", "size", "format", "variety",
                    "model_id", "engine", "sha256", "bytes"]


def finalize(plan: Plan, settings: Settings, store: Storage, lineage: LineageStore, model: dict[str, Any],
             backend_name: str, shard_results: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the run's manifests, rejects, contact sheet, gallery and summary; record lineage."""
    import polars as pl

    from gen_engine.render import gallery
    from gen_engine.render.csvin import write_safe_csv

    t0 = time.monotonic()
    bucket = settings.bucket_renders
    lineage.start_run(plan.run_id, plan.campaign, csv_key=plan.csv_key, csv_sha256=plan.csv_sha256,
                      model_id=model["model_id"], backend=backend_name)
    outputs: list[dict[str, Any]] = []
    for shard in plan.shards:
        key = part_key(plan, shard["index"], model["model_id"])
        try:
            part = [json.loads(line) for line in store.get_bytes(bucket, key).decode("utf-8").splitlines() if line]
        except ObjectNotFound:
            raise RuntimeError(f"shard {shard['index']} (rows {shard['first_row']}-{shard['last_row']}) has not been "
                               "rendered; render it before finalizing") from None
        lineage.add_outputs(plan.run_id, part)
        outputs.extend(part)
    rejected = [json.loads(line) for line in
                store.get_bytes(bucket, plan.prefix + "work/rejected.jsonl").decode("utf-8").splitlines() if line]
    lineage.add_rejected(plan.run_id, rejected)

    extra_cols = sorted({k for o in outputs for k in o.get("extra", {})})
    flat = [{**{c: o[c] for c in MANIFEST_COLUMNS}, **{f"extra.{k}": o["extra"].get(k, "") for k in extra_cols}}
            for o in outputs]
    cols = MANIFEST_COLUMNS + [f"extra.{k}" for k in extra_cols]
    buf = io.BytesIO()
    pl.DataFrame(flat, schema={c: (pl.Int64 if c in ("row_number", "k", "seed", "bytes") else
                                   pl.Float64 if c == "variety" else pl.Utf8) for c in cols}).write_parquet(buf)
    store.put_bytes(bucket, plan.prefix + "manifest.parquet", buf.getvalue(),
                    content_type="application/vnd.apache.parquet")
    store.put_bytes(bucket, plan.prefix + "manifest.csv", write_safe_csv(flat, cols), content_type="text/csv")
    field_cols = list(dict.fromkeys(k for r in rejected for k in r["fields"]))
    rej_flat = [{"row_number": r["row_number"], "reason": r["reason"], **r["fields"]} for r in rejected]
    rej_csv = write_safe_csv(rej_flat, ["row_number", "reason", *field_cols])
    store.put_bytes(bucket, plan.prefix + "rejected.csv", rej_csv, content_type="text/csv")

    sheet_items = [(store.get_bytes(bucket, o["object_key"]), f"{o['asset']}_{o['k']}", o["prompt"])
                   for o in outputs[:64]]
    if sheet_items:
        store.put_bytes(bucket, plan.prefix + "contact_sheet.png", gallery.contact_sheet(sheet_items),
                        content_type="image/png")

    rendered = sum(r.get("rendered", 0) for r in shard_results or [])
    render_s = sum(r.get("seconds", 0.0) for r in shard_results or [])
    counts = {k: plan.stats[k] for k in ("rows_read", "rows_accepted", "rows_rejected", "rows_blank")}
    counts["images"] = len(outputs)
    summary = {
        "campaign": plan.campaign, "run_id": plan.run_id, "prefix": plan.prefix, "csv_key": plan.csv_key,
        "csv_sha256": plan.csv_sha256, "model_id": model["model_id"], "model_version": model.get("version"),
        "dataset_version_id": model.get("dataset_version_id"), "code_version": model.get("code_version"),
        "backend": backend_name, "counts": counts, "images_rendered_now": rendered,
        "images_reused": len(outputs) - rendered if shard_results is not None else None,
        "shards": len(plan.shards), "encoding": plan.stats["encoding"], "delimiter": plan.stats["delimiter"],
        "validation": plan.stats.get("validation"),
        "timings_s": {"plan": round(plan.plan_seconds, 3), "render": round(render_s, 3),
                      "finalize": round(time.monotonic() - t0, 3)},
        "throughput_images_per_s": rendered / render_s if render_s > 0 else 0.0,
    }
    store.put_bytes(bucket, plan.prefix + "index.html", gallery.index_html(summary, outputs, rejected),
                    content_type="text/html; charset=utf-8")
    store.put_bytes(bucket, plan.prefix + "summary.json", json.dumps(summary, indent=1).encode(),
                    content_type="application/json")
    lineage.finish_run(plan.run_id, status="success", counts=counts, summary=summary)
    return summary


# --- the whole job -------------------------------------------------------------------------------------
def run_campaign(source: str, campaign: str, settings: Settings, *, model_ref: str = "production",
                 backend: str = "auto", shard_size: int = 2048, progress: bool = True) -> dict[str, Any]:
    """prepare -> render every shard -> finalize: what `genengine render` runs (the DAG maps the middle)."""
    from gen_engine import registry
    from gen_engine.runtime import load_backend
    from gen_engine.text import shared_encoder

    store = Storage.from_settings(settings)
    lineage = LineageStore.from_settings(settings)
    model_dir, model = registry.resolve(model_ref, settings, store, lineage)
    plan = prepare(source, campaign, settings, store, model_ref=model_ref, backend=backend, shard_size=shard_size)
    env = RenderEnv(load_backend(backend, model_dir), model, shared_encoder())
    results = [render_shard(plan, s["index"], settings, store, env, progress=progress) for s in plan.shards]
    return finalize(plan, settings, store, lineage, model, env.backend.name, results)

"""Stage 3 of a campaign: manifests (parquet, CSV), rejected.csv, contact sheet, gallery, summary, lineage."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gen_engine.config import Settings
from gen_engine.infra.lineage import LineageStore
from gen_engine.infra.storage import ObjectNotFound, Storage
from gen_engine.render.csvin import SafeCsvWriter
from gen_engine.render.gallery import GALLERY_LIMIT as GALLERY
from gen_engine.render.plan import Plan, part_key
from gen_engine.sheets import contact_sheet

MANIFEST_COLUMNS = ["object_key", "row_number", "asset", "k", "prompt", "seed", "size", "format", "variety",
                    "model_id", "engine", "precision", "upscale", "label", "c2pa", "sha256", "bytes"]


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _batches(items: Iterator[dict[str, Any]], n: int = 5000) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for it in items:
        batch.append(it)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


def finalize(plan: Plan, settings: Settings, store: Storage, lineage: LineageStore, model: dict[str, Any],
             backend_name: str, shard_results: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write the run's manifests, rejects, contact sheet, gallery and summary; record lineage.

    Memory is bounded by one shard, whatever the run's size: the shards' parts are read one at a time
    into a local file (recorded in the lineage store as they come), the manifests are written from it
    in batches (the parquet one a row group per batch) and uploaded from disk, and only the first images
    (contact sheet, gallery) and the first rejected rows (gallery) stay in memory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gen_engine.render import gallery

    t0 = time.monotonic()
    bucket = settings.bucket_renders
    precisions = sorted({r["precision"] for r in shard_results or [] if r.get("precision")})
    if "int8" in precisions:  # the gated int8 engine, named as the registry names it
        backend_name = f"{backend_name}-int8"
    lineage.start_run(plan.run_id, plan.campaign, csv_key=plan.csv_key, csv_sha256=plan.csv_sha256,
                      model_id=model["model_id"], backend=backend_name)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        n_images, extra_keys, first = 0, set(), []
        labelled = {"c2pa_signed": 0, "visible_label": 0}
        with open(tmp / "outputs.jsonl", "w", encoding="utf-8") as out:
            for shard in plan.shards:
                key = part_key(plan, shard["index"], model["model_id"])
                try:
                    body = store.get_bytes(bucket, key).decode("utf-8")
                except ObjectNotFound:
                    raise RuntimeError(f"shard {shard['index']} (rows {shard['first_row']}-{shard['last_row']}) has "
                                       "not been rendered; render it before finalizing") from None
                part = [json.loads(line) for line in body.splitlines() if line]
                lineage.add_outputs(plan.run_id, part)
                for o in part:
                    extra_keys.update(o.get("extra", {}))
                    labelled["c2pa_signed"] += o.get("c2pa") == "signed"
                    labelled["visible_label"] += o.get("label", "none") != "none"
                first.extend(part[: max(0, GALLERY - len(first))])
                n_images += len(part)
                out.write(body if body.endswith("\n") or not body else body + "\n")
                del body, part
        extras = sorted(extra_keys)
        cols = MANIFEST_COLUMNS + [f"extra.{k}" for k in extras]
        schema = pa.schema([(c, pa.int64() if c in ("row_number", "k", "seed", "bytes") else
                             pa.float64() if c == "variety" else pa.string()) for c in cols])
        with open(tmp / "manifest.csv", "w", encoding="utf-8-sig", newline="") as fcsv, \
                pq.ParquetWriter(tmp / "manifest.parquet", schema, compression="zstd") as parquet:
            w = SafeCsvWriter(fcsv, cols)
            for batch in _batches(_jsonl(tmp / "outputs.jsonl"), 20_000):  # one row group per batch
                rows = [{**{c: o.get(c) for c in MANIFEST_COLUMNS},  # upscale, label, c2pa, precision: older parts lack
                         **{f"extra.{k}": str(o.get("extra", {}).get(k, "")) for k in extras}} for o in batch]
                for row in rows:
                    w.write(row)
                parquet.write_table(pa.Table.from_pylist(rows, schema=schema))
        store.put_file(bucket, plan.prefix + "manifest.parquet", tmp / "manifest.parquet",
                       content_type="application/vnd.apache.parquet")
        store.put_file(bucket, plan.prefix + "manifest.csv", tmp / "manifest.csv", content_type="text/csv")

        # Rejected rows: recorded in batches; their fields' columns are the union over every row.
        store.get_file(bucket, plan.prefix + "work/rejected.jsonl", tmp / "rejected.jsonl")
        n_rejected, field_cols, first_rejected = 0, {}, []
        for batch in _batches(_jsonl(tmp / "rejected.jsonl")):
            lineage.add_rejected(plan.run_id, batch)
            for r in batch:
                field_cols.update(dict.fromkeys(r["fields"]))
            first_rejected.extend(batch[: max(0, gallery.REJECTED_LIMIT - len(first_rejected))])
            n_rejected += len(batch)
        with open(tmp / "rejected.csv", "w", encoding="utf-8-sig", newline="") as frej:
            w = SafeCsvWriter(frej, ["row_number", "reason", *field_cols])
            for r in _jsonl(tmp / "rejected.jsonl"):
                w.write({"row_number": r["row_number"], "reason": r["reason"], **r["fields"]})
        store.put_file(bucket, plan.prefix + "rejected.csv", tmp / "rejected.csv", content_type="text/csv")

    sheet_items = [(store.get_bytes(bucket, o["object_key"]), f"{o['asset']}_{o['k']}", o["prompt"])
                   for o in first[:64]]
    if sheet_items:
        store.put_bytes(bucket, plan.prefix + "contact_sheet.png", contact_sheet(sheet_items),
                        content_type="image/png")

    rendered = sum(r.get("rendered", 0) for r in shard_results or [])
    render_s = sum(r.get("seconds", 0.0) for r in shard_results or [])
    counts = {k: plan.stats[k] for k in ("rows_read", "rows_accepted", "rows_rejected", "rows_blank")}
    counts["images"] = n_images
    summary = {
        "campaign": plan.campaign, "run_id": plan.run_id, "prefix": plan.prefix, "csv_key": plan.csv_key,
        "csv_sha256": plan.csv_sha256, "model_id": model["model_id"], "model_version": model.get("version"),
        "dataset_version_id": model.get("dataset_version_id"), "code_version": model.get("code_version"),
        "backend": backend_name,
        "precision": precisions or None,
        "counts": counts, "images_rendered_now": rendered,
        "images_reused": n_images - rendered if shard_results is not None else None,
        "shards": len(plan.shards), "encoding": plan.stats["encoding"], "delimiter": plan.stats["delimiter"],
        "validation": plan.stats.get("validation"), "labels": labelled,
        "timings_s": {"plan": round(plan.plan_seconds, 3), "render": round(render_s, 3),
                      "finalize": round(time.monotonic() - t0, 3)},
        "throughput_images_per_s": rendered / render_s if render_s > 0 else 0.0,
    }
    store.put_bytes(bucket, plan.prefix + "index.html", gallery.index_html(summary, first, first_rejected, n_rejected),
                    content_type="text/html; charset=utf-8")
    store.put_bytes(bucket, plan.prefix + "summary.json", json.dumps(summary, indent=1).encode(),
                    content_type="application/json")
    lineage.finish_run(plan.run_id, status="success", counts=counts, summary=summary)
    return summary

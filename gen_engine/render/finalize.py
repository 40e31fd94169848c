"""Stage 3 of a campaign: manifests (parquet, CSV), rejected.csv, contact sheet, gallery, summary, lineage."""

from __future__ import annotations

import io
import json
import time
from typing import Any

from gen_engine.config import Settings
from gen_engine.infra.lineage import LineageStore
from gen_engine.infra.storage import ObjectNotFound, Storage
from gen_engine.render.plan import Plan, part_key
from gen_engine.sheets import contact_sheet

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
        store.put_bytes(bucket, plan.prefix + "contact_sheet.png", contact_sheet(sheet_items),
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

"""Memory of a campaign's plan and finalize stages at 100,000 and 1,000,000 images (issue #19 item 6).

    python benchmarks/campaign_memory.py            # 100,000 and 1,000,000 images
    python benchmarks/campaign_memory.py --quick    # 10,000 and 100,000

A real local SeaweedFS on free ports and the embedded SQLite lineage store. The CSV has 10 images per
row (100,000 rows for a million images). Rendering is not what is measured: each shard's part (the
list of its outputs that `render_shard` writes when it finishes) is written directly, with 64 real
images for the contact sheet, so finalize reads exactly what a rendered run would give it. Plan and
finalize each run in a fresh child process, so each peak RSS (``ru_maxrss``) is that stage's own.
Targets: peak RSS under 1,500 MB, and flat within 10% from the smaller to the larger campaign.
Writes benchmarks/results/campaign_memory.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import bench_s3, cpu_name, peak_rss_mb, run_child

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PER_ROW = 10


def child_plan(csv_path: str, campaign: str, model_dir: str) -> dict:
    from gen_engine.render.plan import prepare
    from gen_engine.resources import resources

    res = resources()
    t0 = time.perf_counter()
    plan = prepare(csv_path, campaign, res.settings, res.storage, model_ref=model_dir)
    return {"plan_key": f"{plan.prefix}work/plan.json", "rows": plan.stats["rows_read"], "shards": len(plan.shards),
            "images": plan.stats["images_planned"], "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb()}


def child_fake_render(plan_key: str, model_dir: str) -> dict:
    """Each shard's part as render_shard writes it, and 64 real PNGs for the contact sheet (not measured)."""
    import io

    from PIL import Image

    from gen_engine.orchestration import _load_plan
    from gen_engine.registry import ModelRegistry
    from gen_engine.render.plan import object_key, part_key, shard_rows
    from gen_engine.resources import resources

    res = resources()
    plan = _load_plan(res, plan_key)
    _, model = ModelRegistry(res).resolve(model_dir)
    bucket, written = res.settings.bucket_renders, 0
    png = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(png, "PNG")
    for shard in plan.shards:
        lines = []
        for spec in shard_rows(plan, shard["index"], res.storage, res.settings):
            for k in range(spec.count):
                key = object_key(plan, spec, k)
                if written < 64:
                    res.storage.put_bytes(bucket, key, png.getvalue(), content_type="image/png")
                written += 1
                lines.append(json.dumps({
                    "object_key": key, "row_number": spec.row_number, "asset": spec.asset, "k": k,
                    "prompt": spec.prompt, "seed": k, "size": "64x64", "format": spec.format,
                    "variety": spec.variety, "model_id": model["model_id"], "engine": "torch",
                    "sha256": "0" * 64, "bytes": 100, "extra": spec.extra}, ensure_ascii=False))
        res.storage.put_bytes(bucket, part_key(plan, shard["index"], model["model_id"]),
                              ("\n".join(lines) + "\n").encode(), content_type="application/x-ndjson")
    return {"images": written}


def child_finalize(plan_key: str, model_dir: str) -> dict:
    from gen_engine.orchestration import _load_plan
    from gen_engine.render.finalize import finalize
    from gen_engine.resources import resources

    res = resources()
    plan = _load_plan(res, plan_key)
    _, model = res.registry.resolve(model_dir)
    t0 = time.perf_counter()
    summary = finalize(plan, res.settings, res.storage, res.lineage, model, "torch", [])
    return {"images": summary["counts"]["images"], "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb()}


def write_csv(path: Path, rows: int) -> Path:
    with open(path, "w") as f:
        f.write("prompt,count,asset_name,channel\n")
        for i in range(rows):
            f.write(f"a sticker of a red heart for spring number {i},{PER_ROW},asset-{i},web\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="10,000 and 100,000 images.")
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        fn = {"plan": child_plan, "fake_render": child_fake_render, "finalize": child_finalize}[a.child]
        print(json.dumps(fn(*a.rest)))
        return

    import torch

    from gen_engine.models.artifact import save_model
    from gen_engine.models.gan import GANConfig, Generator

    sizes = (10_000, 100_000) if a.quick else (100_000, 1_000_000)
    buckets = ["campaigns", "renders", "models", "datasets"]
    with tempfile.TemporaryDirectory() as td, bench_s3(Path(td), buckets) as env:
        tdp = Path(td)
        torch.manual_seed(0)
        model_dir = str(save_model(tdp / "model", Generator(GANConfig(resolution=16, nf=8)),
                                   {"name": "generator", "code_version": "bench"}))
        out: dict = {"cpu": cpu_name(), "images_per_row": PER_ROW, "runs": {}}
        for n in sizes:
            csv_path = write_csv(tdp / f"c{n}.csv", n // PER_ROW)
            print(f"{n:,} images: plan ...", flush=True)
            plan = run_child(__file__, "plan", env, str(csv_path), f"mem{n}", model_dir)
            print(f"  {plan['seconds']:.0f}s, peak RSS {plan['peak_rss_mb']:.0f} MB; writing the shards' parts ...",
                  flush=True)
            run_child(__file__, "fake_render", env, plan["plan_key"], model_dir)
            print("  finalize ...", flush=True)
            fin = run_child(__file__, "finalize", env, plan["plan_key"], model_dir)
            print(f"  {fin['seconds']:.0f}s, peak RSS {fin['peak_rss_mb']:.0f} MB", flush=True)
            assert fin["images"] == n == plan["images"], (fin, plan)
            out["runs"][str(n)] = {"plan": plan, "finalize": fin}
    small, big = (out["runs"][str(n)] for n in sizes)
    growth = {s: big[s]["peak_rss_mb"] / small[s]["peak_rss_mb"] - 1 for s in ("plan", "finalize")}
    out["growth"] = growth
    RESULTS.mkdir(exist_ok=True)
    name = "campaign_memory_quick" if a.quick else "campaign_memory"
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
    ok = lambda v, t: "met" if v < t else "MISSED"  # noqa: E731
    md = [f"# Campaign memory: plan and finalize, {sizes[0]:,} vs {sizes[1]:,} images", "",
          f"CPU: {out['cpu']}; {PER_ROW} images per CSV row; local SeaweedFS, SQLite lineage.", "",
          "| stage | peak RSS, " + f"{sizes[0]:,} (MB)" + " | peak RSS, " + f"{sizes[1]:,} (MB)" +
          " | growth | seconds (larger) | target |", "|---|---|---|---|---|---|"]
    for s in ("plan", "finalize"):
        md.append(f"| {s} | {small[s]['peak_rss_mb']:.0f} | {big[s]['peak_rss_mb']:.0f} | {growth[s]:+.1%} | "
                  f"{big[s]['seconds']:.0f} | < 1,500 MB ({ok(big[s]['peak_rss_mb'], 1500)}), flat within 10% "
                  f"({ok(abs(growth[s]), 0.10)}) |")
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

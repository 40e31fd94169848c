"""Campaign throughput: end to end (CSV -> images with metadata in S3 -> manifests) vs pure inference.

    python benchmarks/campaign_throughput.py            # 20,000-image campaign, the issue's figures
    python benchmarks/campaign_throughput.py --quick    # 2,000 images, for a smoke run

Everything runs against a real local SeaweedFS started here on free ports. A 64 px generator with
nf = 32 (random weights: throughput does not depend on what the model learned) is rendered with the
same backend in both measurements, in the same run. Each measurement runs in a fresh child process so
that its peak RSS is its own. Reports medians where repeated; writes JSON and a markdown table to
benchmarks/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import bench_s3, peak_rss_mb, run_child

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


# --- children ---------------------------------------------------------------------------------------
def child_pure(model_dir: str, n_images: str, backend: str) -> dict:
    """Pure inference: precomputed z and text, the renderer's batch size and exact call."""
    import numpy as np

    from gen_engine.config import Settings
    from gen_engine.models.noise import seed_noise
    from gen_engine.runtime import load_backend

    be = load_backend(backend, Path(model_dir))
    bs = Settings().render_batch_size
    batches = int(n_images) // bs
    rng = np.random.default_rng(0)
    text = rng.standard_normal((bs, 384)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    z = np.stack([seed_noise(s, be.z_dim) for s in range(bs)])
    be.render(z, text)  # warm-up
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(batches):
            be.render(z, text)
        rates.append(batches * bs / (time.perf_counter() - t0))
    return {"images_per_s": statistics.median(rates), "all": rates, "backend": be.name, "batch": bs,
            "peak_rss_mb": peak_rss_mb()}


def child_campaign(csv_path: str, campaign: str, model_dir: str, backend: str) -> dict:
    from gen_engine.orchestration import run_campaign
    from gen_engine.resources import resources

    t0 = time.perf_counter()
    summary = run_campaign(resources(), csv_path, campaign, model=model_dir, backend=backend, progress=False)
    wall = time.perf_counter() - t0
    return {"images": summary["counts"]["images"], "wall_s": wall, "images_per_s": summary["counts"]["images"] / wall,
            "timings_s": summary["timings_s"], "peak_rss_mb": peak_rss_mb(), "backend": summary["backend"]}


def child_plan(csv_path: str) -> dict:
    from gen_engine.render.plan import prepare
    from gen_engine.resources import resources

    res = resources()
    t0 = time.perf_counter()
    plan = prepare(csv_path, "plan-1m", res.settings, res.storage)
    return {"rows": plan.stats["rows_read"], "shards": len(plan.shards), "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb()}


# --- driver ---------------------------------------------------------------------------------------------
def write_csv(path: Path, rows: int, count: int) -> Path:
    with open(path, "w") as f:
        f.write("prompt,count,asset_name,seed\n")
        colors = ["red", "blue", "green", "yellow", "orange", "purple", "pink", "cyan"]
        shapes = ["circle", "square", "triangle", "star", "hexagon", "diamond"]
        for i in range(rows):
            f.write(f"a {colors[i % 8]} {shapes[i // 8 % 6]} number {i},{count},asset-{i},{i * 16}\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="2,000 images and a 100,000-row plan instead.")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        fn = {"pure": child_pure, "campaign": child_campaign, "plan": child_plan}[a.child]
        print(json.dumps(fn(*a.rest)))
        return

    import torch

    from gen_engine.models.artifact import save_model
    from gen_engine.models.gan import GANConfig, Generator

    big = 2000 if a.quick else 20000
    plan_rows = 100_000 if a.quick else 1_000_000
    buckets = ["campaigns", "renders", "models", "datasets"]
    with tempfile.TemporaryDirectory() as td, bench_s3(Path(td), buckets) as env:
        tdp = Path(td)
        torch.manual_seed(0)
        model_dir = save_model(tdp / "model", Generator(GANConfig(resolution=64, nf=32)),
                               {"name": "generator", "code_version": "bench"})
        out: dict = {"machine": {"cpus": os.cpu_count()}, "generator": "64 px, nf=32",
                     "backend_requested": a.backend}
        print("pure inference ...", flush=True)
        out["pure"] = run_child(__file__, "pure", env, str(model_dir), "2048", a.backend)
        print(f"  {out['pure']['images_per_s']:.1f} images/s", flush=True)
        for n in sorted({2000, big}):  # 2,000 vs the big one: peak RSS must not grow with the campaign
            csv_path = write_csv(tdp / f"c{n}.csv", n // 16, 16)
            print(f"campaign {n} images ...", flush=True)
            out[f"campaign_{n}"] = r = run_child(__file__, "campaign", env, str(csv_path), f"bench{n}",
                                                 str(model_dir), a.backend)
            r["ratio_to_pure"] = r["images_per_s"] / out["pure"]["images_per_s"]
            print(f"  {r['images_per_s']:.1f} images/s ({r['ratio_to_pure']:.1%} of pure), "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)
        print(f"planning {plan_rows} rows ...", flush=True)
        csv_path = write_csv(tdp / "plan.csv", plan_rows, 1)
        out["plan"] = run_child(__file__, "plan", env, str(csv_path))
        print(f"  {out['plan']['seconds']:.0f}s, peak RSS {out['plan']['peak_rss_mb']:.0f} MB", flush=True)

    RESULTS.mkdir(exist_ok=True)
    name = "campaign_throughput" + ("_quick" if a.quick else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=1))
    c_big, c_small = out[f"campaign_{big}"], out["campaign_2000"]
    md = [f"# Campaign throughput ({out['generator']}, backend {out['pure']['backend']}, {os.cpu_count()} CPUs)", "",
          "| measurement | images/s | ratio to pure inference | peak RSS (MB) | target |", "|---|---|---|---|---|",
          f"| pure inference (batch {out['pure']['batch']}, median of 3) | {out['pure']['images_per_s']:.1f} | 100% | "
          f"{out['pure']['peak_rss_mb']:.0f} | |",
          f"| campaign 2,000 images end to end | {c_small['images_per_s']:.1f} | {c_small['ratio_to_pure']:.1%} | "
          f"{c_small['peak_rss_mb']:.0f} | RSS < 1,500 |",
          f"| campaign {big:,} images end to end | {c_big['images_per_s']:.1f} | {c_big['ratio_to_pure']:.1%} | "
          f"{c_big['peak_rss_mb']:.0f} | >= 85%, RSS < 1,500 and flat |",
          f"| planning {out['plan']['rows']:,} rows | - | - | {out['plan']['peak_rss_mb']:.0f} | RSS < 1,500 |", ""]
    (RESULTS / f"{name}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()

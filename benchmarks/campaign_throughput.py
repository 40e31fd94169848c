"""Campaign throughput: end to end (CSV -> images with metadata in S3 -> manifests) vs pure inference.

    python benchmarks/campaign_throughput.py            # 20,000-image campaign, the issue's figures
    python benchmarks/campaign_throughput.py --quick    # 2,000 images, for a smoke run
    python benchmarks/campaign_throughput.py --labels-only   # just labelled against unlabelled
    python benchmarks/campaign_throughput.py --upsampler-only   # just 256 px (upsampled) against 64 px

Labelled against unlabelled: the same CSV rendered with the C2PA manifest and a visible corner label
(the AIGC and IPTC XMP are always written) and with neither, alternating, the median of each; and the
cost per image of signing and of labelling, measured alone at 64, 256 and 1024 px.

256 px against 64 px: the shipped starter model (generator and x4 upsampler, compiled here) renders the
same CSV at its native 64 px and at 256x256 (native -> learned x4) on ONNX Runtime, alternating.

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

from common import bench_s3, cpu_name, peak_rss_mb, run_child

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


def child_costs() -> dict:
    """Milliseconds per image of encoding (PNG, all XMP), the visible label, and C2PA signing."""
    import numpy as np
    from PIL import Image

    from gen_engine.config import Settings
    from gen_engine.render import imagemeta, labels, provenance

    signer = provenance.load_signer(Settings())
    rng = np.random.default_rng(0)
    out = {}
    for side in (64, 256, 1024):
        img = Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).resize((side, side))
        manifest = provenance.manifest_definition("x.png", producer="bench", model_id="m", image_id="r/x_0", seed=1,
                                                  prompt_sha256="0" * 64)
        aigc = labels.aigc_json(labels.aigc_label("bench", "r/x_0"))
        n = {64: 200, 256: 60, 1024: 10}[side]
        enc, lab, sig = [], [], []
        for _ in range(n):
            t0 = time.perf_counter()
            labelled, _ = labels.draw(img, "AI-generated", "corner")
            t1 = time.perf_counter()
            data = imagemeta.encode(labelled, "png", "a prompt", {"Seed": 1}, {"run_id": "r"}, aigc)
            t2 = time.perf_counter()
            provenance.sign(data, "png", manifest, signer)
            t3 = time.perf_counter()
            lab.append(t1 - t0)
            enc.append(t2 - t1)
            sig.append(t3 - t2)
        out[str(side)] = {"encode_ms": statistics.median(enc) * 1e3, "label_ms": statistics.median(lab) * 1e3,
                          "sign_ms": statistics.median(sig) * 1e3, "n": n}
    return out


def child_plan(csv_path: str) -> dict:
    from gen_engine.render.plan import prepare
    from gen_engine.resources import resources

    res = resources()
    t0 = time.perf_counter()
    plan = prepare(csv_path, "plan-1m", res.settings, res.storage)
    return {"rows": plan.stats["rows_read"], "shards": len(plan.shards), "seconds": time.perf_counter() - t0,
            "peak_rss_mb": peak_rss_mb()}


# --- driver ---------------------------------------------------------------------------------------------
def write_csv(path: Path, rows: int, count: int, size: str = "") -> Path:
    with open(path, "w") as f:
        f.write("prompt,count,asset_name,seed,size\n")
        colors = ["red", "blue", "green", "yellow", "orange", "purple", "pink", "cyan"]
        shapes = ["circle", "square", "triangle", "star", "hexagon", "diamond"]
        for i in range(rows):
            f.write(f"a {colors[i % 8]} {shapes[i // 8 % 6]} number {i},{count},asset-{i},{i * 16},{size}\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="2,000 images and a 100,000-row plan instead.")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--labels-only", action="store_true", help="Only labelled against unlabelled campaigns.")
    ap.add_argument("--upsampler-only", action="store_true", help="Only 256 px (upsampled) against 64 px.")
    ap.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        fn = {"pure": child_pure, "campaign": child_campaign, "plan": child_plan, "costs": child_costs}[a.child]
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
        out: dict = {"machine": {"cpus": os.cpu_count(), "cpu": cpu_name()}, "generator": "64 px, nf=32",
                     "backend_requested": a.backend}
        if not a.labels_only:
            out["upsampler"] = upscaled_vs_native(tdp, env)
            if a.upsampler_only:
                write_upsampler(out)
                return
        out["labels"] = labels_vs_unlabelled(tdp, env, str(model_dir), a.backend)
        if a.labels_only:
            write_labels(out)
            return
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
          f"CPU: {out['machine']['cpu']}.", "",
          "| measurement | images/s | ratio to pure inference | peak RSS (MB) | target |", "|---|---|---|---|---|",
          f"| pure inference (batch {out['pure']['batch']}, median of 3) | {out['pure']['images_per_s']:.1f} | 100% | "
          f"{out['pure']['peak_rss_mb']:.0f} | |",
          f"| campaign 2,000 images end to end | {c_small['images_per_s']:.1f} | {c_small['ratio_to_pure']:.1%} | "
          f"{c_small['peak_rss_mb']:.0f} | RSS < 1,500 |",
          f"| campaign {big:,} images end to end | {c_big['images_per_s']:.1f} | {c_big['ratio_to_pure']:.1%} | "
          f"{c_big['peak_rss_mb']:.0f} | >= 85%, RSS < 1,500 and flat |",
          f"| planning {out['plan']['rows']:,} rows | - | - | {out['plan']['peak_rss_mb']:.0f} | RSS < 1,500 |", "",
          *labels_table(out["labels"]), "", *upsampler_table(out["upsampler"])]
    (RESULTS / f"{name}.md").write_text("\n".join(md))
    print("\n".join(md))


LABELLED = {"GEN_RENDER_C2PA": "true", "GEN_RENDER_LABEL": "corner"}
UNLABELLED = {"GEN_RENDER_C2PA": "false", "GEN_RENDER_LABEL": "none"}


def labels_vs_unlabelled(tdp: Path, env: dict[str, str], model_dir: str, backend: str) -> dict:
    """The same campaign with and without the C2PA manifest and the visible label, alternating (noise on
    a shared machine hits both alike), at native 64 px and at 256 px; then the per-image costs."""
    out: dict = {"costs": run_child(__file__, "costs", env)}
    for size, n, repeats in (("", 2000, 2), ("256x256", 1000, 2)):
        csv_path = write_csv(tdp / f"labels{size or 'native'}.csv", n // 16, 16, size)
        runs: dict[str, list[float]] = {"unlabelled": [], "labelled": []}
        for i in range(repeats):
            for kind, extra in (("unlabelled", UNLABELLED), ("labelled", LABELLED)):
                print(f"{kind} campaign, {n} images {size or 'native 64 px'} ({i + 1}/{repeats}) ...", flush=True)
                r = run_child(__file__, "campaign", env | extra, str(csv_path), f"lab-{kind}-{size or 'n'}-{i}",
                              model_dir, backend)
                runs[kind].append(r["images_per_s"])
                print(f"  {r['images_per_s']:.1f} images/s", flush=True)
        med = {k: statistics.median(v) for k, v in runs.items()}
        out[size or "native"] = {"images": n, "runs": runs, "median": med,
                                 "ratio": med["labelled"] / med["unlabelled"]}
    return out


def labels_table(lab: dict) -> list[str]:
    rows = ["## Labelled against unlabelled campaigns", "",
            "Labelled: a signed C2PA manifest and a visible corner label on every image; unlabelled: neither "
            "(both write the IPTC and AIGC XMP). Images/s end to end (plan, render, finalize), median of "
            "alternating runs (each run in brackets).", "",
            "| campaign | unlabelled images/s | labelled images/s | ratio | target |", "|---|---|---|---|---|"]
    for key, what in (("native", "64 px (native)"), ("256x256", "256x256 (Lanczos from 64 px)")):
        r = lab[key]
        each = {k: ", ".join(f"{x:.1f}" for x in v) for k, v in r["runs"].items()}
        rows.append(f"| {r['images']:,} images, {what} | {r['median']['unlabelled']:.1f} ({each['unlabelled']}) | "
                    f"{r['median']['labelled']:.1f} ({each['labelled']}) | {r['ratio']:.1%} | >= 85% |")
    rows += ["", "| image side | PNG encode (ms) | visible label (ms) | C2PA signing (ms) |", "|---|---|---|---|"]
    for side, c in lab["costs"].items():
        rows.append(f"| {side} px | {c['encode_ms']:.2f} | {c['label_ms']:.2f} | {c['sign_ms']:.2f} |")
    return rows


def write_labels(out: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "campaign_labels.json").write_text(json.dumps(out, indent=1))
    md = "\n".join([f"# Labels and provenance: campaign throughput ({out['generator']}, {os.cpu_count()} CPUs)", "",
                    f"CPU: {out['machine']['cpu']}.", "",
                    "Command: `python benchmarks/campaign_throughput.py --labels-only`.", "",
                    *labels_table(out["labels"])[2:], ""])
    (RESULTS / "campaign_labels.md").write_text(md)
    print(md)



def upscaled_vs_native(tdp: Path, env: dict[str, str], n: int = 2000, repeats: int = 2,
                       source: Path = HERE.parent / "starter" / "model") -> dict:
    """The shipped starter model, compiled here, at 64 px and at 256x256 (native -> learned x4)."""
    import shutil

    from gen_engine.compile.onnx_export import compile_model

    model, bare = tdp / "starter-model", tdp / "starter-model-no-upsampler"
    shutil.copytree(source, model)
    shutil.copytree(source, bare, ignore=shutil.ignore_patterns("upsampler*"))
    report = compile_model(model)
    compile_model(bare)
    out: dict = {"images": n, "upsampler_parity": report["upsampler"]["parity"],
                 "runs": {"64": [], "256": [], "256 lanczos": []}}
    for i in range(repeats):
        for size, m in (("64", model), ("256", model), ("256 lanczos", bare)):
            csv_path = write_csv(tdp / f"up{size[:3]}.csv", n // 16, 16, "" if size == "64" else "256x256")
            print(f"starter model, {n} images at {size} px ({i + 1}/{repeats}) ...", flush=True)
            r = run_child(__file__, "campaign", env, str(csv_path), f"up{size[:3]}-{m.name[-4:]}-{i}", str(m),
                          "onnxruntime")
            out["runs"][size].append(r["images_per_s"])
            print(f"  {r['images_per_s']:.1f} images/s", flush=True)
    med = {k: statistics.median(v) for k, v in out["runs"].items()}
    out["median"], out["ratio"] = med, med["256"] / med["64"]
    ms = {k: 1000 / v for k, v in med.items()}
    out["ms_per_image"] = ms | {"upsampler": ms["256"] - ms["256 lanczos"],
                                "256 px files": ms["256 lanczos"] - ms["64"]}
    return out


def upsampler_table(u: dict) -> list[str]:
    each = {k: ", ".join(f"{x:.1f}" for x in v) for k, v in u["runs"].items()}
    return ["## 256 px (learned x4) against 64 px", "",
            "The shipped starter model on ONNX Runtime, the same CSV at native 64 px and at 256x256; images/s end "
            "to end (plan, render, upsample, encode, sign, upload, finalize), median of alternating runs.", "",
            "| campaign | images/s | runs |", "|---|---|---|",
            f"| {u['images']:,} images at 64 px (native) | {u['median']['64']:.1f} | {each['64']} |",
            f"| {u['images']:,} images at 256 px (native -> x4) | {u['median']['256']:.1f} | {each['256']} |",
            f"| ratio | {u['ratio']:.1%} | target >= 50% |",
            f"| (profile) {u['images']:,} images at 256 px by Lanczos, no upsampler | "
            f"{u['median']['256 lanczos']:.1f} | {each['256 lanczos']} |", "",
            f"Where the time per image goes (from the medians): {u['ms_per_image']['64']:.1f} ms at 64 px; 256 px "
            f"files (resize, PNG, signing, upload of the larger file) add {u['ms_per_image']['256 px files']:.1f} ms; "
            f"the upsampler adds {u['ms_per_image']['upsampler']:.1f} ms. Every stage shares the 2 cores, the "
            "embedded S3 server included."]


def write_upsampler(out: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "campaign_upsampler.json").write_text(json.dumps(out, indent=1))
    md = "\n".join([f"# Upsampled campaigns: throughput ({os.cpu_count()} CPUs)", "", f"CPU: {out['machine']['cpu']}.",
                    "", "Command: `python benchmarks/campaign_throughput.py --upsampler-only`.", "",
                    *upsampler_table(out["upsampler"])[2:], ""])
    (RESULTS / "campaign_upsampler.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()

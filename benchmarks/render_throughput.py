"""Render throughput of every available backend, against this machine's measured GEMM peak.

    python benchmarks/render_throughput.py [--resolution 64] [--nf 32] [--seconds 8] [--repeats 3]

For the 64 px generator with nf = 32 (random weights), each backend (torch eager, onnxruntime, and
tensorrt where present) renders batches of 1, 8, 32 and 128 in its own child process: images/s,
p50/p95 batch latency, peak RSS. FLOPs per image are counted (torch's FlopCounterMode) for the graph
each backend executes: the eager generator for torch, the compiled (folded, `gen_engine.compile.fold`)
graph for onnxruntime and tensorrt. The machine's float32 GEMM GFLOP/s is measured in the same run (the
best of one probe before the rounds and one after each), so every row shows the fraction of the
hardware peak it reaches.

Precision: the shipped starter model (64 px, nf = 16, trained) compiled twice, fp32 and int8
(`gen_engine.compile.quantize`, calibrated on its dataset's held-out captions), rendered by the onnxruntime
backend in alternating child processes at the same batch sizes: images/s side by side, the int8/fp32
ratio at batch 32 (target >= 1.6x), and the compile-time quality gate's figures (mean PSNR against the
fp32 images on the parity set, Frechet distance on the held-out split in the starter data's evaluation
encoder's space, both bounds). The starter data and its evaluation encoder are built once under .local/.
Writes benchmarks/results/render_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCHES = (1, 8, 32, 128)


def gemm_gflops(seconds: float = 4.0, n: int = 2048) -> float:
    """float32 GEMM throughput with all cores (torch's BLAS): the CPU's practical peak."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    rates = []
    for _ in range(3):
        t0, k = time.perf_counter(), 0
        while time.perf_counter() - t0 < seconds / 3:
            torch.mm(a, b)
            k += 1
        rates.append(2 * n**3 * k / (time.perf_counter() - t0) / 1e9)
    return statistics.median(rates)


def flops_per_image(model_dir: Path, folded: bool) -> float:
    """Counted FLOPs per image of the eager generator or of its compiled (folded) twin."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from gen_engine.compile.fold import FoldedGenerator
    from gen_engine.models.artifact import load_generator

    g, _ = load_generator(model_dir)
    net = FoldedGenerator(g) if folded else g
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        net(torch.zeros(8, g.cfg.z_dim), torch.zeros(8, g.cfg.text_dim))
    return fc.get_total_flops() / 8


def child(model_dir: str, backend: str, seconds: str) -> dict:
    import numpy as np

    from gen_engine.models.noise import seed_noise
    from gen_engine.runtime import load_backend

    be = load_backend(backend, Path(model_dir))
    if be.name != backend:
        return {"available": False, "reason": f"fell back to {be.name}"}
    rows = {}
    rng = np.random.default_rng(0)
    for b in BATCHES:
        z = np.stack([seed_noise(s, be.z_dim) for s in range(b)])
        text = rng.standard_normal((b, 384)).astype(np.float32)
        be.render(z, text)  # warm-up
        lat = []
        t_end = time.perf_counter() + float(seconds)
        while time.perf_counter() < t_end or len(lat) < 3:
            t0 = time.perf_counter()
            be.render(z, text)
            lat.append(time.perf_counter() - t0)
        rows[b] = {"images_per_s": b * len(lat) / sum(lat), "p50_ms": 1e3 * statistics.median(lat),
                   "p95_ms": 1e3 * sorted(lat)[int(0.95 * (len(lat) - 1))], "batches": len(lat)}
    return {"available": True, "rows": rows, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "detail": getattr(be, "provider", ""), "precision": be.precision}


def measure(model_dir: Path, backend: str, seconds: float) -> dict:
    """One child process measuring one backend on one model folder."""
    res = subprocess.run([sys.executable, __file__, "--child", str(model_dir), backend, str(seconds)],
                         capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else {
        "available": False, "reason": res.stderr[-300:]}


def median_rows(results: list[dict]) -> dict:
    """The rounds of one backend merged: per batch size, the round with the median images/s."""
    merged = dict(results[0])
    if not merged["available"]:
        return merged
    merged["peak_rss_mb"] = max(r["peak_rss_mb"] for r in results)
    merged["rows"] = {}
    for b in results[0]["rows"]:
        ranked = sorted((r["rows"][b] for r in results), key=lambda row: row["images_per_s"])
        merged["rows"][b] = {**ranked[len(ranked) // 2], "rounds_images_per_s": [r["rows"][b]["images_per_s"]
                                                                                for r in results]}
    return merged


def starter_gate(model_dir: Path):  # -> GateData
    """The int8 gate's held-out data for the starter model: the starter dataset's held-out split (built
    once in .local/starter/data, as `genengine models train-starter` does) and its evaluation encoder
    (trained once, cached in .local/bench/eval)."""
    from gen_engine.datasets.curated import TrainData
    from gen_engine.datasets.starter import build
    from gen_engine.evaluation import int8_gate_data
    from gen_engine.evaluation.encoder import cached_encoder
    from gen_engine.text import model_encoder_name

    meta = json.loads((model_dir / "model.json").read_text())
    data_dir = HERE.parent / ".local" / "starter" / "data"
    if not (data_dir / "card.json").exists():
        print("building the starter data ...", flush=True)
        build(data_dir)
    side, space = meta["architecture"]["resolution"], model_encoder_name(meta)
    train, held = (TrainData.from_imagefolder(data_dir, side, split=s, text_encoder=space) for s in ("train", "val"))
    enc, _ = cached_encoder(train, HERE.parent / ".local" / "bench" / "eval")
    return int8_gate_data(held, enc, meta, 500, "the starter data's held-out split")


def precision_rows(td: Path, seconds: float, repeats: int) -> dict:
    """fp32 and int8 engines of the starter model, measured in alternating processes, with the gate."""
    from gen_engine.compile.onnx_export import compile_model
    from gen_engine.compile.quantize import FD_MAX_INCREASE, PSNR_MIN_DB

    dirs = {p: Path(shutil.copytree(HERE.parent / "starter" / "model", td / f"starter-{p}")) for p in ("fp32", "int8")}
    compile_model(dirs["fp32"])
    # Kept whatever the gate says (loose bounds), so that its speed is measured too; the verdict at the
    # real bounds is taken from the same figures.
    q = compile_model(dirs["int8"], precision="int8", gate=starter_gate(dirs["int8"]),
                      int8_bounds={"psnr_min": 0.0, "fd_max": 1e9})["int8"]
    q |= {"psnr_db_bound": PSNR_MIN_DB, "fd_max_increase": FD_MAX_INCREASE}  # the real bounds, not the loose ones
    q["passes_psnr"] = q["psnr_db_mean"] >= PSNR_MIN_DB
    q["passes_fd"] = q["fd_int8"] <= q["fd_fp32"] * (1 + FD_MAX_INCREASE)
    q["accepted_at_real_bounds"] = q["passes_psnr"] and q["passes_fd"]
    runs: dict[str, list[dict]] = {"fp32": [], "int8": []}
    for rnd in range(repeats):
        for p, results in runs.items():
            results.append(measure(dirs[p], "onnxruntime", seconds))
            print(f"round {rnd + 1}/{repeats} starter model onnxruntime {p}: done", flush=True)
    rows = {p: median_rows(r) for p, r in runs.items()}
    assert rows["int8"]["precision"] == "int8" and rows["fp32"]["precision"] == "fp32", rows
    per_round = [a / b for a, b in zip(rows["int8"]["rows"]["32"]["rounds_images_per_s"],
                                       rows["fp32"]["rows"]["32"]["rounds_images_per_s"], strict=True)]
    return {"model": "starter/model (64 px, nf=16, trained)", "gate": q, "rows": rows,
            "int8_over_fp32_batch32": statistics.median(per_round), "int8_over_fp32_batch32_rounds": per_round}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--nf", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0, help="Measuring time per batch size.")
    ap.add_argument("--repeats", type=int, default=3, help="Rounds over all backends; rows report the median.")
    ap.add_argument("--quick", action="store_true", help="2 s per batch size, one round.")
    ap.add_argument("--no-int8", action="store_true", help="Skip the fp32 / int8 comparison of the starter model.")
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return

    import torch

    from gen_engine.compile.onnx_export import compile_model
    from gen_engine.models.artifact import save_model
    from gen_engine.models.gan import GANConfig, Generator

    seconds = 2.0 if a.quick else a.seconds
    a.repeats = 1 if a.quick else max(1, a.repeats)
    with tempfile.TemporaryDirectory() as td:
        torch.manual_seed(0)
        model_dir = save_model(Path(td) / "model", Generator(GANConfig(resolution=a.resolution, nf=a.nf)),
                               {"name": "generator"})
        report = compile_model(model_dir)
        eager = flops_per_image(model_dir, folded=False)
        compiled = flops_per_image(model_dir, folded=report["onnx"]["graph"] == "folded")
        peak = gemm_gflops()
        out = {"generator": f"{a.resolution} px, nf={a.nf}", "cpus": len(os.sched_getaffinity(0)),
               "gflop_per_image": {"torch": eager / 1e9, "onnxruntime": compiled / 1e9, "tensorrt": compiled / 1e9},
               "onnx_graph": report["onnx"]["graph"], "gemm_peak_gflops": peak,
               "parity": report["onnx"]["parity"], "tensorrt": report["tensorrt"], "backends": {}}
        print(f"{eager / 1e9:.2f} GFLOP per image eager, {compiled / 1e9:.2f} compiled ({report['onnx']['graph']} "
              f"graph); GEMM peak {peak:.1f} GFLOP/s", flush=True)
        # Rounds interleave the backends, so a noisy spell on the machine hits all of them alike; every
        # row reports the round with the median images/s.
        runs: dict[str, list[dict]] = {b: [] for b in ("torch", "onnxruntime", "tensorrt")}
        for rnd in range(a.repeats):
            for backend, results in runs.items():
                if results and not results[0]["available"]:
                    continue
                results.append(r := measure(model_dir, backend, seconds))
                print(f"round {rnd + 1}/{a.repeats}", backend,
                      "unavailable: " + r.get("reason", "") if not r["available"] else "done", flush=True)
            # The peak is measured again each round and the best kept: a neighbour's burst during one
            # probe must not make the CPU look slower than the engines it runs.
            out["gemm_peak_gflops"] = peak = max(peak, gemm_gflops())
        for backend, results in runs.items():
            out["backends"][backend] = median_rows(results)
        out["precision"] = precision_rows(Path(td), seconds, a.repeats) if not a.no_int8 else None
    md = [f"# Render throughput ({out['generator']}, {out['cpus']} CPUs)", "",
          f"GFLOP per image (counted): {eager / 1e9:.2f} eager (torch), {compiled / 1e9:.2f} in the compiled "
          f"{out['onnx_graph']} ONNX graph (onnxruntime, tensorrt); measured float32 GEMM peak {peak:.1f} GFLOP/s; "
          f"ONNX parity max abs error {out['parity']['max_abs_error']:.1e}.", "",
          "| backend | batch | images/s | p50 ms | p95 ms | GFLOP/s | % of GEMM peak | peak RSS MB |",
          "|---|---|---|---|---|---|---|---|"]
    for name, r in out["backends"].items():
        if not r["available"]:
            md.append(f"| {name} | - | unavailable: {r.get('reason', '')[:60]} | | | | | |")
            continue
        for b, row in r["rows"].items():
            gf = row["images_per_s"] * out["gflop_per_image"][name]
            row["gflops"], row["fraction_of_peak"] = gf, gf / peak
            md.append(f"| {name} | {b} | {row['images_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                      f"{gf:.1f} | {gf / peak:.0%} | {r['peak_rss_mb']:.0f} |")
    t, o = out["backends"]["torch"], out["backends"]["onnxruntime"]
    if t["available"] and o["available"]:
        ratio = o["rows"]["32"]["images_per_s"] / t["rows"]["32"]["images_per_s"]
        per_round = [x / y for x, y in zip(o["rows"]["32"]["rounds_images_per_s"],
                                            t["rows"]["32"]["rounds_images_per_s"], strict=True)]
        out["ort_over_torch_batch32"], out["ort_over_torch_batch32_rounds"] = ratio, per_round
        md += ["", f"onnxruntime / torch eager at batch 32: {ratio:.2f}x on the median rows (per round: "
               f"{', '.join(f'{x:.2f}x' for x in per_round)}; target >= 2.5x); onnxruntime at batch 32 "
               f"reaches {o['rows']['32']['fraction_of_peak']:.0%} of the GEMM peak (target >= 70%)."]
    if p := out["precision"]:
        q, rows = p["gate"], p["rows"]
        md += ["", f"## Precision: fp32 and int8 engines of {p['model']}, onnxruntime", "",
               "| precision | batch | images/s | p50 ms | p95 ms | peak RSS MB |", "|---|---|---|---|---|---|"]
        for name, r in rows.items():
            md += [f"| {name} | {b} | {row['images_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                   f"{r['peak_rss_mb']:.0f} |" for b, row in r["rows"].items()]
        ratio = p["int8_over_fp32_batch32"]
        md += ["", f"int8 / fp32 at batch 32: **{ratio:.2f}x** (median of the rounds: "
               f"{', '.join(f'{x:.2f}x' for x in p['int8_over_fp32_batch32_rounds'])}; target >= 1.6x: "
               f"{'met' if ratio >= 1.6 else 'MISSED'}). Weights {q['weights']}, activations {q['activations']}, "
               f"calibrated on {q['calibration']}.", "",
               "| quality gate (compile time) | fp32 | int8 | bound | |", "|---|---|---|---|---|",
               f"| mean PSNR against the fp32 images, {q['parity_pairs']} parity pairs (min {q['psnr_db_min']:.1f}) "
               f"| - | {q['psnr_db_mean']:.1f} dB | >= {q['psnr_db_bound']:g} dB "
               f"| {'passes' if q['passes_psnr'] else 'FAILS'} |",
               f"| Frechet distance, {q['fd_data']} | {q['fd_fp32']:.4f} | {q['fd_int8']:.4f} "
               f"({q['fd_increase']:+.1%}) | <= fp32 + {q['fd_max_increase']:.0%} "
               f"| {'passes' if q['passes_fd'] else 'FAILS'} |", "",
               "Gate verdict at the real bounds: "
               + ("int8 kept." if q["accepted_at_real_bounds"] else "int8 refused, fp32 serves.")]
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "render_throughput.json").write_text(json.dumps(out, indent=1))
    (HERE / "results" / "render_throughput.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

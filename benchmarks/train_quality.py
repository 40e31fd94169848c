"""Training quality on the CPU: does the generator learn colours and shapes within 30 minutes?

    python benchmarks/train_quality.py [--minutes 30] [--config configs/shapes32.yaml]

1. 10,000 synthetic captioned shapes at 32 px (seed 0) for training, 1,000 more (seed 1) held out.
2. Train with the config until its step count or the time budget (training only; evaluation after).
3. On the held-out captions: colour and shape accuracy of generated images (attribute classifiers
   trained on real images), R-precision (true caption vs 99 others), Frechet distance and cosine in
   the evaluation encoder's space; the same metrics on the real held-out images as a reference.
4. Training throughput (images/s) at 32 and 64 px, with the config's nf and with nf = 32.
Writes benchmarks/results/train_quality.{json,md} and the final sample grid. Targets (issue): colour
>= 90%, shape >= 60%, R-precision >= 0.5, in at most 30 minutes on this 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

    from gen_engine.training.loop import TrainConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def throughput(base: TrainConfig, resolution: int, nf: int, seconds: float = 20.0) -> float:
    """Training images/s of ``base``'s settings (batch, bf16, lazy MA-GP) at another size and width."""
    import torch

    from gen_engine.training.loop import TrainData, Trainer

    n = 256
    data = TrainData(torch.randint(0, 255, (n, 3, resolution, resolution), dtype=torch.uint8),
                     torch.nn.functional.normalize(torch.randn(n, 384), dim=1), ["x"] * n, "random")
    cfg = base.model_copy(update={"resolution": resolution, "nf": nf, "steps": 10**6, "eval_every": 10**6})
    tr = Trainer(cfg, data, REPO / ".local" / "bench" / "throughput")  # nothing is written: no eval step
    for _ in range(cfg.magp_every):
        tr.train_step()
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or k % cfg.magp_every:
        tr.train_step()
        k += 1
    return k * cfg.batch_size / (time.perf_counter() - t0)


class RealImages:
    """A stand-in "backend" that returns the held-out images themselves, batch after batch, in order."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images, self.pos = images.permute(0, 2, 3, 1).numpy(), 0

    def __call__(self, z: np.ndarray, text: np.ndarray) -> np.ndarray:
        out = self.images[self.pos : self.pos + len(z)]
        self.pos += len(z)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="Training time budget.")
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "shapes32.yaml")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--eval-only", action="store_true", help="Evaluate the last run again (no training).")
    a = ap.parse_args()

    from gen_engine.datasets.synth import write_imagefolder
    from gen_engine.evaluation import append_metrics, evaluate, train_encoder
    from gen_engine.runtime import TorchBackend
    from gen_engine.training.loop import TrainConfig, TrainData, Trainer

    work = REPO / ".local" / "bench" / "train_quality"
    cfg = TrainConfig.from_yaml(a.config)
    for name, n, seed in (("train", a.n, 0), ("heldout", 1000, 1)):
        if not (work / name / "metadata.jsonl").exists():
            write_imagefolder(work / name, n, cfg.resolution, seed)
    train = TrainData.from_imagefolder(work / "train", cfg.resolution)
    held = TrainData.from_imagefolder(work / "heldout", cfg.resolution)

    print("evaluation encoder ...", flush=True)
    t0 = time.monotonic()
    labels, vocab = train.labels()
    enc = train_encoder(train.images, train.text, labels)
    held_labels, _ = held.labels(vocab)
    enc_s = time.monotonic() - t0

    run = work / "run"
    if a.eval_only:
        summary = json.loads((run / "train_summary.json").read_text())
        trainer = Trainer(cfg, train, run)
        trainer.resume()
        model_dir = run / "model"
    else:
        shutil.rmtree(run, ignore_errors=True)
        trainer = Trainer(cfg, train, run)
        budget = a.minutes * 60
        t0 = time.monotonic()
        print(f"training {cfg.steps} steps or {a.minutes:.0f} minutes ...", flush=True)
        trainer.train(progress=True, deadline=t0 + budget)  # samples, loss curve, checkpoint every eval_every
        summary = {"steps": trainer.step, "train_seconds": time.monotonic() - t0}
        (run / "train_summary.json").write_text(json.dumps(summary))
        model_dir = trainer.export()
        trainer.write_samples()
    train_s = summary["train_seconds"]

    backend = TorchBackend(model_dir, device="cpu")
    gen = evaluate(backend.render, held, enc, held_labels)
    real = evaluate(RealImages(held.images), held, enc, held_labels)  # the evaluator's ceiling
    append_metrics(run / "metrics.jsonl", trainer.step, {"split": "heldout", **gen})
    tp = {f"{r}px_nf{nf}": throughput(cfg, r, nf) for r in (32, 64) for nf in sorted({cfg.nf, 32})}
    out = {"config": cfg.model_dump(), "steps": trainer.step, "train_seconds": train_s,
           "images_seen": trainer.step * cfg.batch_size, "encoder_seconds": enc_s, "generated": gen,
           "real_reference": real, "train_images_per_s": tp,
           "targets": {"color_acc": 0.9, "shape_acc": 0.6, "r_precision": 0.5, "minutes": 30}}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_quality.json").write_text(json.dumps(out, indent=1))
    grid = sorted(run.glob("samples_*.png"))[-1]
    shutil.copy(grid, HERE / "results" / "train_quality_samples.png")
    met = lambda v, t: "met" if v >= t else "MISSED"  # noqa: E731
    md = [f"# Training quality ({cfg.name}: {cfg.resolution} px, nf={cfg.nf}, batch {cfg.batch_size})", "",
          f"{trainer.step} steps ({trainer.step * cfg.batch_size:,} images) in {train_s / 60:.1f} min of training.",
          "", "| metric | generated | real held-out | target |", "|---|---|---|---|",
          f"| colour accuracy | {gen.get('color_acc', 0):.1%} | {real.get('color_acc', 0):.1%} | >= 90% "
          f"({met(gen.get('color_acc', 0), 0.9)}) |",
          f"| shape accuracy | {gen.get('shape_acc', 0):.1%} | {real.get('shape_acc', 0):.1%} | >= 60% "
          f"({met(gen.get('shape_acc', 0), 0.6)}) |",
          f"| R-precision (1 of 100) | {gen['r_precision']:.3f} | {real['r_precision']:.3f} | >= 0.5 "
          f"({met(gen['r_precision'], 0.5)}) |",
          f"| Frechet distance (eval encoder) | {gen['fd']:.3f} | {real['fd']:.3f} | |",
          f"| image-text cosine | {gen['cosine']:.3f} | {real['cosine']:.3f} | |", "",
          f"| training throughput (batch {cfg.batch_size}, bf16 {trainer.autocast}, MA-GP every "
          f"{cfg.magp_every}) | images/s |", "|---|---|",
          *[f"| {k} | {v:.1f} |" for k, v in tp.items()], "",
          "Sample grid: benchmarks/results/train_quality_samples.png"]
    (HERE / "results" / "train_quality.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

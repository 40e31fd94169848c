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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from gen_engine.training.loop import TrainConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def throughput(base: TrainConfig, resolution: int, nf: int, seconds: float = 20.0) -> float:
    """Training images/s of ``base``'s settings (batch, bf16, lazy MA-GP, guide) at another size and width."""
    import torch

    from gen_engine.training.loop import TrainData, Trainer

    n = 256
    data = TrainData(torch.randint(0, 255, (n, 3, resolution, resolution), dtype=torch.uint8),
                     torch.nn.functional.normalize(torch.randn(n, 384), dim=1), ["x"] * n, "random")
    # One guide step: its per-step cost is what counts here, not its quality.
    cfg = base.model_copy(update={"resolution": resolution, "nf": nf, "steps": 10**6, "eval_every": 10**6,
                                  "guide_steps": 1})
    tr = Trainer(cfg, data, REPO / ".local" / "bench" / "throughput")  # nothing is written: no eval step
    for _ in range(cfg.magp_every):
        tr.train_step()
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or k % cfg.magp_every:
        tr.train_step()
        k += 1
    return k * cfg.batch_size / (time.perf_counter() - t0)


def second_judge(images: torch.Tensor, labels: dict[str, torch.Tensor], steps: int = 1000, seed: int = 2) -> Any:
    """A colour/shape classifier of another design than the evaluation encoder (VGG-like: 3x3 convs,
    batch norm, max pooling; labels only, no captions), as a cross-check: if the generator had learnt
    to fool the evaluation encoder's architecture (via the guide, its sibling) rather than to draw, the two
    judges would disagree."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(a: int, b: int) -> list[nn.Module]:
        return [nn.Conv2d(a, b, 3, 1, 1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]

    body = nn.Sequential(*block(3, 32), *block(32, 64), *block(64, 128), nn.AdaptiveMaxPool2d(1), nn.Flatten())
    heads = nn.ModuleDict({k: nn.Linear(128, int(v.max()) + 1) for k, v in labels.items()})
    net = nn.ModuleDict({"body": body, "heads": heads})
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(images), (128,), generator=g)
        h = body(images[idx].float() / 127.5 - 1)
        loss = sum(torch.nn.functional.cross_entropy(heads[k](h), v[idx]) for k, v in labels.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    net.eval()

    @torch.no_grad()
    def accuracy(imgs: torch.Tensor, truth: dict[str, torch.Tensor]) -> dict[str, float]:
        h = torch.cat([body(imgs[i : i + 256].float() / 127.5 - 1) for i in range(0, len(imgs), 256)])
        return {f"{k}_acc": float((heads[k](h).argmax(1) == truth[k][: len(imgs)]).float().mean()) for k in truth}

    return accuracy


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
    from gen_engine.evaluation import append_metrics, evaluate, render_heldout, train_encoder
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
        budget = a.minutes * 60
        t0 = time.monotonic()  # the guide encoder (if configured) trains inside the budget
        trainer = Trainer(cfg, train, run)
        print(f"training {cfg.steps} steps or {a.minutes:.0f} minutes ...", flush=True)
        trainer.train(progress=True, deadline=t0 + budget)  # samples, loss curve, checkpoint every eval_every
        summary = {"steps": trainer.step, "train_seconds": time.monotonic() - t0,
                   "guide_seconds": trainer.guide_seconds}
        (run / "train_summary.json").write_text(json.dumps(summary))
        model_dir = trainer.export()
        trainer.write_samples()
    train_s = summary["train_seconds"]

    backend = TorchBackend(model_dir, device="cpu")
    gen = evaluate(backend.render, held, enc, held_labels)
    real = evaluate(RealImages(held.images), held, enc, held_labels)  # the evaluator's ceiling
    print("second judge ...", flush=True)
    judge = second_judge(train.images, labels)
    judge2 = {"generated": judge(render_heldout(backend.render, held, len(held)), held_labels),
              "real": judge(held.images, held_labels)}
    append_metrics(run / "metrics.jsonl", trainer.step, {"split": "heldout", **gen})
    tp = {f"{r}px_nf{nf}": throughput(cfg, r, nf) for r in (32, 64) for nf in sorted({cfg.nf, 32})}
    out = {"config": cfg.model_dump(), "steps": trainer.step, "train_seconds": train_s,
           "images_seen": trainer.step * cfg.batch_size, "encoder_seconds": enc_s, "generated": gen,
           "real_reference": real, "second_judge": judge2, "train_images_per_s": tp,
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
          f"| image-text cosine | {gen['cosine']:.3f} | {real['cosine']:.3f} | |",
          f"| colour accuracy, second judge | {judge2['generated']['color_acc']:.1%} | "
          f"{judge2['real']['color_acc']:.1%} | cross-check |",
          f"| shape accuracy, second judge | {judge2['generated']['shape_acc']:.1%} | "
          f"{judge2['real']['shape_acc']:.1%} | cross-check |", "",
          f"Guide encoder trained in {summary.get('guide_seconds', 0):.0f} s, inside the training budget.", "",
          f"| training throughput (batch {cfg.batch_size}, bf16 {trainer.autocast}, MA-GP every "
          f"{cfg.magp_every}) | images/s |", "|---|---|",
          *[f"| {k} | {v:.1f} |" for k, v in tp.items()], "",
          "Sample grid: benchmarks/results/train_quality_samples.png"]
    (HERE / "results" / "train_quality.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

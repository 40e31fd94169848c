"""Training quality on the CPU: does the generator learn colours and shapes within 30 minutes?

    python benchmarks/train_quality.py [--minutes 30] [--config configs/shapes32.yaml]
    python benchmarks/train_quality.py --data starter [--minutes 45] [--ship]   # real artwork, see `starter`

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
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import cpu_name

if TYPE_CHECKING:
    import numpy as np
    import torch

    from gen_engine.training.config import TrainConfig

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def throughput(base: TrainConfig, resolution: int, nf: int, seconds: float = 20.0) -> float:
    """Training images/s of ``base``'s settings (batch, bf16, lazy MA-GP, guide) at another size and width."""
    import torch

    from gen_engine.datasets.curated import TrainData
    from gen_engine.training.trainer import Trainer

    n = 256
    data = TrainData(torch.randint(0, 255, (n, 3, resolution, resolution), dtype=torch.uint8),
                     torch.nn.functional.normalize(torch.randn(n, 384), dim=1), ["x"] * n, "random",
                     text_encoder=base.text_encoder)
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


def starter(a: argparse.Namespace) -> None:
    """Real artwork: the starter dataset (~3,800 emoji of two sets, 64 px), trained for the config's steps or
    the time budget (45 minutes), evaluated on its held-out 5% (by content hash):

    - R-precision (true caption among 100), overall and per caption language;
    - Frechet distance in the evaluation encoder's space, against the real-image ceiling: the distance
      between the held-out real images and as many real training images (two samples of the same data);
    - the colour judge (`gen_engine.evaluation.colour`) on held-out captions that colour their object;
    - seed diversity (`gen_engine.evaluation.diversity`): mean pairwise distance of 8 seeds' images
      against the mean distance between different real images of one category; target ratio >= 0.25;
    - attribute binding: the colour judge on every colour of each caption family of the training data
      ("<colour> heart", "<colour> circle", "<colour> square", ...), one image per caption and seed 0..3.
    The run is the one `genengine models train-starter` makes (.local/starter/run): with --ship and the
    run at its full step count, the result is the shipped model (starter/model/).
    """
    import numpy as np

    from gen_engine.bootstrap import ship, starter_trainer
    from gen_engine.datasets.curated import TrainData
    from gen_engine.evaluation import encode, evaluate, frechet_distance
    from gen_engine.evaluation.colour import colour_judge, object_colour
    from gen_engine.models.noise import seed_noise
    from gen_engine.runtime import TorchBackend
    from gen_engine.text import shared_encoder
    from gen_engine.training.encoder import train_encoder

    work = REPO / ".local" / "starter"
    config = a.config or REPO / "configs" / "starter64.yaml"
    t0 = time.monotonic()
    if not a.eval_only and (work / "run").exists():
        shutil.rmtree(work / "run")
    trainer, data_dir = starter_trainer(work, config)
    cfg = trainer.cfg
    if not a.eval_only:
        print(f"training {cfg.steps} steps or {a.minutes:.0f} minutes ...", flush=True)
        trainer.train(progress=True, deadline=t0 + a.minutes * 60)
        summary = {"steps": trainer.step, "train_seconds": time.monotonic() - t0,
                   "guide_seconds": trainer.guide_seconds}
        (work / "run" / "train_summary.json").write_text(json.dumps(summary))
    summary = json.loads((work / "run" / "train_summary.json").read_text())
    model_dir = ship(trainer, data_dir, REPO / "starter" / "model") if a.ship and trainer.step == cfg.steps \
        else trainer.export()
    train, held = trainer.data, TrainData.from_imagefolder(data_dir, cfg.resolution, split="val",
                                                           text_encoder=cfg.text_encoder)

    print("evaluation encoder ...", flush=True)
    te = time.monotonic()
    enc = train_encoder(train.images, train.text, steps=a.encoder_steps)
    enc_s = time.monotonic() - te
    backend = TorchBackend(model_dir, device="cpu")
    gen = evaluate(backend.render, held, enc, n=len(held), diversity=True)
    real = evaluate(RealImages(held.images), held, enc, n=len(held))
    # The FD ceiling: two real samples of the same data (held-out vs as many training images, one per image).
    first = {}
    for i, fn in enumerate(train.meta["file_name"]):
        first.setdefault(fn, i)
    pick = np.random.default_rng(0).choice(sorted(first.values()), size=min(len(held), len(first)), replace=False)
    fd_ceiling = frechet_distance(encode(enc, held.images), encode(enc, train.images[pick]))
    # Attribute binding: every colour of each family that appears in training captions ("<colour> heart").
    families: dict[str, set[str]] = {}
    for cap in set(train.captions):
        colour = object_colour(cap)
        if colour and cap.isascii() and len(cap.split()) == 2 and cap.split()[0] == colour:
            families.setdefault(cap.split()[1], set()).add(cap)
    probes = sorted(c for f in families.values() if len(f) >= 3 for c in f)
    emb = shared_encoder(cfg.text_encoder).encode(probes, cache=False)
    seeds = 4
    z = np.stack([seed_noise(s, 100) for s in range(seeds)] * len(probes))
    imgs = backend.render(z, np.repeat(emb, seeds, axis=0))
    binding = colour_judge(imgs, [p for p in probes for _ in range(seeds)])
    tp = throughput(cfg, cfg.resolution, cfg.nf)
    out = {"data": "starter", "cpu": cpu_name(), "config": cfg.model_dump(), "steps": trainer.step,
           "train_seconds": summary["train_seconds"], "guide_seconds": summary["guide_seconds"],
           "images_seen": trainer.step * cfg.batch_size, "train_rows": len(train), "heldout_rows": len(held),
           "encoder_seconds": enc_s, "generated": gen, "real_reference": real, "fd_real_ceiling": fd_ceiling,
           "binding": {"families": {k: sorted(v) for k, v in families.items() if len(v) >= 3}, **binding},
           "train_images_per_s": tp, "bf16": trainer.autocast, "bf16_reason": trainer.precision_reason,
           "shipped": bool(a.ship and trainer.step == cfg.steps),
           "targets": {"r_precision": 0.5, "color_judge": 0.8, "seed_diversity_ratio": 0.25, "minutes": 45}}
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / "train_quality_starter.json").write_text(json.dumps(out, indent=1, default=float))
    shutil.copy(sorted((work / "run").glob("samples_*.png"))[-1], res / "train_quality_starter_samples.png")
    met = lambda v, t: "met" if v >= t else "MISSED"  # noqa: E731
    langs = sorted(k.removeprefix("r_precision_") for k in gen if k.startswith("r_precision_"))
    md = [f"# Training quality on real artwork ({cfg.name}: {cfg.resolution} px, nf={cfg.nf}, batch {cfg.batch_size})",
          "", f"CPU: {out['cpu']}; bf16 {trainer.autocast} ({trainer.precision_reason}).", "",
          f"{trainer.step} steps ({trainer.step * cfg.batch_size:,} images) in {summary['train_seconds'] / 60:.1f} min "
          f"(data loading and the {summary['guide_seconds']:.0f} s guide encoder included); {len(train):,} training "
          f"rows, {len(held):,} held-out rows.", "",
          "| metric (held-out) | generated | real held-out | target |", "|---|---|---|---|",
          f"| R-precision (1 of 100) | {gen['r_precision']:.3f} | {real['r_precision']:.3f} | >= 0.5 "
          f"({met(gen['r_precision'], 0.5)}) |",
          *[f"| R-precision, {lang} captions | {gen[f'r_precision_{lang}']:.3f} | "
            f"{real.get(f'r_precision_{lang}', float('nan')):.3f} | |" for lang in langs],
          f"| Frechet distance (eval encoder) | {gen['fd']:.3f} | {fd_ceiling:.3f} (real vs real) | |",
          f"| colour judge ({gen.get('color_judged', 0)} captions) | {gen.get('color_judge', float('nan')):.1%} | "
          f"{real.get('color_judge', float('nan')):.1%} | >= 80% ({met(gen.get('color_judge', 0), 0.8)}) |",
          f"| seed spread / same-category real spread | {gen['seed_spread']:.3f} / {gen['category_spread_real']:.3f} "
          f"= {gen['seed_diversity_ratio']:.2f} | | >= 0.25 ({met(gen['seed_diversity_ratio'], 0.25)}) |",
          f"| image-text cosine | {gen['cosine']:.3f} | {real['cosine']:.3f} | |", "",
          f"Attribute binding (training caption families {', '.join(sorted(out['binding']['families']))}; "
          f"{binding['color_judged']} images, {seeds} seeds each): colour judge {binding['color_judge']:.1%}.", "",
          f"Training throughput at {cfg.resolution} px: {tp:.1f} images/s. Evaluation encoder: {enc_s:.0f} s.", "",
          "Sample grid (held-out captions): benchmarks/results/train_quality_starter_samples.png"]
    (res / "train_quality_starter.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", choices=("shapes", "starter"), default="shapes")
    ap.add_argument("--minutes", type=float, default=None, help="Training time budget (30 shapes, 45 starter).")
    ap.add_argument("--config", type=Path, default=None, help="Default: configs/shapes32.yaml / starter64.yaml.")
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--eval-only", action="store_true", help="Evaluate the last run again (no training).")
    ap.add_argument("--encoder-steps", type=int, default=1500, help="starter: evaluation encoder steps.")
    ap.add_argument("--ship", action="store_true", help="starter: a run that reached its step count becomes "
                                                        "the shipped model (starter/model/).")
    a = ap.parse_args()
    a.minutes = a.minutes or (45.0 if a.data == "starter" else 30.0)
    if a.data == "starter":
        starter(a)
        return
    a.config = a.config or REPO / "configs" / "shapes32.yaml"

    from gen_engine.datasets.curated import TrainData
    from gen_engine.datasets.synth import write_imagefolder
    from gen_engine.evaluation import append_metrics, evaluate, render_heldout
    from gen_engine.runtime import TorchBackend
    from gen_engine.training.config import TrainConfig
    from gen_engine.training.encoder import train_encoder
    from gen_engine.training.trainer import Trainer

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
    import torch

    isa = f"ATen {torch.backends.cpu.get_cpu_capability()}" + (
        f", oneDNN capped at {os.environ['ONEDNN_MAX_CPU_ISA']}" if os.environ.get("ONEDNN_MAX_CPU_ISA") else "")
    out = {"cpu": cpu_name(), "isa": isa, "config": cfg.model_dump(), "steps": trainer.step,
           "steps_per_s": trainer.step / train_s, "train_seconds": train_s,
           "images_seen": trainer.step * cfg.batch_size, "encoder_seconds": enc_s, "generated": gen,
           "real_reference": real, "second_judge": judge2, "train_images_per_s": tp,
           "targets": {"color_acc": 0.9, "shape_acc": 0.6, "r_precision": 0.5, "minutes": 30}}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_quality.json").write_text(json.dumps(out, indent=1))
    grid = sorted(run.glob("samples_*.png"))[-1]
    shutil.copy(grid, HERE / "results" / "train_quality_samples.png")
    met = lambda v, t: "met" if v >= t else "MISSED"  # noqa: E731
    md = [f"# Training quality ({cfg.name}: {cfg.resolution} px, nf={cfg.nf}, batch {cfg.batch_size})", "",
          f"{trainer.step} steps ({trainer.step * cfg.batch_size:,} images) in {train_s / 60:.1f} min of training "
          f"({trainer.step / train_s:.2f} steps/s, evaluations and the guide encoder included), "
          f"bf16 {trainer.autocast} ({trainer.precision_reason}).", "", f"CPU: {cpu_name()}; {isa}.",
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

"""Training step time of a recipe, this tree against an earlier commit, measured in one run.

    python benchmarks/train_step.py [--against fc8841b] [--config configs/shapes32.yaml] [--pairs 5] [--isa avx2]

Each measurement is a fresh process that builds the recipe's trainer on 1,024 random images at the
config's resolution (fp32, one guide step: the guide's per-step cost counts, not its quality), runs 8
warm-up steps, then 5 rounds of 16 steps, and reports the median round. With ``--against REV`` the
commit is checked out in a git worktree under .local/bench/ and the two trees are measured in
alternating processes, ``--pairs`` times, so that a noisy host slows both alike; the ratio printed is
the median of the pairs' ratios. ``--isa avx2`` caps ATen's and oneDNN's kernels at AVX2 in the
measured processes, to measure an AVX2-only CPU's code paths on a CPU with AVX-512.
Writes benchmarks/results/train_step.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def child(config: Path) -> None:
    """Measure the tree in the working directory (its gen_engine) and print one JSON line."""
    sys.path.insert(0, os.getcwd())
    import tempfile

    import torch

    import gen_engine
    from gen_engine.datasets.curated import TrainData
    from gen_engine.training.config import TrainConfig
    from gen_engine.training.trainer import Trainer

    assert Path(gen_engine.__file__).resolve().is_relative_to(Path.cwd().resolve()), gen_engine.__file__
    torch.manual_seed(0)
    cfg = TrainConfig.from_yaml(config)
    cfg = cfg.model_copy(update={"steps": 10**6, "eval_every": 10**6, "guide_steps": 1, "bf16": "off"})
    n, r = 1024, cfg.resolution
    data = TrainData(torch.randint(0, 255, (n, 3, r, r), dtype=torch.uint8),
                     torch.nn.functional.normalize(torch.randn(n, 384), dim=1), ["x"] * n, "random",
                     text_encoder=cfg.text_encoder)
    tr = Trainer(cfg, data, Path(tempfile.mkdtemp()))  # nothing is written: no evaluation step
    for _ in range(8):
        tr.train_step()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(16):
            tr.train_step()
        rounds.append((time.perf_counter() - t0) / 16)
    print(json.dumps({"s_per_step": statistics.median(rounds), "rounds": rounds,
                      "isa": torch.backends.cpu.get_cpu_capability()}))


def measure(tree: Path, config: Path, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "--config", str(config)],
                         cwd=tree, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def worktree(rev: str) -> Path:
    """A detached checkout of ``rev`` under .local/bench/ (made once, reused)."""
    sha = subprocess.run(["git", "rev-parse", "--short=12", rev], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    path = REPO / ".local" / "bench" / f"tree-{sha}"
    if not (path / "gen_engine").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(path), sha], cwd=REPO,
                       capture_output=True, check=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "shapes32.yaml")
    ap.add_argument("--against", default=None, help="A commit to compare with (e.g. the one before a change).")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--isa", choices=("native", "avx2"), default="native")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    config = a.config.resolve()
    if a.child:
        child(config)
        return
    sys.path.insert(0, str(HERE))
    from common import cpu_name

    env = dict(os.environ)
    if a.isa == "avx2":
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    trees = {"this tree": REPO} | ({f"commit {a.against}": worktree(a.against)} if a.against else {})
    rows: list[dict[str, float]] = []
    for i in range(a.pairs if a.against else 1):
        row = {}
        for name, tree in reversed(trees.items()):  # the earlier commit first in each pair
            row[name] = measure(tree, config, env)["s_per_step"]
        rows.append(row)
        print(f"pair {i + 1}: " + ", ".join(f"{k} {v:.3f} s/step" for k, v in row.items())
              + (f", ratio {row[f'commit {a.against}'] / row['this tree']:.3f}" if a.against else ""), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in trees}
    ratio = statistics.median(r[f"commit {a.against}"] / r["this tree"] for r in rows) if a.against else None
    out = {"cpu": cpu_name(), "isa": a.isa, "config": os.path.relpath(config, REPO), "pairs": rows,
           "median_s_per_step": med, "median_ratio": ratio}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "train_step.json").write_text(json.dumps(out, indent=1))
    md = [f"# Training step time ({a.config.name}, fp32, batch from the config)", "",
          f"CPU: {cpu_name()}; kernels: {'capped at AVX2' if a.isa == 'avx2' else 'native'}.", "",
          "| tree | median s/step | steps/s |", "|---|---|---|",
          *[f"| {k} | {v:.3f} | {1 / v:.2f} |" for k, v in med.items()]]
    if ratio is not None:
        md += ["", f"Speed-up of this tree (median of {len(rows)} alternating pairs): **{ratio:.2f}x**."]
    (HERE / "results" / "train_step.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

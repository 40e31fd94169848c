"""Upsampler quality: the learned x4 against Lanczos, on held-out masters and on generated images.

    python benchmarks/upsampler_quality.py [--model starter/model] [--data .local/starter/data]

- Held-out masters (the starter data's val split, by content hash; never trained on): PSNR and SSIM of
  upsample(downscale(master)) and of Lanczos(downscale(master)) against the 256 px master; target
  >= +1.5 dB PSNR over Lanczos.
- Generated images: the model renders its dataset's held-out captions at 64 px (seeds 0..3); the
  sharpness (mean squared luminance gradient) of the 256 px upsampled images against Lanczos, and a
  side-by-side sheet (benchmarks/results/upsampler_samples.png).

The starter data is built (`genengine dataset starter`) into --data when it is not there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import cpu_name
from PIL import Image

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
REPO = HERE.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "starter" / "model")
    ap.add_argument("--data", type=Path, default=REPO / ".local" / "starter" / "data")
    a = ap.parse_args()

    import torch

    from gen_engine.datasets.starter import build
    from gen_engine.models.artifact import load_generator
    from gen_engine.models.gan import to_uint8
    from gen_engine.models.noise import seed_noise
    from gen_engine.models.upsampler import load_upsampler, n_params, upsample_uint8
    from gen_engine.text import shared_encoder
    from gen_engine.training.upsampler import Masters, evaluate, gradient_energy, lanczos_up

    if not (a.data / "card.json").exists():
        print(f"building the starter data in {a.data} ...", flush=True)
        build(a.data)
    up, meta = load_upsampler(a.model)
    masters = Masters.from_folder(a.data / "images").subset("val")
    print(f"{len(masters.hr)} held-out masters ...", flush=True)
    held = evaluate(up, masters)

    g, gmeta = load_generator(a.model)
    prompts = list(gmeta.get("sample_prompts") or ["a red heart"])
    emb = torch.from_numpy(shared_encoder().encode(prompts))
    z = torch.from_numpy(np.stack([seed_noise(s, g.cfg.z_dim) for _ in prompts for s in range(4)]))
    text = emb.repeat_interleave(4, 0)
    with torch.inference_mode():
        native = to_uint8(g(z, text))
    ours, base = upsample_uint8(up, native), lanczos_up(native)
    sharp = {"upsampler": gradient_energy(ours), "lanczos": gradient_energy(base)}
    sheet = np.concatenate([np.concatenate([base[i], ours[i]], axis=1) for i in range(0, len(ours), 4)][:6], axis=0)
    RESULTS.mkdir(exist_ok=True)
    Image.fromarray(sheet).save(RESULTS / "upsampler_samples.png", optimize=True)

    out = {"cpu": cpu_name(), "model": str(a.model), "upsampler": {"parameters": n_params(up),
                                                                   "architecture": meta["architecture"],
                                                                   "training": meta.get("training", {})},
           "heldout_masters": held, "generated": {"images": len(ours), "gradient_energy": sharp,
                                                  "ratio": sharp["upsampler"] / sharp["lanczos"]}}
    (RESULTS / "upsampler_quality.json").write_text(json.dumps(out, indent=1, default=str))
    md = ["# Upsampler quality (x4, 64 -> 256 px)", "", f"CPU: {out['cpu']}. Command: "
          "`python benchmarks/upsampler_quality.py`.", "",
          f"Upsampler: {n_params(up):,} parameters, {meta['architecture']}; trained "
          f"{meta.get('training', {}).get('steps_done', '?')} steps.", "",
          "| held-out masters | PSNR (dB) | SSIM | target |", "|---|---|---|---|",
          f"| Lanczos x4 | {held['psnr_lanczos']:.2f} | {held['ssim_lanczos']:.3f} | |",
          f"| learned upsampler x4 | {held['psnr_upsampler']:.2f} | {held['ssim_upsampler']:.3f} | |",
          f"| gain ({held['images']} images; better on {held['images_better']}) | {held['psnr_gain_db']:+.2f} | "
          f"{held['ssim_upsampler'] - held['ssim_lanczos']:+.3f} | >= +1.5 dB |", "",
          f"Generated images ({len(ours)}: the model's held-out captions x 4 seeds), sharpness at 256 px "
          f"(mean squared luminance gradient): upsampler {sharp['upsampler']:.1f}, Lanczos {sharp['lanczos']:.1f} "
          f"({out['generated']['ratio']:.2f}x). Left Lanczos, right upsampler: `upsampler_samples.png`.", ""]
    (RESULTS / "upsampler_quality.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()

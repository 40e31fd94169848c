"""The shipped starter model: how it is made, and how it seeds an empty registry.

    make starter-model              # = genengine models train-starter (about 45 minutes on 2 CPU cores)
    genengine models bootstrap      # publish it as the first production model (once), compile it

`train_starter` builds the starter dataset (`datasets.starter`), trains ``configs/starter64.yaml`` for
its fixed step count (no time budget, so the same data, config and seed give the same weights on the
same kind of machine) and writes ``starter/model/``: generator and discriminator weights (safetensors),
the x4 upsampler trained on the artwork's 256 px masters (``upsampler.safetensors`` + ``.json``),
``model.json`` (architecture, config, code version, the training data's version and content hash, the
licences and attributions of the artwork) and ``LICENSES.md``.

`bootstrap` runs when the registry has no production model (the demo's first run, a new deployment):
it publishes that folder, points ``production`` at it and compiles it, so the first campaign renders
real images before any nightly retrain has run. The retrain then warm-starts from it (``init_from``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from gen_engine.errors import UserError
from gen_engine.resources import Resources

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parent.parent
STARTER_CONFIG = REPO / "configs" / "starter64.yaml"


def folder_digest(root: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order: the data's content hash."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def starter_trainer(work: Path, config: Path = STARTER_CONFIG, device: str = "cpu",
                    steps: int | None = None) -> tuple[Any, Path]:
    """The starter data (built in ``work/data`` once) and a Trainer for the starter recipe in ``work/run``
    (resumed if it has checkpoints). The quality benchmark trains this same run under a time budget."""
    from gen_engine.datasets.curated import TrainData
    from gen_engine.datasets.starter import build
    from gen_engine.training.config import TrainConfig
    from gen_engine.training.trainer import Trainer

    cfg = TrainConfig.from_yaml(config, **({"steps": steps} if steps else {}))
    data_dir = Path(work) / "data"
    if not (data_dir / "card.json").exists():
        build(data_dir)
    data = TrainData.from_imagefolder(data_dir, cfg.resolution, split="train", text_encoder=cfg.text_encoder)
    trainer = Trainer(cfg, data, Path(work) / "run", device=device)
    trainer.resume()
    return trainer, data_dir


def ship(trainer: Any, data_dir: Path, out: Path) -> Path:
    """Export a finished starter run into ``out`` with its data's version, content hash and licences."""
    from gen_engine.datasets.starter import licenses_markdown
    from gen_engine.models.artifact import SAMPLES

    card = json.loads((data_dir / "card.json").read_text())
    model_dir = trainer.export({"training_data": {
        "name": "starter", "version": trainer.data.version, "content_sha256": folder_digest(data_dir),
        "images": card["images"], "captions": card["captions"], "split": "train (held out: 5% by content hash)",
        "builder": "genengine dataset starter", "licenses": card["sources"]}})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in ("generator.safetensors", "discriminator.safetensors", "model.json", SAMPLES):
        shutil.copy(model_dir / f, out / f)
    (out / "LICENSES.md").write_text(licenses_markdown(card["sources"]) + (
        "\nThe weights in this folder (the generator, its discriminator and the x4 upsampler) were trained on "
        "that artwork; OpenMoji's share-alike term applies to them. Rendered images carry their model's "
        "lineage.\n"))
    return out


def train_starter(out: Path, work: Path, config: Path = STARTER_CONFIG, device: str = "cpu",
                  steps: int | None = None) -> Path:
    """Build the starter data, train the starter recipe to its step count, write the shipped model to ``out``."""
    trainer, data_dir = starter_trainer(work, config, device, steps)
    trainer.train()
    out = ship(trainer, data_dir, out)
    ship_upsampler(data_dir, out)
    return out


def ship_upsampler(data_dir: Path, out: Path, steps: int = 4000) -> dict[str, Any]:
    """Train the x4 upsampler on the starter artwork's masters (held-out 5% excluded) into ``out``;
    the same as ``genengine train-upsampler --data <data_dir>/images --model <out> --steps 4000``."""
    from dataclasses import replace

    from gen_engine.training.upsampler import Masters, UpsamplerTrainConfig, train_into

    images = Path(data_dir) / "images"
    return train_into(Path(out), Masters.from_folder(images), replace(UpsamplerTrainConfig(), steps=steps),
                      dataset=str(images))


def bootstrap(res: Resources, model_name: str = "generator", compile_it: bool = True) -> dict[str, Any]:
    """Publish the shipped starter model as production if there is no production model yet (else a no-op)."""
    lineage = res.lineage
    prod = lineage.resolve_alias(model_name, "production")
    if prod is not None:
        return {"bootstrapped": False, "model_id": prod["model_id"], "version": prod["version"],
                "reason": f"production is already {prod['model_id']} (version {prod['version']})"}
    src = res.settings.starter_model_dir
    if not (src / "model.json").exists():
        raise UserError(f"no shipped starter model in {src}; `make starter-model` makes one")
    row = res.registry.publish(src)
    out: dict[str, Any] = {"bootstrapped": True, "model_id": row["model_id"], "version": row["version"],
                           "reason": "no production model: the shipped starter model was published"}
    if compile_it:
        from gen_engine.orchestration import promote

        done = promote(res, row["model_id"], None, model_name)
        out["engines"], won = done["engines"], done["promoted"]
    else:
        won = lineage.set_alias(model_name, "production", row["model_id"], expect=None)
    if not won:  # a concurrent bootstrap (or a first retrain) set production first
        prod = lineage.resolve_alias(model_name, "production") or {}
        out.update(bootstrapped=False, model_id=prod.get("model_id"), version=prod.get("version"),
                   reason=f"production was set to {prod.get('model_id')} by another process meanwhile")
    log.info("bootstrap: %s", out["reason"])
    return out

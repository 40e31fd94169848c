"""The model registry: publish a trained generator to S3 + the lineage store, resolve one for use.

A model version lives in ``s3://models/<name>/<model_id>/`` (``generator.safetensors`` +
``model.json``); its id is the name plus a hash of its weights, so publishing twice is a no-op.
Aliases (``production``) live in the lineage store. Resolving downloads into a local cache once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gen_engine.config import Settings
from gen_engine.lineage import LineageStore
from gen_engine.storage import Storage

MODEL_FILES = ("generator.safetensors", "model.json")


def model_id_for(model_dir: Path, name: str) -> str:
    digest = hashlib.sha256((Path(model_dir) / "generator.safetensors").read_bytes()).hexdigest()
    return f"{name}-{digest[:12]}"


def publish(model_dir: Path, settings: Settings, store: Storage, lineage: LineageStore, *,
            dataset_version_id: str | None = None, metrics: dict[str, Any] | None = None,
            alias: str | None = None) -> dict[str, Any]:
    """Upload a model folder and register it; optionally point an alias at it. Returns its lineage row."""
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    name = meta.get("name", "generator")
    model_id = model_id_for(model_dir, name)
    prefix = f"{name}/{model_id}/"
    for f in MODEL_FILES:
        store.put_file(settings.bucket_models, prefix + f, Path(model_dir) / f,
                       metadata={"model-id": model_id, "code-version": meta.get("code_version", "")})
    lineage.register_model(name, model_id, uri=f"s3://{settings.bucket_models}/{prefix}",
                           dataset_version_id=dataset_version_id, config=meta, metrics=metrics or {},
                           code_version=meta.get("code_version", "unknown"))
    if alias:
        lineage.set_alias(name, alias, model_id)
    row = lineage.model(model_id)
    assert row is not None
    return row


def resolve(ref: str, settings: Settings, store: Storage, lineage: LineageStore,
            name: str = "generator") -> tuple[Path, dict[str, Any]]:
    """A local folder for a model reference: an alias ('production'), a model id, or a local folder."""
    if Path(ref).is_dir() and (Path(ref) / "model.json").exists():
        meta = json.loads((Path(ref) / "model.json").read_text())
        return Path(ref), {"model_id": model_id_for(Path(ref), meta.get("name", name)), "name": meta.get("name"),
                           "version": None, "uri": str(Path(ref).resolve()), "dataset_version_id": None,
                           "code_version": meta.get("code_version", "unknown")}
    row = lineage.resolve_alias(name, ref) or lineage.model(ref)
    if row is None:
        raise ValueError(f"no model '{ref}': not an alias of '{name}', a model id, or a model folder. "
                         "Train and publish one first (`genengine train ... --publish`).")
    local = settings.local_dir / "cache" / "models" / row["model_id"]
    if not all((local / f).exists() for f in MODEL_FILES):
        prefix = row["uri"].removeprefix(f"s3://{settings.bucket_models}/")
        for f in MODEL_FILES:
            store.get_file(settings.bucket_models, prefix + f, local / f)
    return local, row

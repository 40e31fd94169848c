"""The model registry: publish a trained generator to S3 + the lineage store, resolve one for use.

A model version lives in ``s3://models/<name>/<model_id>/`` (``generator.safetensors`` +
``model.json``); its id is the name plus a hash of its weights, so publishing twice is a no-op.
Aliases (``production``) live in the lineage store. Resolving downloads into a local cache once.

Integrity: publishing records the sha256 of every file it uploads (weights, model.json, compiled
engines; `LineageStore.record_model_files`). Resolving checks each file against that record on every
download and on every cache hit (a cached file that no longer matches is fetched again), downloads to
a unique temporary name and renames it into place (two cold downloads on one host never share a file),
and refuses with `ArtifactMismatch` what S3 serves with another hash. Versions published before the
record existed are checked by what was recorded then: the weights by their model id (a hash of them),
engines by their registered sha256.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gen_engine.errors import UserError
from gen_engine.hashing import sha256_file
from gen_engine.models.artifact import SAMPLES, model_id_for

if TYPE_CHECKING:
    from gen_engine.config import Settings
    from gen_engine.infra.lineage import LineageStore
    from gen_engine.infra.storage import Storage
    from gen_engine.resources import Resources

log = logging.getLogger(__name__)

MODEL_FILES = ("generator.safetensors", "model.json")
# Travels with a model when present: the discriminator a warm start fine-tunes against (training only), and
# the x4 upsampler that serves sizes above native (models.upsampler).
OPTIONAL_FILES = ("discriminator.safetensors", "upsampler.safetensors", "upsampler.json")
# Published for people (the models page shows it), never downloaded to render.
SHOWN_FILES = (SAMPLES,)
COMPILED_FILES = ("generator.onnx", "generator.int8.onnx", "compile_report.json", "generator.plan",
                  "generator.plan.json", "upsampler.onnx", "upsampler.plan", "upsampler.plan.json")


class ArtifactMismatch(UserError):
    """A model file in S3 (or the local cache) is not the one the registry recorded."""


class ModelRegistry:
    """Models in S3 + the lineage store: publish, resolve (downloaded once into the local cache), aliases."""

    def __init__(self, res: Resources) -> None:
        """``res``: S3 and the lineage store are reached through it on first use (a local folder needs neither)."""
        self.res = res

    @property
    def settings(self) -> Settings:
        return self.res.settings

    @property
    def store(self) -> Storage:
        return self.res.storage

    @property
    def lineage(self) -> LineageStore:
        return self.res.lineage


    def publish(self, model_dir: Path, *, dataset_version_id: str | None = None, metrics: dict[str, Any] | None = None,
                alias: str | None = None) -> dict[str, Any]:
        """Upload a model folder and register it; optionally point an alias at it. Returns its lineage row."""
        meta = json.loads((Path(model_dir) / "model.json").read_text())
        name = meta.get("name", "generator")
        model_id = model_id_for(model_dir, name)
        prefix = f"{name}/{model_id}/"
        files = [*MODEL_FILES, *(o for o in (*OPTIONAL_FILES, *SHOWN_FILES) if (Path(model_dir) / o).exists())]
        for f in files:
            self.store.put_file(self.settings.bucket_models, prefix + f, Path(model_dir) / f,
                                metadata={"model-id": model_id, "code-version": meta.get("code_version", "")})
        self.lineage.register_model(name, model_id, uri=f"s3://{self.settings.bucket_models}/{prefix}",
                               dataset_version_id=dataset_version_id, config=meta, metrics=metrics or {},
                               code_version=meta.get("code_version", "unknown"),
                                    parent_model_id=meta.get("parent_model"))
        self.lineage.record_model_files(model_id, _digests(Path(model_dir), files))
        if alias:
            self.lineage.set_alias(name, alias, model_id)
        row = self.lineage.model(model_id)
        assert row is not None
        return row

    def resolve(self, ref: str, name: str = "generator") -> tuple[Path, dict[str, Any]]:
        """A local folder for a model reference: an alias ('production'), a model id, or a local folder."""
        if Path(ref).is_dir() and (Path(ref) / "model.json").exists():
            meta = json.loads((Path(ref) / "model.json").read_text())
            return Path(ref), {"model_id": model_id_for(Path(ref), meta.get("name", name)), "name": meta.get("name"),
                               "version": None, "uri": str(Path(ref).resolve()), "dataset_version_id": None,
                               "code_version": meta.get("code_version", "unknown")}
        row = self.lineage.resolve_alias(name, ref) or self.lineage.model(ref)
        if row is None:
            raise UserError(f"no model '{ref}': not an alias of '{name}', a model id, or a model folder. "
                             "Train and publish one first (`genengine train ... --publish`).")
        local = self.settings.local_dir / "cache" / "models" / row["model_id"]
        prefix = row["uri"].removeprefix(f"s3://{self.settings.bucket_models}/")
        recorded = self.lineage.model_files(row["model_id"])
        if recorded:  # every file it has in S3, each with its hash: nothing to look up, nothing else trusted
            for f, sha in recorded.items():
                self._materialise(prefix, local, f, sha, row["model_id"])
        else:
            self._materialise_legacy(prefix, local, row)
        return local, row

    def _materialise_legacy(self, prefix: str, local: Path, row: dict[str, Any]) -> None:
        """A version published before file hashes were recorded: the files that exist in S3, engines
        checked by their registered sha256, the weights by the model id (a hash of them)."""
        bucket = self.settings.bucket_models
        engines = {e["uri"].rsplit("/", 1)[-1]: e["sha256"] for e in self.lineage.engines(row["model_id"])
                   if e["uri"].startswith(row["uri"])}  # shared files (the text encoder) are not the model's
        for f in MODEL_FILES:
            self._materialise(prefix, local, f, None, row["model_id"])
        for f in OPTIONAL_FILES:
            if (local / f).exists() or self.store.exists(bucket, prefix + f):
                self._materialise(prefix, local, f, None, row["model_id"])
        for name, sha in engines.items():
            for f in [name, *(c for c in COMPILED_FILES if c.startswith(name) and c != name)]:
                if f == name or self.store.exists(bucket, prefix + f):
                    self._materialise(prefix, local, f, sha if f == name else None, row["model_id"])
        if model_id_for(local, row["name"]) != row["model_id"]:
            (local / "generator.safetensors").unlink()
            self._materialise(prefix, local, "generator.safetensors", None, row["model_id"])
            if model_id_for(local, row["name"]) != row["model_id"]:
                (local / "generator.safetensors").unlink()
                raise ArtifactMismatch(f"model {row['model_id']}: the weights in s3://{bucket}/{prefix} hash to "
                                       "another model id: the object was changed after it was published. "
                                       "Publish the model again; it is not used as it is.")

    def _materialise(self, prefix: str, local: Path, f: str, sha: str | None, model_id: str) -> None:
        """``local/f`` as the registry recorded it: a matching cache hit is kept, anything else is
        downloaded to a unique temporary name, checked, and renamed into place."""
        path = local / f
        if path.exists() and (sha is None or sha256_file(path) == sha):
            return
        if path.exists():
            log.warning("cached %s of %s does not match the registry's sha256; downloading it again", f, model_id)
        local.mkdir(parents=True, exist_ok=True)
        tmp = local / f".{f}.{uuid.uuid4().hex}.part"
        key = prefix + f
        try:
            self.store.get_file(self.settings.bucket_models, key, tmp)
            got = sha256_file(tmp)
            if sha is not None and got != sha:
                raise ArtifactMismatch(
                    f"model {model_id}: s3://{self.settings.bucket_models}/{key} has sha256 {got[:16]}..., the "
                    f"registry recorded {sha[:16]}...: the object was changed or damaged after it was published. "
                    "Publish the model again (or restore the object); it is not used as it is.")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def publish_compiled(self, model_dir: Path, row: dict[str, Any], report: dict[str, Any],
                         text_file: Path | None = None) -> list[str]:
        """Upload what `compile_model` produced beside the model in S3 and register each engine.

        The text encoder's ONNX file (``text_file``, where the report has one) is the same for every model:
        it goes once to a content-addressed key under ``text_encoder/`` and the model's report points to it.
        """
        prefix = row["uri"].removeprefix(f"s3://{self.settings.bucket_models}/")
        text = report.get("text_encoder")
        if text and "file" in text and "uri" not in text:  # a native encoder (no ONNX file) has nothing to upload
            if text_file is None:
                raise ValueError("the compile report has a text encoder: give its ONNX file (text_file)")
            key = f"text_encoder/{text['encoder']}-{text['sha256'][:12]}/{text['file']}"
            if not self.store.exists(self.settings.bucket_models, key):
                self.store.put_file(self.settings.bucket_models, key, text_file)
            text["uri"] = f"s3://{self.settings.bucket_models}/{key}"
            (Path(model_dir) / "compile_report.json").write_text(json.dumps(report, indent=1))
        compiled = [f for f in COMPILED_FILES if (Path(model_dir) / f).exists()]
        for f in compiled:
            self.store.put_file(self.settings.bucket_models, prefix + f, Path(model_dir) / f)
        self.lineage.record_model_files(row["model_id"], _digests(Path(model_dir), compiled))
        engines = []
        onnx = report["onnx"]
        self.lineage.register_engine(f"{row['model_id']}-onnx-{onnx['sha256'][:12]}", row["model_id"],
                                     backend="onnxruntime", uri=row["uri"] + onnx["file"], sha256=onnx["sha256"],
                                     key={"opset": onnx["opset"], "onnxruntime": report["versions"]["onnxruntime"]},
                                     report=report)
        engines.append("onnxruntime")
        if (q := report.get("int8") or {}).get("file"):  # the gated int8 CPU engine (`compile.quantize`)
            self.lineage.register_engine(f"{row['model_id']}-int8-{q['sha256'][:12]}", row["model_id"],
                                         backend="onnxruntime-int8", uri=row["uri"] + q["file"], sha256=q["sha256"],
                                         key={"opset": onnx["opset"], "onnxruntime": report["versions"]["onnxruntime"],
                                              "weights": q["weights"]}, report=q)
            engines.append("onnxruntime-int8")
        if text and "file" in text:  # a native text encoder (`onnx_export.native_text_report`) is no engine
            self.lineage.register_engine(f"{row['model_id']}-text-{text['sha256'][:12]}", row["model_id"],
                                         backend="onnxruntime-text", uri=text["uri"], sha256=text["sha256"],
                                         key={"opset": text["opset"], "encoder": text["package"]}, report=text)
            engines.append("onnxruntime-text")
        if (up := report.get("upsampler") or {}).get("file"):
            self.lineage.register_engine(f"{row['model_id']}-upsampler-{up['sha256'][:12]}", row["model_id"],
                                         backend="onnxruntime-upsampler", uri=row["uri"] + up["file"],
                                         sha256=up["sha256"], key={"opset": up["opset"]}, report=up)
            engines.append("onnxruntime-upsampler")
        trt = report.get("tensorrt", {})
        if trt.get("built"):  # pragma: no cover (GPU hosts only)
            plan = Path(model_dir) / trt["file"]
            self.lineage.register_engine(f"{row['model_id']}-trt-{sha256_file(plan)[:12]}", row["model_id"],
                                         backend="tensorrt", uri=row["uri"] + trt["file"], sha256=sha256_file(plan),
                                         key=trt["key"], report=report)
            engines.append("tensorrt")
        return engines

    def resolve_init(self, init_from: str, name: str = "generator") -> tuple[Path | None, str | None]:
        """A training config's ``init_from`` as (model folder, model id), or (None, None) to train from scratch.

        An alias that points nowhere yet (no production model on a new registry) means from scratch, said in
        the log; any other reference that resolves to nothing is an error."""
        if init_from in ("", "none"):
            return None, None
        if not Path(init_from).is_dir() and self.lineage.model(init_from) is None \
                and self.lineage.resolve_alias(name, init_from) is None and not init_from.startswith(f"{name}-"):
            log.warning("init_from '%s': no such model yet; training from scratch", init_from)
            return None, None
        model_dir, row = self.resolve(init_from, name=name)
        return model_dir, row["model_id"]


def _digests(folder: Path, files: list[str]) -> dict[str, tuple[str, int]]:
    return {f: (sha256_file(folder / f), (folder / f).stat().st_size) for f in files}

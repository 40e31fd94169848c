"""Stage 2 of a campaign: render one shard (the DAG maps this over the plan's shards).

Dedupe prompts, batch-encode text, z from PCG64 per image seed, batched inference, then encoding and
upload in a bounded thread pool so compute, encoding and I/O overlap. Images already in S3 with
matching render parameters are skipped, so a killed or failed shard resumes with no duplicates and
no holes. A finished shard writes its part file; a rerun skips it.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from gen_engine.config import Settings
from gen_engine.infra.storage import ObjectNotFound, Storage
from gen_engine.models.noise import seed_noise
from gen_engine.render import imagemeta, labels, provenance
from gen_engine.render.csvin import RowSpec
from gen_engine.render.plan import Plan, image_seed, object_key, part_key, shard_rows
from gen_engine.runtime.device import device_turn
from gen_engine.runtime.upscale import passes_for

log = logging.getLogger(__name__)


@dataclass
class RenderEnv:
    """What rendering needs besides the plan: the loaded backend, the model's identity, and how images
    are labelled (`from_settings` reads them from the settings)."""

    backend: Any
    model: dict[str, Any]
    encoder: Any
    batch_size: int  # Settings.render_batch_size
    io_threads: int  # Settings.render_io_threads
    signer: Any = None  # a c2pa.Signer (Settings.render_c2pa), None: unsigned
    producer: str = "gen-engine"  # Settings.provenance_producer
    label_text: str = ""  # Settings.render_label_text ("": by the prompt's script)
    embed_source_keys: bool = True  # Settings.render_embed_source_keys
    upscaler: Any = None  # runtime.upscale.Upscaler of the model, None: sizes above native by Lanczos
    png_level: int = 2  # Settings.render_png_level

    @classmethod
    def from_settings(cls, backend: Any, model: dict[str, Any], encoder: Any, settings: Settings,
                      upscaler: Any = None) -> RenderEnv:
        signer = provenance.load_signer(settings) if settings.render_c2pa else None
        return cls(backend, model, encoder, settings.render_batch_size, settings.render_io_threads, signer,
                   settings.provenance_producer, settings.render_label_text, settings.render_embed_source_keys,
                   upscaler, settings.render_png_level)


def upscale_path(spec: RowSpec, env: RenderEnv) -> tuple[int, str]:
    """(x4 passes, how the delivered size is made): ``native``, ``lanczos`` (no upsampler, or smaller than
    native), ``upsampler x4`` / ``upsampler x16``, then `` + lanczos`` where the exact size differs."""
    native = env.backend.resolution
    if not spec.size or spec.size == (native, native):
        return 0, "native"
    passes = passes_for(native, spec.size, env.upscaler.scale) if env.upscaler is not None else 0
    if not passes:
        return 0, "lanczos"
    side = native * env.upscaler.scale**passes
    return passes, f"upsampler x{env.upscaler.scale**passes}" + ("" if spec.size == (side, side) else " + lanczos")


def upscale_batch(imgs: np.ndarray, passes: list[int], env: RenderEnv) -> list[np.ndarray]:
    """Each image of a batch taken through its number of x4 passes, batched per pass (the second pass in
    chunks of 4: its inputs are 16x the pixels, and so are the network's activations)."""
    out: list[np.ndarray] = list(imgs)
    for p in range(1, max(passes, default=0) + 1):
        ix = [i for i, n in enumerate(passes) if n >= p]
        step = len(ix) if p == 1 else 4
        for c in range(0, len(ix), step):
            chunk = ix[c:c + step]
            for i, img in zip(chunk, env.upscaler.upsample(np.stack([out[i] for i in chunk])), strict=True):
                out[i] = img
    return out


def render_params(plan: Plan, spec: RowSpec, k: int, env: RenderEnv) -> dict[str, Any]:
    size = spec.size or (env.backend.resolution, env.backend.resolution)
    return {"Seed": image_seed(spec, plan.campaign, k), "Size": f"{size[0]}x{size[1]}",
            "Native size": f"{env.backend.resolution}x{env.backend.resolution}", "Variety": spec.variety,
            "Model": env.model["model_id"], "Engine": env.backend.name,
            "Precision": env.backend.precision, "Format": spec.format,
            "Campaign": plan.campaign, "Asset": spec.asset, "Index": k, "Label": spec.label,
            "C2PA": "signed" if env.signer is not None else "off"} | _upscale_params(spec, env)


def _upscale_params(spec: RowSpec, env: RenderEnv) -> dict[str, Any]:
    passes, path = upscale_path(spec, env)
    return {"Upscale": path} | ({"Upsampler": env.upscaler.version, "Upscale engine": env.upscaler.name}
                                if passes else {})


def image_id(plan: Plan, spec: RowSpec, k: int) -> str:
    """The image's id outside our storage (the AIGC label's ProduceID, the C2PA assertion): run and asset."""
    return f"{plan.run_id}/{spec.asset}_{k}"


def encode_image(img: np.ndarray, plan: Plan, spec: RowSpec, k: int, params: dict[str, Any], env: RenderEnv
                 ) -> bytes:
    """One delivered file: resized, visibly labelled if the row asks, encoded with its metadata (parameters,
    IPTC, the AIGC label, lineage) and signed (C2PA) over all of it."""
    out = Image.fromarray(img)
    if spec.size and spec.size != out.size:
        out = out.resize(spec.size, Image.Resampling.LANCZOS)
    if spec.label != "none":
        out, _ = labels.draw(out, labels.label_text(spec.prompt, env.label_text), spec.label)
    iid = image_id(plan, spec, k)
    lineage = {"run_id": plan.run_id, "image_id": iid, "campaign": plan.campaign, "csv_key": plan.csv_key,
               "csv_sha256": plan.csv_sha256, "row": spec.row_number, "k": k, "seed": params["Seed"],
               "model_id": env.model["model_id"], "dataset_version_id": env.model.get("dataset_version_id"),
               "code_version": env.model.get("code_version"), "object_key": object_key(plan, spec, k),
               "label": spec.label, "c2pa": env.signer is not None}
    if not env.embed_source_keys:  # ids only: the lineage store keeps the keys
        del lineage["csv_key"], lineage["object_key"]
    aigc = labels.aigc_json(labels.aigc_label(env.producer, iid))
    data = imagemeta.encode(out, spec.format, spec.prompt, params, lineage, aigc, png_level=env.png_level)
    if env.signer is not None:
        manifest = provenance.manifest_definition(
            f"{spec.asset}_{k}.{imagemeta.extension(spec.format)}", producer=env.producer,
            model_id=env.model["model_id"], image_id=iid, seed=params["Seed"],
            prompt_sha256=hashlib.sha256(spec.prompt.encode()).hexdigest())
        data = provenance.sign(data, spec.format, manifest, env.signer)
    return data


def object_metadata(plan: Plan, spec: RowSpec, k: int, params: dict[str, Any], digest: str, env: RenderEnv,
                    sha: str, nbytes: int) -> dict[str, str]:
    """The S3 object metadata of an image: ids and hashes only. AWS allows 2 KB of user metadata and a
    prompt alone can be more; the prompt is in the file and in the lineage store."""
    return {"prompt-sha256": hashlib.sha256(spec.prompt.encode()).hexdigest(), "image-id": image_id(plan, spec, k),
            "seed": str(params["Seed"]), "model-id": env.model["model_id"], "engine": env.backend.name,
            "precision": params["Precision"], "campaign": plan.campaign, "run-id": plan.run_id,
            "row": str(spec.row_number), "csv-sha256": plan.csv_sha256, "params-digest": digest, "sha256": sha,
            "bytes": str(nbytes), "digital-source-type": "trainedAlgorithmicMedia", "label": spec.label,
            "c2pa": params["C2PA"]}


def params_digest(params: dict[str, Any], prompt: str) -> str:
    """Checksum of everything that determines an image; an existing object with it is reused."""
    # Engines agree to 1e-4 at fp32, so an image rendered by one is reused by another; a reduced-precision
    # engine (int8, fp16) draws visibly other pixels, so its precision is part of the parameters.
    same = ("Engine", "Upscale engine") + (("Precision",) if params.get("Precision", "fp32") == "fp32" else ())
    blob = json.dumps({k: v for k, v in params.items() if k not in same} | {"prompt": prompt}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def pending_images(plan: Plan, index: int, specs: list[RowSpec], env: RenderEnv, store: Storage, bucket: str
                   ) -> tuple[list[tuple[RowSpec, int, dict[str, Any], str]], list[dict[str, Any]]]:
    """Every image of a shard in order, split into (to render, already in S3 with the same parameters).

    A shard marks itself started (``work/started/``) before it writes its first image: a shard that
    was never started has nothing to reuse and makes no S3 call per image; a restarted one checks
    only its own images. (Listing the run's images/ once per shard made list calls grow with the
    square of the shard count.)"""
    marker = f"{plan.prefix}work/started/shard-{index:05d}"
    resuming = store.exists(bucket, marker)
    if not resuming:
        store.put_bytes(bucket, marker, b"", content_type="text/plain")
    todo: list[tuple[RowSpec, int, dict[str, Any], str]] = []
    outputs: list[dict[str, Any]] = []
    for spec in specs:
        for k in range(spec.count):
            params = render_params(plan, spec, k, env)
            digest = params_digest(params, spec.prompt)
            key = object_key(plan, spec, k)
            if resuming:
                try:
                    meta = store.stat(bucket, key).metadata
                except ObjectNotFound:
                    meta = {}
                if meta.get("params-digest") == digest:
                    outputs.append(_output_row(spec, k, key, params, meta.get("sha256", ""), int(meta.get("bytes", 0))))
                    continue
            todo.append((spec, k, params, digest))
    return todo, outputs


def render_shard(plan: Plan, index: int, settings: Settings, store: Storage, env: RenderEnv,
                 progress: bool = False, report: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Render one shard (resumable); returns its counts and timings. ``report(done, total)``: called as
    images are handed to the encoders (every 10 batches) and at the end, for the Campaigns page."""
    bucket = settings.bucket_renders
    part = part_key(plan, index, env.model["model_id"])
    if store.exists(bucket, part):
        log.info("shard %d already complete, skipped", index)
        return {"shard": index, "rendered": 0, "reused": plan.shards[index]["images"], "skipped_shard": True,
                "backend": env.backend.name, "precision": env.backend.precision}
    shard = plan.shards[index]
    t0 = time.monotonic()
    todo, outputs = pending_images(plan, index, shard_rows(plan, index, store, settings), env, store, bucket)
    reused = len(outputs)

    # Text embeddings once per distinct prompt.
    prompts = sorted({spec.prompt for spec, *_ in todo})
    emb = dict(zip(prompts, env.encoder.encode(prompts), strict=True)) if prompts else {}
    times = {"inference": 0.0, "upscale": 0.0, "backpressure": 0.0}
    lock = threading.Lock()
    in_flight = threading.BoundedSemaphore(env.batch_size * 4)  # bounded: memory is flat in campaign size

    def upload(img: np.ndarray, spec: RowSpec, k: int, params: dict[str, Any], digest: str) -> None:
        try:
            key = object_key(plan, spec, k)
            data = encode_image(img, plan, spec, k, params, env)
            sha = hashlib.sha256(data).hexdigest()
            store.put_bytes(bucket, key, data, content_type=imagemeta.content_type(spec.format),
                            metadata=object_metadata(plan, spec, k, params, digest, env, sha, len(data)))
            with lock:
                outputs.append(_output_row(spec, k, key, params, sha, len(data)))
        finally:
            in_flight.release()

    # Every image's noise before the device turn (about 15 us an image on a CPU core: 3% of a 2,048-image
    # shard's turn on a GPU drawing 2,000 images/s); at most 40 MB for the largest shard.
    noise = [seed_noise(params["Seed"], env.backend.z_dim, spec.variety) for spec, _, params, _ in todo]

    def hand_out(pool: cf.Executor, items: list[tuple[np.ndarray, tuple[RowSpec, int, dict[str, Any], str]]]
                 ) -> list[cf.Future]:
        return [pool.submit(upload, img, spec, k, params, digest) for img, (spec, k, params, digest) in items]

    def draw(pool: cf.Executor, futures: list[cf.Future], reporter: cf.Executor) -> None:
        """Every pending image drawn in batches and handed to the encoders as it comes."""
        for b in range(0, len(todo), env.batch_size):
            batch = todo[b : b + env.batch_size]
            z = np.stack(noise[b : b + env.batch_size])
            text = np.stack([emb[spec.prompt] for spec, *_ in batch])
            ti = time.monotonic()
            imgs = env.backend.render(z, text)
            times["inference"] += time.monotonic() - ti
            passes = [upscale_path(spec, env)[0] for spec, *_ in batch]
            if any(passes):
                tu = time.monotonic()
                imgs = upscale_batch(imgs, passes, env)
                times["upscale"] += time.monotonic() - tu
            tw = time.monotonic()
            for _ in batch:
                in_flight.acquire()
            times["backpressure"] += time.monotonic() - tw
            # One hand-off per batch: an encoder thread queues the uploads, so the drawing thread, which
            # holds the device, never waits for the interpreter behind threads it has just woken.
            futures.append(pool.submit(hand_out, pool, list(zip(imgs, batch, strict=True))))
            bar.update(len(batch))
            if b // env.batch_size % 10 == 0:
                log.info("shard %d: %d/%d images", index, min(b + len(batch), len(todo)), len(todo))
                reporter.submit(_report, report, reused + b + len(batch), shard["images"])  # off the turn

    from tqdm import tqdm

    bar = tqdm(total=len(todo), desc=f"shard {index}", unit="img", disable=not progress, mininterval=1.0)
    with (cf.ThreadPoolExecutor(env.io_threads, thread_name_prefix="encode-upload") as pool,
          cf.ThreadPoolExecutor(1, thread_name_prefix="progress") as reporter):  # one thread: reports in order
        futures: list[cf.Future] = []
        # The drawing takes a turn on the worker's device; the encoders finish this shard's last images
        # after it has handed the device on to the next shard (`runtime.device`).
        with device_turn(settings.local_dir, f"shard {index} of run {plan.run_id}",
                         enabled=settings.render_device_turns and bool(todo)) as turn:
            draw(pool, futures, reporter)
        for f in futures:
            for u in f.result():
                u.result()  # re-raise the first upload failure: the shard fails, a rerun resumes it
    bar.close()

    outputs.sort(key=lambda o: (o["row_number"], o["k"]))
    assert len(outputs) == shard["images"], (len(outputs), shard["images"])
    body = "".join(json.dumps(o, ensure_ascii=False) + "\n" for o in outputs).encode("utf-8")
    store.put_bytes(bucket, part, body, content_type="application/x-ndjson")
    _report(report, len(outputs), shard["images"])
    dt = time.monotonic() - t0
    log.info("shard %d done: %d rendered, %d reused in %.1fs (inference %.1fs, waited %.1fs for the device)",
             index, len(todo), reused, dt, times["inference"], turn.wait_s)
    return {"shard": index, "rendered": len(todo), "reused": reused, "seconds": dt,
            "inference_seconds": times["inference"], "upscale_seconds": times["upscale"],
            "backpressure_seconds": times["backpressure"], "backend": env.backend.name,
            "precision": env.backend.precision, **turn.as_dict()}


def _report(report: Callable[[int, int], None] | None, done: int, total: int) -> None:
    """Progress is for people watching: a failure to record it never fails the shard."""
    if report is not None:
        try:
            report(min(done, total), total)
        except Exception:  # the lineage database busy or away: the next report will do
            log.debug("progress report failed", exc_info=True)


def _output_row(spec: RowSpec, k: int, key: str, params: dict[str, Any], sha: str, nbytes: int) -> dict[str, Any]:
    return {"object_key": key, "row_number": spec.row_number, "asset": spec.asset, "k": k, "prompt": spec.prompt,
            "seed": params["Seed"], "size": params["Size"], "format": spec.format, "variety": spec.variety,
            "model_id": params["Model"], "engine": params["Engine"], "precision": params["Precision"],
            "upscale": params["Upscale"],
            "label": spec.label, "c2pa": params["C2PA"],
            "sha256": sha, "bytes": nbytes, "extra": spec.extra}

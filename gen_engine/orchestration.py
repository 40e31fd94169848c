"""What the Airflow DAGs do, as plain functions: the DAG files only wire these into tasks.

Keeping this here means every step runs and is tested without Airflow, and the DAGs stay thin.
Every step takes the process's `Resources` first (``gen_airflow.call`` passes them in a task).
Everything passed between steps is small JSON (keys, ids, counts); data moves through S3. A step
that finds the input unusable files it (failed/ with a report) and raises a `UserError`, which a
task turns into a failure without retries.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gen_engine.config import Settings
from gen_engine.errors import UserError, is_transient
from gen_engine.infra.storage import ObjectNotFound
from gen_engine.naming import slugify
from gen_engine.resources import Resources

if TYPE_CHECKING:
    from gen_engine.compile.quantize import GateData

log = logging.getLogger(__name__)
DROP_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


# --- campaigns ---------------------------------------------------------------------------------------------
def claim_incoming(res: Resources) -> list[dict[str, str]]:
    """Claim every CSV in ``campaigns/incoming/`` by moving it to ``claimed/`` (exactly once, even when
    watchers overlap). The claimed name carries the content's ETag, so a second drop of the same file
    name while the first is in flight never overwrites it, and the move is of exactly the listed content
    (a newer upload stays in incoming/ for the next round). A claim left by a killed worker expires after
    ``claim_lease_s`` and is taken over (`Storage.claim`)."""
    store, bucket, claims = res.storage, res.settings.bucket_campaigns, []
    for obj in store.list(bucket, "incoming/"):
        name = obj.key.removeprefix("incoming/")
        if "/" in name or not name.lower().endswith(".csv"):
            continue
        campaign = slugify(Path(name).stem) or "campaign"
        claimed = f"claimed/{campaign}.{obj.etag[:12]}.csv"
        if store.claim(bucket, obj.key, claimed, etag=obj.etag, lease_s=res.settings.claim_lease_s):
            log.info("claimed s3://%s/%s as %s (campaign %s)", bucket, obj.key, claimed, campaign)
            claims.append({"csv_key": claimed, "campaign": campaign, "source": obj.key})
    return claims


def finish_campaign(res: Resources, csv_key: str, ok: bool, report: dict[str, Any]) -> str:
    """Move a claimed CSV to ``processed/`` or ``failed/``; a report JSON goes beside it. Returns the new key."""
    store, bucket = res.storage, res.settings.bucket_campaigns
    name = csv_key.removeprefix("claimed/")
    dest = ("processed/" if ok else "failed/") + name
    try:
        store.copy(bucket, csv_key, dest)
        store.delete(bucket, csv_key)
    except ObjectNotFound:
        if not store.exists(bucket, dest):
            raise
    store.put_bytes(bucket, dest.removesuffix(".csv") + ".report.json",
                    json.dumps(report, indent=1, default=str).encode(), content_type="application/json")
    return dest


# --- dataset drops ------------------------------------------------------------------------------------------
def find_drops(res: Resources) -> list[dict[str, str]]:
    """Drops waiting in ``datasets/raw/<dataset>/<drop>.{zip,tar,...}``."""
    out = []
    for obj in res.storage.list(res.settings.bucket_datasets, "raw/"):
        parts = obj.key.split("/")
        if len(parts) == 3 and obj.key.lower().endswith(DROP_SUFFIXES):
            out.append({"key": obj.key, "dataset": parts[1]})
    return out


def finish_drop(res: Resources, key: str, ok: bool, report: dict[str, Any]) -> str:
    """Move a drop from raw/ to done/ or failed/ with its report beside it."""
    store, bucket = res.storage, res.settings.bucket_datasets
    dest = ("done/" if ok else "failed/") + key.removeprefix("raw/")
    store.copy(bucket, key, dest)
    store.delete(bucket, key)
    store.put_bytes(bucket, dest + ".report.json", json.dumps(report, indent=1, default=str).encode(),
                    content_type="application/json")
    return dest


# --- retraining -------------------------------------------------------------------------------------------
def config_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def retrain_decision(res: Resources, dataset: str | None = None, config_path: Path | None = None,
                     model_name: str = "generator") -> dict[str, Any]:
    """Skip when neither the data (latest curated version) nor the training config changed since production.

    dataset, config_path: default the settings' ``retrain_dataset`` and ``retrain_config``."""
    lineage = res.lineage
    dataset = dataset or res.settings.retrain_dataset
    config_path = Path(config_path or res.settings.retrain_config)
    version = lineage.dataset_version(dataset)
    if version is None:
        return {"train": False, "reason": f"no curated version of '{dataset}' yet"}
    chash = config_hash(config_path)
    prod = lineage.resolve_alias(model_name, "production")
    decision = {"dataset": dataset, "dataset_version_id": version["version_id"], "dataset_version": version["version"],
                "config": str(config_path), "config_hash": chash}
    if prod is not None:
        prod_cfg = json.loads(prod["config_json"])
        if prod["dataset_version_id"] == version["version_id"] and prod_cfg.get("config_hash") == chash:
            return {**decision, "train": False,
                    "reason": f"production {prod['model_id']} already trained on {version['version_id']} "
                              "with this config"}
        # A challenger for this data, config and champion was trained and gated before: not promoted, and
        # training it again would give the same weights.
        for m in lineage.models_trained_on(version["version_id"]):
            cfg = json.loads(m["config_json"])
            if cfg.get("config_hash") == chash and m.get("parent_model_id") in (None, prod["model_id"]):
                return {**decision, "train": False,
                        "reason": f"{m['model_id']} was already trained on {version['version_id']} with this "
                                  f"config from the champion {prod['model_id']} and not promoted"}
    return {**decision, "train": True, "reason": "first model" if prod is None else "data or config changed"}


def gate(challenger: dict[str, float], champion: dict[str, float] | None, settings: Settings) -> tuple[bool, str]:
    """Promote only if Frechet distance is not worse by more than the allowed fraction and R-precision
    does not drop by more than the allowed amount (both in the settings); the first model is promoted."""
    if champion is None:
        return True, "first model: promoted"
    fd_limit = champion["fd"] * (1 + settings.gate_max_fd_increase)
    rp_limit = champion["r_precision"] - settings.gate_max_r_precision_drop
    if challenger["fd"] > fd_limit:
        return False, (f"not promoted: Frechet distance {challenger['fd']:.4f} is worse than the champion's "
                       f"{champion['fd']:.4f} by more than {settings.gate_max_fd_increase:.0%}")
    if challenger["r_precision"] < rp_limit:
        return False, (f"not promoted: R-precision {challenger['r_precision']:.3f} is below the champion's "
                       f"{champion['r_precision']:.3f} minus {settings.gate_max_r_precision_drop}")
    return True, (f"promoted: FD {challenger['fd']:.4f} vs {champion['fd']:.4f}, R-precision "
                  f"{challenger['r_precision']:.3f} vs {champion['r_precision']:.3f}")


def train_candidate(res: Resources, decision: dict[str, Any], device: str | None = None,
                    steps: int | None = None) -> dict[str, Any]:
    """Train on the decided dataset version and register the result (not yet promoted).

    device: default the settings' ``retrain_device``."""
    from gen_engine.datasets.curated import TrainData
    from gen_engine.runtime.device import device_turn
    from gen_engine.training.config import TrainConfig
    from gen_engine.training.trainer import Trainer

    cfg = TrainConfig.from_yaml(Path(decision["config"]), **({"steps": steps} if steps else {}))
    settings = res.settings
    data = TrainData.from_curated(f"{decision['dataset']}@v{decision['dataset_version']}", res, cfg.resolution,
                                  text_encoder=cfg.text_encoder)
    run_dir = settings.local_dir / "runs" / f"{cfg.name}-{decision['dataset_version_id']}-{decision['config_hash']}"
    init, parent = res.registry.resolve_init(cfg.init_from)
    if parent is not None:  # a warm start from another champion is another run
        run_dir = run_dir.with_name(f"{run_dir.name}-from-{parent}")
    trainer = Trainer(cfg, data, run_dir, device=device or settings.retrain_device, init=init, parent=parent)
    trainer.resume()
    t0 = time.monotonic()
    # On a GPU, training takes the worker's device turn: render shards wait rather than share its memory.
    with device_turn(settings.local_dir, f"training {run_dir.name}",
                     enabled=settings.render_device_turns and trainer.device.type == "cuda"):
        trainer.train(progress=False)
    model_dir = trainer.export({"config_hash": decision["config_hash"]})
    upsampler = refresh_upsampler(res, f"{decision['dataset']}@v{decision['dataset_version']}", model_dir,
                                  set(data.content_hashes))
    row = res.registry.publish(model_dir, dataset_version_id=data.dataset_version_id)
    return {"model_id": row["model_id"], "version": row["version"], "train_seconds": time.monotonic() - t0,
            "steps": trainer.step, "parent_model": parent, "upsampler": upsampler}


def refresh_upsampler(res: Resources, ref: str, model_dir: Path, train_hashes: set[str]) -> str:
    """Train a new x4 upsampler into ``model_dir`` when the dataset version brings training images its
    current (inherited) upsampler has not learned (a version that only drops images keeps it); returns
    what was done. ``train_hashes``: the content hashes of the version's train split."""
    from dataclasses import replace

    from gen_engine.models.upsampler import META, has_upsampler
    from gen_engine.training.upsampler import Masters, UpsamplerTrainConfig, short_hashes, train_into

    steps = res.settings.retrain_upsampler_steps
    if steps == 0:
        return "off (retrain_upsampler_steps 0)"
    if has_upsampler(model_dir):
        learned = set(json.loads((model_dir / META).read_text()).get("training", {}).get("masters", []))
        if learned.issuperset(short_hashes(list(train_hashes))):
            return "kept: it learned every training image of this dataset version"
    try:
        masters = Masters.from_curated(ref, res, train_hashes)
    except UserError as e:  # no masters, or too few large enough (a dataset of small images): keep what there is
        return f"kept: {e}"
    train_into(model_dir, masters, replace(UpsamplerTrainConfig(), steps=steps), dataset=ref)
    return f"trained on {ref} ({len(masters.subset('train').hashes)} masters, {steps} steps)"


def evaluate_candidates(res: Resources, challenger_id: str, decision: dict[str, Any],
                        model_name: str = "generator") -> dict[str, Any]:
    """Challenger and champion evaluated on the same held-out split of the current dataset version."""
    from gen_engine.datasets.curated import TrainData
    from gen_engine.evaluation import evaluate_model
    from gen_engine.text import model_encoder_name

    ref = f"{decision['dataset']}@v{decision['dataset_version']}"
    out: dict[str, Any] = {}
    settings, lineage = res.settings, res.lineage
    prod = lineage.resolve_alias(model_name, "production")
    roles = {"challenger": challenger_id, "champion": prod["model_id"] if prod else None}
    dirs = {role: res.registry.resolve(mid)[0] for role, mid in roles.items() if mid is not None}
    metas = {role: json.loads((d / "model.json").read_text()) for role, d in dirs.items()}
    # One evaluation space for both: the captions embedded by the challenger's text encoder (each model
    # still renders from its own encoder's embeddings, `evaluation.in_model_space`).
    space = settings.eval_text_encoder or model_encoder_name(metas["challenger"])
    splits: dict[int, tuple[TrainData, TrainData]] = {}  # per resolution: both models at one size read it once
    for role, model_id in roles.items():
        if model_id is None:
            out[role] = None
            continue
        model_dir, resolution = dirs[role], metas[role]["architecture"]["resolution"]
        if resolution not in splits:
            train, held = (TrainData.from_curated(ref, res, resolution, split=s, text_encoder=space)
                           for s in ("train", "val"))
            splits[resolution] = (train, held if len(held) >= 8 else train)  # tiny datasets: no usable val split
        train, held = splits[resolution]
        out[role] = {"model_id": model_id, **evaluate_model(model_dir, train, held, eval_cache(settings),
                                                            n=settings.eval_images,
                                                            encoder_steps=settings.eval_encoder_steps,
                                                            store=res.storage)}
    lineage.update_model_metrics(challenger_id, out["challenger"])
    return out


def eval_cache(settings: Settings) -> Path:
    """This worker's local copy of the evaluation encoders (S3 holds them beside each version)."""
    return settings.local_dir / "cache" / "eval"


def prepare_evaluation(res: Resources, dataset: str, version: int) -> list[str]:
    """Train the evaluation encoder(s) of a new curated version of the retrain's dataset at ingest and
    keep them in S3 beside it, so the retrain's `evaluate` only loads them: one at the retrain config's
    resolution and one at the production model's, where that differs. Other datasets get theirs at first
    need (`cached_encoder`). Returns what was done, for the log; never fails the ingest: an encoder that
    cannot be trained now is trained by the first evaluation that needs it."""
    from gen_engine.datasets.curated import TrainData
    from gen_engine.evaluation.encoder import cached_encoder
    from gen_engine.training.config import TrainConfig

    settings = res.settings
    if dataset != settings.retrain_dataset:
        return [f"{dataset} is not the retrain's dataset ({settings.retrain_dataset}): its evaluation encoder "
                "is trained at first need"]
    done = []
    try:
        cfg = TrainConfig.from_yaml(Path(settings.retrain_config))
        sides, space = {cfg.resolution}, settings.eval_text_encoder or cfg.text_encoder
        prod = res.lineage.resolve_alias("generator", "production")
        if prod is not None:
            sides.add(json.loads(prod["config_json"]).get("architecture", {}).get("resolution") or min(sides))
        for side in sorted(sides):
            t0 = time.monotonic()
            cached_encoder(TrainData.from_curated(f"{dataset}@v{version}", res, side, text_encoder=space),
                           eval_cache(settings), settings.eval_encoder_steps, res.storage)
            done.append(f"evaluation encoder of {dataset}@v{version} at {side} px ready in "
                        f"{time.monotonic() - t0:.1f}s")
    except Exception as e:  # noqa: BLE001 (the version is published and its drop filed: evaluation trains it)
        log.warning("evaluation encoder of %s@v%d not prepared (%s: %s); the first evaluation trains it",
                    dataset, version, type(e).__name__, e)
        done.append(f"not prepared: {type(e).__name__}: {e}")
    for line in done:
        log.info(line)
    return done


def gate_and_record(res: Resources, metrics: dict[str, Any]) -> tuple[bool, str]:
    """`gate` the challenger against the champion and record the decision with the challenger's figures
    (the Campaigns plugin's models page shows it)."""
    promote_it, reason = gate(metrics["challenger"], metrics["champion"], res.settings)
    champion = (metrics["champion"] or {}).get("model_id")
    res.lineage.record_decision(metrics["challenger"]["model_id"], "gate",
                                {"promote": promote_it, "reason": reason, "against": champion})
    return promote_it, reason


def compile_and_register(res: Resources, model_dir: Path, row: dict[str, Any], precision: str | None = None
                         ) -> tuple[dict[str, Any], list[str]]:
    """Compile a resolved model (ONNX, TensorRT where present, the text encoder once per version, the gated
    int8 engine where its recipe or ``precision`` asks) and register its engines; returns the compile
    report and the engines' backends."""
    from gen_engine.compile.onnx_export import compile_model, model_precision
    from gen_engine.compile.text_onnx import text_encoder_folder

    cache = res.settings.text_encoder_cache
    precision = precision or model_precision(json.loads((Path(model_dir) / "model.json").read_text()))
    gate = int8_gate_data(res, model_dir, row) if precision == "int8" else None
    report = compile_model(model_dir, cache, precision, gate)
    text = report.get("text_encoder")
    text_file = text_encoder_folder(cache) / text["file"] if text and "file" in text and cache is not None else None
    return report, res.registry.publish_compiled(model_dir, row, report, text_file)


def int8_gate_data(res: Resources, model_dir: Path, row: dict[str, Any]) -> GateData | None:
    """The held-out split the int8 gate measures Frechet distance on: the model's own dataset version,
    scored by that version's cached evaluation encoder (the one the retrain's evaluation used). None
    for a model that names no curated version (the gate then keeps fp32 and says so)."""
    from gen_engine.datasets.curated import TrainData
    from gen_engine.evaluation import int8_gate_data
    from gen_engine.evaluation.encoder import cached_encoder
    from gen_engine.text import model_encoder_name

    version = res.lineage.dataset_version_by_id(row["dataset_version_id"]) if row.get("dataset_version_id") else None
    if version is None:
        log.warning("model %s names no curated dataset version: the int8 gate cannot measure its Frechet "
                    "distance", row.get("model_id"))
        return None
    meta = json.loads((Path(model_dir) / "model.json").read_text())
    ref, side = f"{version['dataset']}@v{version['version']}", meta["architecture"]["resolution"]
    space = res.settings.eval_text_encoder or model_encoder_name(meta)
    train, held = (TrainData.from_curated(ref, res, side, split=s, text_encoder=space) for s in ("train", "val"))
    enc, _ = cached_encoder(train, eval_cache(res.settings), res.settings.eval_encoder_steps, res.storage)
    split = "held-out" if len(held) >= 8 else "training"  # as `evaluate_candidates`: tiny datasets have no val
    return int8_gate_data(held if split == "held-out" else train, enc, meta, res.settings.eval_images,
                          f"{ref} {split} split")


def promote(res: Resources, challenger_id: str, champion_id: str | None,
            model_name: str = "generator") -> dict[str, Any]:
    """Compile the challenger (ONNX, TensorRT where present), register engines, move `production` to it,
    but only from the champion it was gated against (``champion_id``; None: there was none). If another
    run moved `production` meanwhile, the challenger is not promoted (``promoted`` False, with the
    reason): the next retrain gates against the new champion, nothing is overwritten unseen."""
    model_dir, row = res.registry.resolve(challenger_id)
    report, engines = compile_and_register(res, model_dir, row)
    out = {"model_id": challenger_id, "engines": engines, "parity": report["onnx"]["parity"]}
    if res.lineage.set_alias(model_name, "production", challenger_id, expect=champion_id):
        reason = f"production moved from {champion_id} to {challenger_id}"
        res.lineage.record_decision(challenger_id, "promotion", {"promoted": True, "reason": reason})
        return {**out, "promoted": True, "reason": reason}
    now = res.lineage.resolve_alias(model_name, "production")
    reason = (f"not promoted: production is now {now['model_id'] if now else 'unset'}, not {champion_id}, the "
              f"champion {challenger_id} was gated against (another run promoted meanwhile)")
    log.warning("%s", reason)
    res.lineage.record_decision(challenger_id, "promotion", {"promoted": False, "reason": reason})
    return {**out, "promoted": False, "reason": reason}


# --- campaign rendering, step by step (the campaign_render DAG) ------------------------------------------
class CampaignFailed(UserError):
    """The campaign cannot be rendered (bad file); the CSV is already in failed/ with its report."""


def campaign_csv_key(raw: str, bucket: str) -> str:
    """The key of a CSV the render DAG may act on: ``incoming/<name>.csv`` or ``claimed/<name>.csv``, one
    level deep, nothing else. The key comes from a form or the REST API, and the render moves (and
    deletes) what it names: ``processed/...``, ``failed/...``, a ``.claim`` marker or ``../`` are refused."""
    key = (raw or "").strip().removeprefix(f"{bucket}/")
    folder, _, name = key.partition("/")
    if (folder not in ("incoming", "claimed") or not name or "/" in name or "\\" in name
            or name.startswith(".") or not name.lower().endswith(".csv") or any(ord(c) < 32 for c in key)):
        raise UserError(f"csv_key '{raw[:120]}' is not a CSV under incoming/ or claimed/ in the campaigns bucket; "
                        "give e.g. incoming/spring_sale.csv")
    return key


def upsampler_version(model_dir: Path) -> str | None:
    """The model's upsampler version (a hash of its weights), or None: part of a run's identity."""
    from gen_engine.hashing import sha256_file
    from gen_engine.models.upsampler import WEIGHTS

    return sha256_file(model_dir / WEIGHTS)[:12] if (model_dir / WEIGHTS).exists() else None


def _label_param(value: Any, default: str) -> str:
    """A campaign's ``label`` parameter (none, corner, edge; empty: the settings' default)."""
    from gen_engine.render.csvin import LABELS

    label = str(value or "").strip().lower() or default
    if label not in LABELS:
        raise ValueError(f"the campaign's label '{label[:20]}' is not one of {', '.join(LABELS)}")
    return label


def plan_campaign(res: Resources, params: dict[str, Any], dag_run: tuple[str, str] | None = None) -> dict[str, Any]:
    """Claim (if still in incoming/), pin the model, validate and plan. Small JSON for XCom.

    ``params``: ``csv_key`` (in the campaigns bucket: the DAG, which files it under processed/ or failed/
    at the end), or ``source`` (the CLI: a local file or any s3:// URI; one under the campaigns bucket's
    incoming/ is claimed and filed as the DAG does, any other is rendered where it is and never moved:
    ``filed`` False), plus ``campaign``, ``model``, ``backend``, ``shard_size``, ``label`` (the visible AI
    label of rows that name none: none, corner, edge; empty: the settings'). The run is on record
    (lineage) from here on, with ``dag_run`` (dag id, run id) when Airflow runs it."""
    from gen_engine.render.csvin import CsvError, RowRules
    from gen_engine.render.plan import prepare
    from gen_engine.text import check_encoder

    settings, store = res.settings, res.storage
    bucket = settings.bucket_campaigns
    source = params.get("source") or ""
    key = source.removeprefix(f"s3://{bucket}/") if source.startswith(f"s3://{bucket}/") else None
    if source and key is not None:
        try:
            key = campaign_csv_key(key, bucket)
        except UserError:
            key = None
        if key is not None and not key.startswith("incoming/"):
            key = None  # claimed/ (a watcher or an earlier run holds it), processed/...: read, never moved
    filed = not source or key is not None
    if filed:
        if not (key or params.get("csv_key")):
            raise UserError("params.csv_key is empty: give the CSV's key in the campaigns bucket")
        csv_key = campaign_csv_key(key or params["csv_key"], bucket)
        name = Path(csv_key).stem.split(".")[0]
    else:
        csv_key, name = source, Path(source.rsplit("/", 1)[-1]).stem
    campaign = params.get("campaign") or slugify(name)
    if filed and csv_key.startswith("incoming/"):
        etag = store.stat(bucket, csv_key).etag
        claimed = f"claimed/{slugify(Path(csv_key).stem) or 'campaign'}.{etag[:12]}.csv"
        if not store.claim(bucket, csv_key, claimed, etag=etag, lease_s=settings.claim_lease_s):
            raise CampaignFailed(f"{csv_key} was claimed by another run")
        csv_key = claimed
    ref = params.get("model") or "production"
    model_dir, model = res.registry.resolve(ref)
    pinned = ref if Path(ref).is_dir() else model["model_id"]  # an alias is pinned to what it names now
    try:
        meta = json.loads((model_dir / "model.json").read_text())
        check_encoder(meta)  # a model whose text encoder is not installed fails here, with what to install
        native = meta["architecture"]["resolution"]
        rules = RowRules.from_settings(settings, native_size=int(native),
                                       default_label=_label_param(params.get("label"), settings.render_label))
        plan = prepare(f"s3://{bucket}/{csv_key}" if filed else csv_key, campaign, settings, store,
                       model_ref=pinned, model_id=model["model_id"], backend=params.get("backend") or "auto",
                       shard_size=int(params.get("shard_size") or settings.render_shard_size), rules=rules,
                       upsampler=upsampler_version(model_dir))
    except (CsvError, ValueError) as e:
        if filed:
            finish_campaign(res, csv_key, False, {"error": str(e), "stage": "validate"})
        raise CampaignFailed(str(e)) from None
    # The run is on record from here on, so a run that fails while rendering shows as failed, not as nothing.
    res.lineage.start_run(plan.run_id, plan.campaign, csv_key=plan.csv_key, csv_sha256=plan.csv_sha256,
                          model_id=model["model_id"], backend=plan.backend, dag_run=dag_run, counts=plan.stats)
    res.lineage.plan_progress(plan.run_id, [(s["index"], s["images"]) for s in plan.shards])
    return {"plan_key": f"{plan.prefix}work/plan.json", "csv_key": csv_key, "campaign": plan.campaign,
            "run_id": plan.run_id, "shards": plan.shards, "stats": plan.stats, "filed": filed}


def _load_plan(res: Resources, plan_key: str) -> Any:
    from gen_engine.render.plan import Plan

    return Plan.from_json(json.loads(res.storage.get_bytes(res.settings.bucket_renders, plan_key)))


@functools.lru_cache(maxsize=4)
def _render_env(res: Resources, model_ref: str, backend: str, _thread: int) -> Any:
    """The loaded backend and caption encoder for a plan: once per process (every shard of a CLI run,
    the shards an Airflow worker process renders)."""
    from gen_engine.render.shard import RenderEnv
    from gen_engine.runtime import load_backend
    from gen_engine.runtime.upscale import load_upscaler
    from gen_engine.text import encoder_for

    model_dir, model = res.registry.resolve(model_ref)
    encoder = encoder_for(json.loads((model_dir / "model.json").read_text()))  # the model's, checked
    be = load_backend(backend, model_dir)
    return RenderEnv.from_settings(be, model, encoder, res.settings, load_upscaler(be.name, model_dir))


def render_planned_shard(res: Resources, plan_key: str, index: int, progress: bool = False) -> dict[str, Any]:
    """One shard of a planned run; its result adds ``step_seconds``: the whole step, model and encoder
    loading included (``seconds`` is the rendering alone), which is the task's own work under Airflow."""
    from gen_engine.render.shard import render_shard

    t0 = time.monotonic()
    plan = _load_plan(res, plan_key)
    env = _render_env(res, plan.model_ref, plan.backend, threading.get_ident())  # backends are per thread
    out = render_shard(plan, index, res.settings, res.storage, env, progress=progress,
                       report=lambda done, total: res.lineage.shard_progress(plan.run_id, index, done, total))
    return {**out, "step_seconds": time.monotonic() - t0}


def _finalize(res: Resources, plan_key: str, results: list[dict[str, Any]], file: bool = True) -> dict[str, Any]:
    """Manifests, gallery and lineage, then (``file``) the claimed CSV filed under processed/."""
    from gen_engine.render.finalize import finalize

    settings = res.settings
    plan = _load_plan(res, plan_key)
    _, model = res.registry.resolve(plan.model_ref)
    backend = next((r.get("backend") for r in results if r.get("backend")), plan.backend)
    summary = finalize(plan, settings, res.storage, res.lineage, model, backend, results)
    if file and plan.csv_key.startswith(f"{settings.bucket_campaigns}/claimed/"):
        finish_campaign(res, plan.csv_key.removeprefix(f"{settings.bucket_campaigns}/"), True,
                        {"summary": f"s3://{settings.bucket_renders}/{plan.prefix}summary.json", **summary["counts"]})
    return summary


def finalize_campaign(res: Resources, plan_key: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    summary = _finalize(res, plan_key, results)
    return {"prefix": summary["prefix"], "counts": summary["counts"]}


CAMPAIGN_STEPS = ("claim", "validate and plan", "render shards", "finalize", "file")


def run_campaign(res: Resources, source: str, campaign: str | None = None, *, model: str = "production",
                 backend: str = "auto", shard_size: int | None = None, label: str = "", progress: bool = True
                 ) -> dict[str, Any]:
    """A whole campaign in one process (`genengine render`): the steps the campaign_render DAG runs as
    tasks, in its order (`CAMPAIGN_STEPS`), through the same functions: `plan_campaign` (claim,
    validate and plan), `render_planned_shard` per shard, `_finalize` (manifests, gallery, lineage,
    filing), and `fail_campaign` on failure. The summary's ``skipped`` names the steps a source outside
    the campaigns bucket's incoming/ or claimed/ skips, and why."""
    plan = plan_campaign(res, {"source": source, "campaign": campaign, "model": model, "backend": backend,
                               "shard_size": shard_size, "label": label})
    skipped = [] if plan["filed"] else [
        f"claim and filing (to processed/ or failed/): {source} is not a CSV waiting in "
        f"s3://{res.settings.bucket_campaigns}/incoming/ (a claimed/ file belongs to the run that claimed it), so "
        "it is rendered where it is and never moved"]
    for line in skipped:
        log.info("skipped: %s", line)
    try:
        results = [render_planned_shard(res, plan["plan_key"], s["index"], progress) for s in plan["shards"]]
        return {**_finalize(res, plan["plan_key"], results, file=plan["filed"]), "skipped": skipped}
    except BaseException as e:  # recorded as failed (a rerun resumes it and records success), then re-raised
        try:
            fail_campaign(res, plan["csv_key"] if plan["filed"] else "", f"{type(e).__name__}: {e}", plan)
        except Exception:  # the database or S3 may be what failed: the original error is the one to see
            log.warning("could not record run %s as failed", plan["run_id"], exc_info=True)
        raise


def fail_campaign(res: Resources, csv_key: str, reason: str, plan: dict[str, Any] | None = None) -> str | None:
    """Move the CSV to failed/ unless it was already moved (by the step that knew the reason); a planned
    run (``plan``: what `plan_campaign` returned) is marked failed in the lineage store with its counts."""
    if plan and plan.get("run_id"):
        res.lineage.fail_run(plan["run_id"], plan.get("stats") or {}, reason, plan.get("csv_key"))
    if not csv_key:
        return None  # a manual run with an empty form: there is no file to move
    try:
        csv_key = campaign_csv_key(csv_key, res.settings.bucket_campaigns)
    except UserError:
        log.warning("not moving '%s': not a CSV under incoming/ or claimed/", csv_key[:120])
        return None  # a refused key is never moved, whatever it names
    if not res.storage.exists(res.settings.bucket_campaigns, csv_key):
        return None
    return finish_campaign(res, csv_key, False, {"error": reason})


def ingest_and_file(res: Resources, drop: dict[str, str]) -> dict[str, Any]:
    """Ingest one raw drop and move it to done/ or failed/ with its report (the dataset_ingest DAG).

    Every drop that cannot be ingested leaves raw/, so none is retried every few minutes forever: one
    that fails its checks (a `UserError`) is filed under failed/ and the error raised again; one that
    breaks the ingest in any other way (a bug, an input no check foresaw) is filed under failed/ with the
    error in its report, and raised as a `UserError`. Only a fault that may pass (`is_transient`: S3 or
    the lineage database not answering) leaves the drop in raw/ for the task's retry."""
    from dataclasses import asdict

    from gen_engine.datasets.ingest import ingest

    bucket = res.settings.bucket_datasets
    try:
        r = ingest(f"s3://{bucket}/{drop['key']}", drop["dataset"], res)
    except UserError as e:
        report = getattr(e, "report", {"error": str(e)})
        finish_drop(res, drop["key"], False, {"error": str(e), **report})
        raise
    except Exception as e:
        if is_transient(e):
            raise
        what = f"{type(e).__name__}: {str(e)[:500]}"
        log.exception("drop %s broke the ingest (%s); filing it under failed/", drop["key"], what)
        dest = finish_drop(res, drop["key"], False, {"error": what, "kind": "unexpected",
                                                     "traceback": traceback.format_exc(limit=20)})
        raise UserError(f"drop s3://{bucket}/{drop['key']} could not be ingested ({what}). It is filed as "
                        f"s3://{bucket}/{dest} with a report and is not retried; after a fix, move it back "
                        "to raw/.") from e
    result = asdict(r)
    finish_drop(res, drop["key"], True, result)
    evaluation = prepare_evaluation(res, r.dataset, r.version)
    return {**result, "evaluation": evaluation, "asset_uri": f"s3://{bucket}/curated/{r.dataset}"}

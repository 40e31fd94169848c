"""What the Airflow DAGs do, as plain functions: the DAG files only wire these into tasks.

Keeping this here means every step runs and is tested without Airflow, and the DAGs stay thin.
Everything passed between steps is small JSON (keys, ids, counts); data moves through S3.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from gen_engine.config import Settings
from gen_engine.lineage import LineageStore
from gen_engine.render.csvin import slugify
from gen_engine.storage import ObjectNotFound, Storage

log = logging.getLogger(__name__)
DROP_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


# --- campaigns ---------------------------------------------------------------------------------------------
def claim_incoming(settings: Settings, store: Storage) -> list[dict[str, str]]:
    """Claim every CSV in ``campaigns/incoming/`` by moving it to ``claimed/`` (exactly once, even when
    watchers overlap). The claimed name carries the content's ETag, so a second drop of the same file
    name while the first is in flight never overwrites it."""
    bucket, claims = settings.bucket_campaigns, []
    for obj in store.list(bucket, "incoming/"):
        name = obj.key.removeprefix("incoming/")
        if "/" in name or not name.lower().endswith(".csv"):
            continue
        campaign = slugify(Path(name).stem) or "campaign"
        claimed = f"claimed/{campaign}.{obj.etag[:12]}.csv"
        if store.claim(bucket, obj.key, claimed):
            log.info("claimed s3://%s/%s as %s (campaign %s)", bucket, obj.key, claimed, campaign)
            claims.append({"csv_key": claimed, "campaign": campaign, "source": obj.key})
    return claims


def finish_campaign(settings: Settings, store: Storage, csv_key: str, ok: bool, report: dict[str, Any]) -> str:
    """Move a claimed CSV to ``processed/`` or ``failed/``; a report JSON goes beside it. Returns the new key."""
    bucket = settings.bucket_campaigns
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
def find_drops(settings: Settings, store: Storage) -> list[dict[str, str]]:
    """Drops waiting in ``datasets/raw/<dataset>/<drop>.{zip,tar,...}``."""
    out = []
    for obj in store.list(settings.bucket_datasets, "raw/"):
        parts = obj.key.split("/")
        if len(parts) == 3 and obj.key.lower().endswith(DROP_SUFFIXES):
            out.append({"key": obj.key, "dataset": parts[1]})
    return out


def finish_drop(settings: Settings, store: Storage, key: str, ok: bool, report: dict[str, Any]) -> str:
    """Move a drop from raw/ to done/ or failed/ with its report beside it."""
    bucket = settings.bucket_datasets
    dest = ("done/" if ok else "failed/") + key.removeprefix("raw/")
    store.copy(bucket, key, dest)
    store.delete(bucket, key)
    store.put_bytes(bucket, dest + ".report.json", json.dumps(report, indent=1, default=str).encode(),
                    content_type="application/json")
    return dest


# --- retraining -------------------------------------------------------------------------------------------
def config_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def retrain_decision(settings: Settings, lineage: LineageStore, dataset: str, config_path: Path,
                     model_name: str = "generator") -> dict[str, Any]:
    """Skip when neither the data (latest curated version) nor the training config changed since production."""
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


def train_candidate(settings: Settings, store: Storage, lineage: LineageStore, decision: dict[str, Any],
                    device: str = "auto", steps: int | None = None) -> dict[str, Any]:
    """Train on the decided dataset version and register the result (not yet promoted)."""
    from gen_engine import registry
    from gen_engine.training.loop import TrainConfig, TrainData, Trainer

    cfg = TrainConfig.from_yaml(Path(decision["config"]), **({"steps": steps} if steps else {}))
    data = TrainData.from_curated(f"{decision['dataset']}@v{decision['dataset_version']}", settings, cfg.resolution)
    run_dir = settings.local_dir / "runs" / f"{cfg.name}-{decision['dataset_version_id']}-{decision['config_hash']}"
    init, parent = registry.resolve_init(cfg.init_from, settings, store, lineage)
    if parent is not None:  # a warm start from another champion is another run
        run_dir = run_dir.with_name(f"{run_dir.name}-from-{parent}")
    trainer = Trainer(cfg, data, run_dir, device=device, init=init, parent=parent)
    trainer.resume()
    t0 = time.monotonic()
    trainer.train(progress=False)
    model_dir = trainer.export({"config_hash": decision["config_hash"]})
    row = registry.publish(model_dir, settings, store, lineage, dataset_version_id=data.dataset_version_id)
    return {"model_id": row["model_id"], "version": row["version"], "train_seconds": time.monotonic() - t0,
            "steps": trainer.step, "parent_model": parent}


def evaluate_candidates(settings: Settings, store: Storage, lineage: LineageStore, challenger_id: str,
                        decision: dict[str, Any], model_name: str = "generator") -> dict[str, Any]:
    """Challenger and champion evaluated on the same held-out split of the current dataset version."""
    from gen_engine import registry
    from gen_engine.evaluation import evaluate_model
    from gen_engine.training.loop import TrainData

    ref = f"{decision['dataset']}@v{decision['dataset_version']}"
    out: dict[str, Any] = {}
    prod = lineage.resolve_alias(model_name, "production")
    for role, model_id in (("challenger", challenger_id), ("champion", prod["model_id"] if prod else None)):
        if model_id is None:
            out[role] = None
            continue
        model_dir, _ = registry.resolve(model_id, settings, store, lineage)
        res = json.loads((model_dir / "model.json").read_text())["architecture"]["resolution"]
        train, held = (TrainData.from_curated(ref, settings, res, split=s) for s in ("train", "val"))
        if len(held) < 8:
            held = train  # tiny datasets: no usable val split
        out[role] = {"model_id": model_id, **evaluate_model(model_dir, train, held,
                                                            settings.local_dir / "cache" / "eval", n=500,
                                                            encoder_steps=settings.eval_encoder_steps)}
    lineage.update_model_metrics(challenger_id, out["challenger"])
    return out


def promote(settings: Settings, store: Storage, lineage: LineageStore, challenger_id: str,
            model_name: str = "generator") -> dict[str, Any]:
    """Compile the challenger (ONNX, TensorRT where present), register engines, move `production` to it."""
    from gen_engine import registry
    from gen_engine.compile.onnx_export import compile_model

    model_dir, row = registry.resolve(challenger_id, settings, store, lineage)
    report = compile_model(model_dir, settings.text_encoder_cache)
    engines = registry.publish_compiled(model_dir, row, report, settings, store, lineage)
    lineage.set_alias(model_name, "production", challenger_id)
    return {"model_id": challenger_id, "engines": engines, "parity": report["onnx"]["parity"]}


# --- campaign rendering, step by step (the campaign_render DAG) ------------------------------------------
class CampaignFailed(RuntimeError):
    """The campaign cannot be rendered (bad file); the CSV is already in failed/ with its report."""


def plan_campaign(settings: Settings, params: dict[str, Any]) -> dict[str, Any]:
    """Claim (if still in incoming/), pin the model, validate and plan. Small JSON for XCom."""
    from gen_engine import registry
    from gen_engine.render.campaign import prepare
    from gen_engine.render.csvin import CsvError

    store, lineage = Storage.from_settings(settings), LineageStore.from_settings(settings)
    bucket, csv_key = settings.bucket_campaigns, params["csv_key"]
    if not csv_key:
        raise ValueError("params.csv_key is empty: give the CSV's key in the campaigns bucket")
    campaign = params.get("campaign") or slugify(Path(csv_key).stem.split(".")[0])
    if csv_key.startswith("incoming/"):
        etag = store.stat(bucket, csv_key).etag
        claimed = f"claimed/{slugify(Path(csv_key).stem) or 'campaign'}.{etag[:12]}.csv"
        if not store.claim(bucket, csv_key, claimed):
            raise CampaignFailed(f"{csv_key} was claimed by another run")
        csv_key = claimed
    _, model = registry.resolve(params.get("model") or "production", settings, store, lineage)
    try:
        plan = prepare(f"s3://{bucket}/{csv_key}", campaign, settings, store, model_ref=model["model_id"],
                       backend=params.get("backend") or "auto",
                       shard_size=int(params.get("shard_size") or settings.render_shard_size))
    except (CsvError, ValueError) as e:
        finish_campaign(settings, store, csv_key, False, {"error": str(e), "stage": "validate"})
        raise CampaignFailed(str(e)) from None
    return {"plan_key": f"{plan.prefix}work/plan.json", "csv_key": csv_key, "campaign": plan.campaign,
            "run_id": plan.run_id, "shards": plan.shards, "stats": plan.stats}


def _load_plan(settings: Settings, store: Storage, plan_key: str) -> Any:
    from gen_engine.render.campaign import Plan

    return Plan.from_json(json.loads(store.get_bytes(settings.bucket_renders, plan_key)))


def render_planned_shard(settings: Settings, plan_key: str, index: int) -> dict[str, Any]:
    from gen_engine import registry
    from gen_engine.render.campaign import RenderEnv, render_shard
    from gen_engine.runtime import load_backend
    from gen_engine.text import shared_encoder

    store, lineage = Storage.from_settings(settings), LineageStore.from_settings(settings)
    plan = _load_plan(settings, store, plan_key)
    model_dir, model = registry.resolve(plan.model_ref, settings, store, lineage)
    env = RenderEnv(load_backend(plan.backend, model_dir), model, shared_encoder())
    return render_shard(plan, index, settings, store, env)


def finalize_campaign(settings: Settings, plan_key: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    from gen_engine import registry
    from gen_engine.render.campaign import finalize

    store, lineage = Storage.from_settings(settings), LineageStore.from_settings(settings)
    plan = _load_plan(settings, store, plan_key)
    _, model = registry.resolve(plan.model_ref, settings, store, lineage)
    backend = next((r.get("backend") for r in results if r.get("backend")), plan.backend)
    summary = finalize(plan, settings, store, lineage, model, backend, results)
    finish_campaign(settings, store, plan.csv_key.removeprefix(f"{settings.bucket_campaigns}/"), True,
                    {"summary": f"s3://{settings.bucket_renders}/{plan.prefix}summary.json", **summary["counts"]})
    return {"prefix": summary["prefix"], "counts": summary["counts"]}


def fail_campaign(settings: Settings, csv_key: str, reason: str) -> str | None:
    """Move the CSV to failed/ unless it was already moved (by the step that knew the reason)."""
    if not csv_key:
        return None  # a manual run with an empty form: there is no file to move
    store = Storage.from_settings(settings)
    csv_key = csv_key.removeprefix(f"{settings.bucket_campaigns}/")
    if not store.exists(settings.bucket_campaigns, csv_key):
        return None
    return finish_campaign(settings, store, csv_key, False, {"error": reason})


def ingest_and_file(settings: Settings, drop: dict[str, str]) -> dict[str, Any]:
    """Ingest one raw drop and move it to done/ or failed/ with its report (the dataset_ingest DAG)."""
    from gen_engine.datasets.ingest import DropRejected, ingest
    from gen_engine.datasets.readers import DropError

    store, lineage = Storage.from_settings(settings), LineageStore.from_settings(settings)
    try:
        r = ingest(f"s3://{settings.bucket_datasets}/{drop['key']}", drop["dataset"], settings, store, lineage)
    except (DropRejected, DropError) as e:
        report = getattr(e, "report", {"error": str(e)})
        finish_drop(settings, store, drop["key"], False, {"error": str(e), **report})
        return {"ok": False, "error": str(e), "dataset": drop["dataset"]}
    from dataclasses import asdict

    result = asdict(r)
    finish_drop(settings, store, drop["key"], True, result)
    return {"ok": True, **result, "asset_uri": f"s3://{settings.bucket_datasets}/curated/{r.dataset}"}

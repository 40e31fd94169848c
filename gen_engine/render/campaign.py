"""The main job: a prompt CSV in; images with metadata, manifests, rejects and a gallery out, in S3.

    genengine render s3://campaigns/claimed/spring_sale.csv --campaign spring_sale

Three stages, one module each, the same functions for the CLI and the Airflow DAG (which maps the middle):
1. `plan.prepare`: validate the CSV and cut it into shards (a small JSON plan);
2. `shard.render_shard`: render one shard, resumably;
3. `finalize.finalize`: manifests, rejects, contact sheet, gallery, summary, lineage.

This module runs the three in one process: what `genengine render` does.
"""

from __future__ import annotations

import logging
from typing import Any

from gen_engine.render.finalize import finalize
from gen_engine.render.plan import prepare
from gen_engine.render.shard import RenderEnv, render_shard
from gen_engine.resources import Resources

log = logging.getLogger(__name__)


def run_campaign(source: str, campaign: str, res: Resources, *, model_ref: str = "production",
                 backend: str = "auto", shard_size: int | None = None, progress: bool = True) -> dict[str, Any]:
    """prepare -> render every shard -> finalize: what `genengine render` runs (the DAG maps the middle)."""
    from gen_engine.runtime import load_backend
    from gen_engine.text import shared_encoder

    settings, store = res.settings, res.storage
    model_dir, model = res.registry.resolve(model_ref)
    plan = prepare(source, campaign, settings, store, model_ref=model_ref, backend=backend, shard_size=shard_size)
    env = RenderEnv.from_settings(load_backend(backend, model_dir), model, shared_encoder(), settings)
    res.lineage.start_run(plan.run_id, plan.campaign, csv_key=plan.csv_key, csv_sha256=plan.csv_sha256,
                          model_id=model["model_id"], backend=env.backend.name)
    try:
        results = [render_shard(plan, s["index"], settings, store, env, progress=progress) for s in plan.shards]
        return finalize(plan, settings, store, res.lineage, model, env.backend.name, results)
    except BaseException as e:  # recorded as failed (a rerun resumes it and records success), then re-raised
        try:
            res.lineage.fail_run(plan.run_id, plan.stats, f"{type(e).__name__}: {e}", plan.csv_key)
        except Exception:  # the database may be what failed: the original error is the one to see
            log.warning("could not record run %s as failed in the lineage store", plan.run_id, exc_info=True)
        raise

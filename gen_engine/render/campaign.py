"""The main job: a prompt CSV in; images with metadata, manifests, rejects and a gallery out, in S3.

    genengine render s3://campaigns/claimed/spring_sale.csv --campaign spring_sale

Three stages, one module each, the same functions for the CLI and the Airflow DAG (which maps the middle):
1. `plan.prepare`: validate the CSV and cut it into shards (a small JSON plan);
2. `shard.render_shard`: render one shard, resumably;
3. `finalize.finalize`: manifests, rejects, contact sheet, gallery, summary, lineage.

This module runs the three in one process: what `genengine render` does.
"""

from __future__ import annotations

from typing import Any

from gen_engine.render.finalize import finalize
from gen_engine.render.plan import prepare
from gen_engine.render.shard import RenderEnv, render_shard
from gen_engine.resources import Resources


def run_campaign(source: str, campaign: str, res: Resources, *, model_ref: str = "production",
                 backend: str = "auto", shard_size: int | None = None, progress: bool = True) -> dict[str, Any]:
    """prepare -> render every shard -> finalize: what `genengine render` runs (the DAG maps the middle)."""
    from gen_engine.runtime import load_backend
    from gen_engine.text import shared_encoder

    settings, store = res.settings, res.storage
    model_dir, model = res.registry.resolve(model_ref)
    plan = prepare(source, campaign, settings, store, model_ref=model_ref, backend=backend, shard_size=shard_size)
    env = RenderEnv.from_settings(load_backend(backend, model_dir), model, shared_encoder(), settings)
    results = [render_shard(plan, s["index"], settings, store, env, progress=progress) for s in plan.shards]
    return finalize(plan, settings, store, res.lineage, model, env.backend.name, results)

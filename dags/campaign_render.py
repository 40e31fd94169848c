"""
### campaign_render
Renders one prompt CSV: **validate and plan** (bad rows quarantined with reasons, a GX report over the
accepted rows, shards of `GEN_RENDER_SHARD_SIZE` images) -> **render_shard** mapped over the shards (each
labelled with its spreadsheet row range; resumable: images already in S3 are reused) -> **finalize**
(manifests, rejected.csv, contact sheet, gallery, lineage) -> the CSV moves to `processed/`, or to
`failed/` with a report when the file is unusable (no retry) or rendering fails. Outputs:
`s3://renders/<campaign>/<run>/`.

Triggered by **campaign_watch**, by the REST API, or by hand with the form below.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, get_current_context, task
from gen_airflow.dag_defaults import DEFAULT_ARGS, SETTINGS, START, route

PARAMS = {
    "csv_key": Param("", type="string", description="Key in the campaigns bucket (claimed/… or incoming/…)."),
    "campaign": Param("", type="string", description="Campaign name; default: the CSV's file name."),
    "backend": Param("auto", enum=["auto", "tensorrt", "onnxruntime", "torch"]),
    "shard_size": Param(SETTINGS.render_shard_size, type="integer", minimum=1, maximum=100_000,
                        description="Images per shard."),
    "model": Param("production", type="string", description="Model alias or id."),
    "label": Param("", enum=["", "none", "corner", "edge"],
                   description="Visible AI label of rows without a `label` column value; empty: the deployment's "
                               "default (GEN_RENDER_LABEL)."),
}


# Active from the start: it has no schedule of its own, and a triggered run of a paused DAG waits forever.
@dag(schedule=None, start_date=START, catchup=False, max_active_runs=4, tags=["campaigns", "gen-engine"],
     default_args=DEFAULT_ARGS, params=PARAMS, doc_md=__doc__, render_template_as_native_obj=True,
     is_paused_upon_creation=False)
def campaign_render():
    @task(retries=1)
    def validate_and_plan(params: dict) -> dict:
        from gen_airflow import call

        from gen_engine.orchestration import plan_campaign

        ctx = get_current_context()
        return call(plan_campaign, params, dag_run=(ctx["dag"].dag_id, ctx["run_id"]))

    @task
    def shard_refs(plan: dict) -> list[dict]:
        return [{"plan_key": plan["plan_key"], "index": s["index"], "rows": f"rows {s['first_row']}-{s['last_row']}"}
                for s in plan["shards"]]

    @task(**route("render"), max_active_tis_per_dag=SETTINGS.airflow_render_shards_per_run,
          map_index_template="{{ shard_label }}")
    def render_shard(ref: dict) -> dict:
        get_current_context()["shard_label"] = ref["rows"]
        from gen_airflow import call

        from gen_engine.orchestration import render_planned_shard

        return call(render_planned_shard, ref["plan_key"], ref["index"])

    @task
    def finalize(plan: dict, results: list[dict]) -> dict:
        from gen_airflow import call

        from gen_engine.orchestration import finalize_campaign

        return call(finalize_campaign, plan["plan_key"], list(results))

    @task(trigger_rule="one_failed", retries=0)
    def mark_failed(params: dict) -> None:
        """Any failure above: the CSV goes to failed/ with what went wrong (a file-level reason was already
        recorded by validate_and_plan, which moved the CSV itself)."""
        from gen_airflow import call

        from gen_engine.orchestration import fail_campaign

        plan = get_current_context()["ti"].xcom_pull(task_ids="validate_and_plan")
        call(fail_campaign, plan["csv_key"] if plan else params["csv_key"],
             "rendering failed; see the Airflow task logs of this run", plan)

    plan = validate_and_plan()
    done = finalize(plan, render_shard.expand(ref=shard_refs(plan)))
    done >> mark_failed()


campaign_render()

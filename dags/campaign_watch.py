"""
### campaign_watch
Every minute: claim each CSV in `s3://campaigns/incoming/` by moving it to `claimed/` (exactly once,
even when runs overlap: a conditional write decides the single winner) and trigger **campaign_render**
for it. Marketing teams only drop CSVs; this DAG is how they get picked up.

**Instant alternative:** point an S3 bucket notification (MinIO `mc event add`, SeaweedFS filer
notifications, or AWS S3 event notifications through a small relay) at Airflow's REST API:
`POST /api/v2/dags/campaign_render/dagRuns` with `{"conf": {"csv_key": "incoming/x.csv", "campaign": "x"}}`
and a token from `POST /auth/token`. The render DAG claims the CSV itself when it is still in `incoming/`.
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task
from gen_airflow.dag_defaults import DEFAULT_ARGS, START


@dag(schedule="* * * * *", start_date=START, catchup=False, max_active_runs=2, tags=["campaigns", "gen-engine"],
     default_args=DEFAULT_ARGS, doc_md=__doc__)
def campaign_watch():
    @task
    def claim_new_csvs() -> list[dict]:
        """Move every new CSV to claimed/; returns one render conf per CSV claimed by this run."""
        from gen_airflow import call

        from gen_engine.orchestration import claim_incoming

        claims = call(claim_incoming)
        print(f"claimed {len(claims)} CSV(s): {[c['source'] for c in claims]}")
        return [{"csv_key": c["csv_key"], "campaign": c["campaign"]} for c in claims]

    TriggerDagRunOperator.partial(task_id="trigger_render", trigger_dag_id="campaign_render",
                                  retries=0).expand(conf=claim_new_csvs())


campaign_watch()

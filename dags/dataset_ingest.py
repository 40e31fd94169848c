"""
### dataset_ingest
Every 10 minutes (`GEN_INGEST_SCHEDULE` to change): find new drops in `s3://datasets/raw/<dataset>/`,
ingest each one (mapped): records are checked, bad ones quarantined with their reason and bytes, the
Great Expectations suites run, and a versioned curated dataset is published to
`s3://datasets/curated/<dataset>/<version id>/` (re-ingesting identical content is a no-op). The drop then moves
to `done/` (or `failed/` with its report). For the retrain's dataset (`GEN_RETRAIN_DATASET`), the new version's
evaluation encoder is trained here, once, and kept in S3 beside it (`evaluation/`), so the retrain's
`evaluate` only loads it. The curated dataset's Asset is then updated, which wakes **generator_retrain**.
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias, dag, get_current_context, task
from gen_airflow.dag_defaults import DEFAULT_ARGS, SETTINGS, START

CURATED = AssetAlias("curated_datasets")


@dag(schedule=SETTINGS.ingest_schedule, start_date=START, catchup=False,
     max_active_runs=1, tags=["datasets", "gen-engine"], default_args=DEFAULT_ARGS, doc_md=__doc__)
def dataset_ingest():
    @task
    def find_drops() -> list[dict]:
        from gen_airflow import call

        from gen_engine.orchestration import find_drops as find

        drops = call(find)
        print(f"{len(drops)} new drop(s): {[d['key'] for d in drops]}")
        return drops

    @task(outlets=[CURATED], map_index_template="{{ drop_key }}", max_active_tis_per_dag=1)
    def ingest_drop(drop: dict) -> dict:
        ctx = get_current_context()
        ctx["drop_key"] = drop["key"]
        from gen_airflow import call

        from gen_engine.orchestration import ingest_and_file

        result = call(ingest_and_file, drop)  # a rejected drop is filed under failed/ and fails the task
        ctx["outlet_events"][CURATED].add(Asset(name=f"curated_{result['dataset']}", uri=result["asset_uri"]),
                                          extra={"version": result["version"]})
        return result

    ingest_drop.expand(drop=find_drops())


dataset_ingest()

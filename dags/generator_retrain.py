"""
### generator_retrain
Nightly at 02:00 UTC (`GEN_RETRAIN_SCHEDULE`) and whenever a curated dataset is updated. Skips when
neither the data (latest curated version of `GEN_RETRAIN_DATASET`) nor the training config changed
since the production model, or when a challenger for this data, config and champion was already
trained and not promoted.
Otherwise: **train** (pool `gpu`; warm-started from the champion when the config says
`init_from: production`, the default) -> **evaluate** challenger and
champion on the same held-out split -> **gate** (promote only if Frechet distance is not worse by more
than 2% and R-precision not lower by more than 0.02; thresholds in the settings; the first model is
promoted) -> **promote** (compile to ONNX, TensorRT where present; register the engines; move the
`production` alias) -> the model Asset is updated. Train, evaluate and promote run on the queue
`GEN_AIRFLOW_GPU_QUEUE` when their kind is in `GEN_AIRFLOW_GPU_TASKS` (`Settings.task_route`).
"""

from __future__ import annotations

from airflow.sdk import Asset, AssetAlias, AssetOrTimeSchedule, CronTriggerTimetable, dag, task
from gen_airflow.dag_defaults import DEFAULT_ARGS, SETTINGS, START, route

PRODUCTION_MODEL = Asset(name="generator_production", uri="s3://models/generator")


@dag(schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable(SETTINGS.retrain_schedule, timezone="UTC"),
                                  assets=AssetAlias("curated_datasets")),
     start_date=START, catchup=False, max_active_runs=1, tags=["models", "gen-engine"], default_args=DEFAULT_ARGS,
     doc_md=__doc__)
def generator_retrain():
    @task.short_circuit
    def decide() -> dict | bool:
        from gen_airflow import call

        from gen_engine.orchestration import retrain_decision

        d = call(retrain_decision)
        print(f"retrain: {d['reason']}")
        return d if d["train"] else False

    @task(**route("train"), retries=1)
    def train(decision: dict) -> dict:
        from gen_airflow import call

        from gen_engine.orchestration import train_candidate

        return call(train_candidate, decision) | {"decision": decision}

    @task(**route("evaluate"))
    def evaluate(candidate: dict) -> dict:
        from gen_airflow import call

        from gen_engine.orchestration import evaluate_candidates

        return call(evaluate_candidates, candidate["model_id"], candidate["decision"])

    @task.short_circuit
    def gate(metrics: dict) -> dict | bool:
        from gen_airflow import call

        from gen_engine.orchestration import gate_and_record

        promote, reason = call(gate_and_record, metrics)
        print(reason)
        champion = (metrics["champion"] or {}).get("model_id")  # promote re-checks it is still the champion
        return {**metrics["challenger"], "gated_against": champion} if promote else False

    @task(**route("compile"), outlets=[PRODUCTION_MODEL])
    def promote(challenger: dict) -> dict:
        from gen_airflow import call

        from gen_engine.orchestration import promote as do_promote

        result = call(do_promote, challenger["model_id"], challenger["gated_against"])
        print(result["reason"])
        return result

    promote(gate(evaluate(train(decide()))))


generator_retrain()

"""Defaults shared by the factory's DAGs. Import-light on purpose: DAG files are parsed often.

`SETTINGS` is the factory's typed settings read from the environment at parse time (schedules,
queues, Param defaults: nothing secret is read from it here; tasks read theirs with
`gen_airflow.factory_settings`)."""

from __future__ import annotations

from datetime import timedelta

import pendulum

from gen_engine.config import Settings

SETTINGS = Settings()
START = pendulum.datetime(2026, 1, 1, tz="UTC")
# Transient failures (S3 restarting, a worker lost) are retried with backoff; user errors (bad input)
# are not: `gen_airflow.call` turns them into AirflowFailException after the step recorded the reason.
DEFAULT_ARGS = {
    "owner": "gen-engine",
    "retries": 3,
    "retry_delay": timedelta(seconds=SETTINGS.airflow_retry_delay_s),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "queue": SETTINGS.airflow_default_queue,
}


def route(kind: str) -> dict[str, str]:
    """``@task(**route("train"))``: the queue and pool of a kind of task, from the settings."""
    return SETTINGS.task_route(kind)

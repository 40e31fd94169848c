"""Defaults shared by the factory's DAGs. Import-light on purpose: DAG files are parsed often."""

from __future__ import annotations

from datetime import timedelta

import pendulum

START = pendulum.datetime(2026, 1, 1, tz="UTC")
# Transient failures (S3 restarting, a worker lost) are retried with backoff; data errors are not
# retried: tasks raise AirflowFailException for those after recording the reason.
DEFAULT_ARGS = {
    "owner": "gen-engine",
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}

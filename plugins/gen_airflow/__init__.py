"""Airflow-side glue of the campaign image factory (kept out of gen_engine, which never imports Airflow).

- `factory_settings()`: the typed `gen_engine` settings from the environment, with the S3 endpoint
  and credentials taken from the Airflow connection ``gen_s3`` when it exists (deployments keep
  secrets there). Call it inside tasks only, never at parse time.
- `factory_resources()`: the process's `gen_engine.resources.Resources` for those settings, built
  once per process (the web app's requests and a worker's tasks share one S3 client and one engine).
- `call(step, *args)`: how a DAG task runs a `gen_engine.orchestration` step: with the resources,
  and with a `UserError` (bad input: retrying cannot help) turned into ``AirflowFailException``, so
  the task fails at once instead of retrying; other errors keep the task's retries.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    from gen_engine.config import Settings
    from gen_engine.resources import Resources

log = logging.getLogger(__name__)


def factory_settings() -> Settings:
    from gen_engine.config import Settings

    base = Settings()
    try:
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(base.airflow_s3_conn_id)
    except Exception:  # no such connection (or no Airflow context): the environment is the source
        return base
    extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else json.loads(conn.extra or "{}")
    endpoint = extra.get("endpoint_url") or (f"{conn.host}:{conn.port}" if conn.host else None)
    updates: dict[str, object] = {}
    if endpoint:
        updates["s3_endpoint"] = endpoint.split("://", 1)[-1]
        updates["s3_secure"] = endpoint.startswith("https://")
    if conn.login and conn.password:
        updates["s3_access_key"], updates["s3_secret_key"] = conn.login, conn.password
    return Settings(**{**{k: getattr(base, k) for k in type(base).model_fields}, **updates})


def factory_resources() -> Resources:
    from gen_engine.resources import resources

    return resources(factory_settings())


def call(step: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``step(factory_resources(), *args, **kwargs)``; a user error fails the task without retries."""
    from gen_engine.errors import UserError

    try:
        return step(factory_resources(), *args, **kwargs)
    except UserError as e:
        from airflow.sdk.exceptions import AirflowFailException

        log.error("%s", e)
        raise AirflowFailException(str(e)) from e

"""Connection arguments for Airflow's metadata database, named in airflow.cfg by import path.

    [database]
    sql_alchemy_connect_args = gen_engine.infra.airflow_db.CONNECT_ARGS

The embedded stack keeps Airflow's metadata in SQLite, where one writer holds the whole file. Python's
sqlite3 waits 5 s for that lock and then fails the query ("database is locked", which the API server
answers as a 500 'Database error'); on a busy 2-core machine the DAG processor's writes hold it longer
than that, and `make demo` lost its dagRuns POST to it. Waiting up to ``SQLITE_TIMEOUT_S`` instead turns
those failures into short waits. Other databases get no extra arguments (sqlite3's ``timeout`` would be
an unknown connect option to their drivers), so a deployment that points the same airflow.cfg at
PostgreSQL keeps working.
"""

from __future__ import annotations

from typing import Any

SQLITE_TIMEOUT_S = 60.0


def connect_args(sql_alchemy_conn: str) -> dict[str, Any]:
    """The DB-API connect arguments for a metadata database URL."""
    return {"timeout": SQLITE_TIMEOUT_S} if sql_alchemy_conn.startswith("sqlite") else {}


def _configured() -> dict[str, Any]:
    from airflow.configuration import conf

    return connect_args(conf.get("database", "sql_alchemy_conn", fallback=""))


# Read by Airflow (conf.getimport) when it sets up its engine, after its configuration is loaded.
CONNECT_ARGS: dict[str, Any] = _configured()

"""A throwaway Airflow home (SQLite) for the DAG tests, set up before Airflow is first imported.

Its `gen_s3` connection points at the session's SeaweedFS server, so tasks read their S3 settings the
way a deployment does: from the Airflow connection.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOME = Path(tempfile.mkdtemp(prefix="gen-airflow-"))
os.environ.update({
    "AIRFLOW_HOME": str(HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{HOME / 'airflow.db'}",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
})
sys.path.insert(0, str(REPO / "plugins"))


@pytest.fixture(scope="session")
def airflow_db(s3_settings) -> Path:
    """Migrated Airflow DB with the gen_s3 connection (test S3 server) and the pools."""
    from gen_engine.infra.services import init_airflow_home

    init_airflow_home(s3_settings)
    return HOME


@pytest.fixture()
def factory_env(s3_settings, airflow_db, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Tasks see the test's local dir and lineage DB; S3 comes from the Airflow connection."""
    for k in ("GEN_S3_ENDPOINT", "GEN_S3_ACCESS_KEY", "GEN_S3_SECRET_KEY", "AWS_ACCESS_KEY_ID",
              "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("GEN_LOCAL_DIR", str(s3_settings.local_dir))
    monkeypatch.setenv("GEN_RETRAIN_CONFIG", str(REPO / "configs" / "dag-test.yaml"))
    yield

"""The embedded S3 server's life cycle: start, reuse, port clash, stop only what we started."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from gen_engine.infra.services import LocalS3, S3Ports, ServiceError, port_free


def test_start_reuse_stop(tmp_path: Path) -> None:
    server = LocalS3(tmp_path / "s3", S3Ports.free(), "k-test", "s-test-secret")
    server.start(["datasets", "models"])
    try:
        pid = server.pid()
        assert pid is not None
        assert {b.name for b in server.storage().client.list_buckets()} >= {"datasets", "models"}
        # Every listening socket of the process is on loopback.
        out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        mine = [line for line in out.splitlines() if f"pid={pid}," in line]
        assert mine and all("127.0.0.1:" in line for line in mine), mine
        server.start(["datasets", "renders"])  # a second `up` reuses the process, adds the bucket
        assert server.pid() == pid
        assert server.storage().client.bucket_exists("renders")
    finally:
        assert server.stop()
    # Stopped means its ports are free at once: a restart on the same ports (the outage test) must not clash.
    assert all(port_free(p) for p in server.ports.named().values())
    assert server.pid() is None and not server.stop()


def test_port_in_use_is_named(tmp_path: Path) -> None:
    ports = S3Ports.free()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", ports.s3))
        blocker.listen()
        server = LocalS3(tmp_path / "s3", ports, "k", "s")
        with pytest.raises(ServiceError, match=rf"s3 {ports.s3}.*GEN_LOCAL_S3_PORT"):
            server.start(["datasets"])
    assert server.pid() is None


def test_stop_ignores_a_foreign_pid(tmp_path: Path) -> None:
    """A stale pid file naming someone else's process never gets that process killed."""
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        server = LocalS3(tmp_path / "s3", S3Ports.free(), "k", "s")
        server.data_dir.mkdir(parents=True)
        server.pid_file.write_text(str(sleeper.pid))
        assert server.pid() is None
        assert not server.stop()
        assert sleeper.poll() is None
    finally:
        sleeper.kill()


def test_airflow_home_is_prepared_idempotently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DB migrated, `gen_s3` connection and `gpu` pool present; a second run changes nothing but works."""
    import sqlite3

    from gen_engine.config import Settings
    from gen_engine.infra.services import init_airflow_home

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow"))
    for var in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER"):
        monkeypatch.delenv(var, raising=False)  # set process-wide by the DAG tests' harness; they would win
    settings = Settings(local_dir=tmp_path, s3_access_key="ak-test", s3_secret_key="sk-test", airflow_gpu_pool_slots=2)
    home = init_airflow_home(settings)
    first = _read_cfg(home / "airflow.cfg")
    with open(home / "airflow.cfg", "a") as f:
        f.write("[scheduler]\nmin_file_process_interval = 7\n")  # a user's edit
    init_airflow_home(settings)
    cfg = _read_cfg(home / "airflow.cfg")
    assert cfg["core"]["load_examples"] == "False" and cfg["core"]["dags_folder"].endswith("/dags")
    assert cfg["core"]["plugins_folder"].endswith("/plugins") and cfg["api"]["host"] == "127.0.0.1"
    assert cfg["scheduler"]["min_file_process_interval"] == "7"
    # One JWT secret for scheduler and API server (else every task dies at start), kept across runs; 0600.
    assert len(cfg["api_auth"]["jwt_secret"]) >= 32 and cfg["api_auth"]["jwt_secret"] == first["api_auth"]["jwt_secret"]
    assert cfg["core"]["fernet_key"] == first["core"]["fernet_key"]
    assert (home / "airflow.cfg").stat().st_mode & 0o777 == 0o600
    # SQLite waits for its write lock (Airflow resolved this path for the migration above); other DBs get nothing.
    from gen_engine.infra.airflow_db import SQLITE_TIMEOUT_S, connect_args

    assert cfg["database"]["sql_alchemy_connect_args"] == "gen_engine.infra.airflow_db.CONNECT_ARGS"
    assert connect_args(cfg["database"]["sql_alchemy_conn"]) == {"timeout": SQLITE_TIMEOUT_S} and SQLITE_TIMEOUT_S > 5
    assert connect_args("postgresql+psycopg2://u@127.0.0.1/airflow") == {}
    db = sqlite3.connect(home / "airflow.db")
    assert db.execute("SELECT slots FROM slot_pool WHERE pool = 'gpu'").fetchall() == [(2,)]
    conns = db.execute("SELECT conn_type, login, password, extra, is_encrypted FROM connection "
                       "WHERE conn_id = 'gen_s3'").fetchall()
    assert len(conns) == 1 and conns[0][0] == "aws" and conns[0][1] == "ak-test"
    assert conns[0][4] and "sk-test" not in conns[0][2]  # encrypted at rest with the installation's Fernet key
    from cryptography.fernet import Fernet

    assert "http://127.0.0.1:8333" in Fernet(cfg["core"]["fernet_key"].encode()).decrypt(conns[0][3]).decode()


def _read_cfg(path: Path) -> dict[str, dict[str, str]]:
    import configparser

    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    return {section: dict(parser[section]) for section in parser.sections()}

"""Shared fixtures: a real SeaweedFS S3 server and, when asked for, a real PostgreSQL server.

Both bind to 127.0.0.1 on free ports, live in a temporary folder, and are stopped at the end of the
session. Nothing here mocks S3 or SQL.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gen_engine.config import Settings
from gen_engine.infra.services import LocalS3, S3Ports
from gen_engine.infra.storage import Storage

BUCKETS = ["datasets", "models", "campaigns", "renders"]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """A SeaweedFS `weed mini` on free loopback ports with random credentials, for the whole session."""
    server = LocalS3(tmp_path_factory.mktemp("s3"), S3Ports.free(), "test-" + secrets.token_hex(4),
                     secrets.token_hex(16))
    server.start(BUCKETS)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_settings(s3_server: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings pointing at the session's S3 server and a temporary local dir."""
    return Settings(
        s3_endpoint=s3_server.endpoint, s3_access_key=s3_server._access_key, s3_secret_key=s3_server._secret_key,
        local_dir=tmp_path_factory.mktemp("local"), s3_retries=2,
    )


@pytest.fixture()
def storage(s3_settings: Settings) -> Storage:
    return Storage.from_settings(s3_settings)


def run_at_once(n: int, fn):
    """``fn(i)`` for i in range(n) on n threads released together; results (or the exceptions) in order."""
    import threading

    out: list = [None] * n
    gate = threading.Barrier(n)

    def run(i: int) -> None:
        gate.wait()
        try:
            out[i] = fn(i)
        except Exception as e:  # noqa: BLE001 (collected for the caller's assertion)
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.fixture()
def at_once():
    """`run_at_once`: the tests of races (claims, registrations, downloads) start their contenders together."""
    return run_at_once


# --- Debian packages and ports ------------------------------------------------------------------------
def apt_install(package: str) -> None:
    """Debian's ``package``, installed with apt where this is root (elsewhere nothing happens: the caller
    checks what it needs and skips or fails saying why)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
    subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, capture_output=True, check=False)


def debian_tool(binary: str, package: str, who: str) -> str:
    """``binary`` from PATH, installing Debian's ``package`` first where it is missing; ``who`` (the tests
    that need it) skip, saying so, where it cannot be installed."""
    if shutil.which(binary) is None:
        apt_install(package)
    if found := shutil.which(binary):
        return found
    pytest.skip(f"{who} need {binary} (Debian's {package}), which is not installed and cannot be installed here "
                f"(not root, or no apt-get): `apt-get install {package}`")


@pytest.fixture(scope="session")
def debian():
    """`debian_tool`: a system program the tests need (chromium, redis-server, exiftool)."""
    return debian_tool


@pytest.fixture(scope="session")
def apt():
    """`apt_install`: a Debian package with no program to look for (fonts)."""
    return apt_install


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """A function returning a free loopback port, for the servers a test starts."""
    return _free_port


# --- PostgreSQL ---------------------------------------------------------------------------------------
def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; skipped unless GEN_TEST_POSTGRES=1."""
    if os.environ.get("GEN_TEST_POSTGRES") != "1":
        pytest.skip("PostgreSQL lineage tests run when GEN_TEST_POSTGRES=1 (set by .ci/run)")
    if _pg_bin() is None:
        apt_install("postgresql")  # CI sets GEN_TEST_POSTGRES=1
    bindir = _pg_bin()
    assert bindir is not None, "postgresql installed but initdb not found"
    # Not under pytest's tmp folder: that is private to root, and the server runs as `postgres`.
    sock = Path(tempfile.mkdtemp(prefix="gen-pg-"))
    data = sock / "data"
    port = S3Ports.free().s3
    as_pg: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(sock, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "gen"],
                   check=True, capture_output=True)
    subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(sock / "pg.log"),
                    "-o", f"-h 127.0.0.1 -p {port} -k {sock}", "start"], check=True, capture_output=True)
    try:
        deadline = time.monotonic() + 30
        import sqlalchemy as sa

        url = f"postgresql+psycopg://gen@127.0.0.1:{port}/postgres"
        while True:
            try:
                sa.create_engine(url).connect().close()
                break
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield url
    finally:
        subprocess.run([*as_pg, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(sock, ignore_errors=True)

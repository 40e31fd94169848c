"""What the campaign benchmarks share: a private S3 server, measurements in child processes, peak RSS."""

from __future__ import annotations

import json
import os
import resource
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def peak_rss_mb() -> float:
    """This process's peak resident set size (MB): each measurement runs in its own child for this."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(script: str, kind: str, env: dict[str, str], *args: str) -> dict:
    """Run ``script --child kind args...`` in a fresh process; its last stdout line is the JSON result."""
    out = subprocess.run([sys.executable, script, "--child", kind, *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"child {kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


@contextmanager
def bench_s3(folder: Path, buckets: list[str]) -> Iterator[dict[str, str]]:
    """A SeaweedFS on free loopback ports with random credentials, for one benchmark; yields the
    environment (S3 endpoint and credentials, a local dir under ``folder``) its children run with."""
    from gen_engine.infra.services import LocalS3, S3Ports

    server = LocalS3(folder / "s3", S3Ports.free(), "bench-" + secrets.token_hex(3), secrets.token_hex(12))
    server.start(buckets)
    try:
        yield os.environ | {"GEN_S3_ENDPOINT": server.endpoint, "GEN_S3_ACCESS_KEY": server._access_key,
                            "GEN_S3_SECRET_KEY": server._secret_key, "GEN_LOCAL_DIR": str(folder / "local")}
    finally:
        server.stop()


def cpu_name() -> str:
    """The CPU model and its SIMD flags, for the results (figures depend on them)."""
    from gen_engine.training.device import cpu_bf16_native, cpu_info

    model, flags = cpu_info()
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    return f"{model} ({', '.join(simd) or 'no AVX flags'}; {cpu_bf16_native()[1]})"

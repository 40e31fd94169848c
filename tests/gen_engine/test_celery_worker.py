"""The Celery workers' preload: the render code is imported once per worker, never in the scheduler.

Each check runs in a fresh interpreter: importing the module loads Airflow's configuration, which must
not happen inside this test process before the DAG tests have set up their own Airflow home."""

from __future__ import annotations

import json
import subprocess
import sys

SIGNAL = """
import json, sys
import gen_engine.infra.celery_worker as w
before = {m: m in sys.modules for m in w.PRELOAD}
from celery.signals import import_modules
import_modules.send(sender=None)   # what a Celery worker does before it forks its pool
after = {m: m in sys.modules for m in w.PRELOAD}
print(json.dumps({"before": before, "after": after}))
"""

BROKEN = """
import json, logging
import gen_engine.infra.celery_worker as w
seen = []
class Keep(logging.Handler):
    def emit(self, record): seen.append(record.getMessage())
w.log.addHandler(Keep())
took = w.preload(("json", "gen_engine.no_such_module"))
print(json.dumps({"took": sorted(took), "logged": seen}))
"""


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_config_loads_nothing_heavy_and_the_worker_signal_imports_the_render_code() -> None:
    seen = _run(SIGNAL)
    # The scheduler imports the config too (the CeleryExecutor reads it): no torch, no render code there.
    assert not any(seen["before"][m] for m in ("torch", "onnxruntime", "gen_engine.render.shard")), seen
    assert all(seen["after"].values()), seen


def test_a_module_that_fails_to_import_is_skipped_with_a_warning() -> None:
    seen = _run(BROKEN)
    assert seen["took"] == ["json"]
    assert any("preload of gen_engine.no_such_module failed" in m for m in seen["logged"]), seen

"""The Celery workers' preload: the render code is imported once per worker, never in the scheduler."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

# At import, not inside a test: importing it loads Airflow's logging config, which replaces the root
# logger's handlers (pytest's log capture among them).
from gen_engine.infra.celery_worker import preload

PROBE = """
import json, sys
import gen_engine.infra.celery_worker as w
before = {m: m in sys.modules for m in w.PRELOAD}
from celery.signals import import_modules
import_modules.send(sender=None)   # what a Celery worker does before it forks its pool
after = {m: m in sys.modules for m in w.PRELOAD}
print(json.dumps({"before": before, "after": after}))
"""


def test_importing_the_config_loads_nothing_heavy_and_the_worker_signal_imports_the_render_code() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=300)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # The scheduler imports the config too (the CeleryExecutor reads it): no torch, no render code there.
    assert not any(seen["before"][m] for m in ("torch", "onnxruntime", "gen_engine.render.shard")), seen
    assert all(seen["after"].values()), seen


def test_a_module_that_fails_to_import_is_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gen_engine.infra.celery_worker"):
        took = preload(("json", "gen_engine.no_such_module"))
    assert set(took) == {"json"}
    assert "preload of gen_engine.no_such_module failed" in caplog.text

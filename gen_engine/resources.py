"""The factory's shared resources, built in one place: settings, S3 storage, the lineage store, the registry.

    res = resources()            # the CLI: from the environment
    res = resources(settings)    # a DAG task (gen_airflow.factory_resources) or a test

`resources` keeps one `Resources` per distinct settings in the process, so every caller in one
process (the web app's requests, a worker's tasks) shares one S3 client and one database engine, and
the lineage schema is applied once. Storage and lineage are built on first use: a command that needs
only S3 never opens the database, and one that reads a local folder needs neither.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from gen_engine.config import Settings, get_settings
from gen_engine.infra.lineage import LineageStore
from gen_engine.infra.storage import Storage
from gen_engine.registry import ModelRegistry

_LOCK = threading.Lock()
_BUILT: dict[Settings, Resources] = {}


class Resources:
    """What a stage needs from the outside world; pass this, not its parts."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()
        self._built: dict[str, Any] = {}

    def _once(self, name: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            if name not in self._built:
                self._built[name] = build()
            return self._built[name]

    @property
    def storage(self) -> Storage:
        return self._once("storage", lambda: Storage.from_settings(self.settings))

    @property
    def lineage(self) -> LineageStore:
        return self._once("lineage", lambda: LineageStore.from_settings(self.settings))

    @property
    def registry(self) -> ModelRegistry:
        return self._once("registry", lambda: ModelRegistry(self))


def resources(settings: Settings | None = None) -> Resources:
    """The process's resources for these settings (default: read from the environment), built once."""
    settings = settings if settings is not None else get_settings()
    with _LOCK:
        if settings not in _BUILT:
            _BUILT[settings] = Resources(settings)
        return _BUILT[settings]

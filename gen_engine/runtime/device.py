"""Turns on a worker's device: the tasks of one worker use its accelerator one at a time.

A GPU worker is fed best by running a few tasks at once (Celery ``--concurrency 4``): while one
render shard draws, the next starts its task process, loads its model and encodes its captions, and
the previous one finishes encoding, signing and uploading its images and reports success. Only the
drawing needs the device, so only the drawing takes a turn: an exclusive lock on
``<local_dir>/locks/device.lock`` (``flock``: released by the kernel when its holder dies, so a killed
task never leaves the device locked). Training on CUDA takes the same turn, so a shard never shares
a GPU's memory with a training run. ``local_dir`` is per worker: run one worker per GPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Turn:
    """One hold of the device: how long it waited for it, and when (epoch seconds) it began and ended."""

    wait_s: float = 0.0
    start: float = 0.0
    end: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"device_wait_seconds": self.wait_s, "device_start": self.start, "device_end": self.end}


def lock_path(local_dir: Path) -> Path:
    return Path(local_dir) / "locks" / "device.lock"


@contextlib.contextmanager
def _locked(path: Path, holder: str) -> Iterator[None]:
    """The exclusive lock on ``path``, with ``holder`` written into it for whoever waits next."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            log.info("%s waits for the device, held by %s", holder, f.read().strip() or "another task")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            f.truncate()
            f.write(holder)
            f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def device_turn(local_dir: Path, holder: str, enabled: bool = True) -> Iterator[Turn]:
    """Hold the worker's device for the block (``enabled`` False: no lock, the turn is still timed).

    ``holder`` (``shard 3 of run ...``, ``training ...``) is written into the lock file, so a task that
    waits says in its log what it waits for."""
    t0 = time.monotonic()
    with _locked(lock_path(local_dir), holder) if enabled else contextlib.nullcontext():
        turn = Turn(wait_s=time.monotonic() - t0 if enabled else 0.0, start=time.time())
        try:
            yield turn
        finally:
            turn.end = time.time()

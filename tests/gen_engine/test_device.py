"""Turns on a worker's device (`gen_engine.runtime.device`): one holder at a time, across processes,
and a holder that is killed frees the device."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from gen_engine.runtime.device import device_turn, lock_path

HOLD = """
import sys, time
from gen_engine.runtime.device import device_turn
with device_turn(sys.argv[1], "shard 7 of run r-1"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_task_waits_for_the_device_and_gets_it_when_the_holder_is_killed(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert lock_path(tmp_path).read_text() == "shard 7 of run r-1"  # what a waiting task's log names
        got = threading.Event()
        turns = []

        def take() -> None:
            with device_turn(tmp_path, "shard 8 of run r-1") as turn:
                got.set()
                turns.append(turn)

        t = threading.Thread(target=take, daemon=True)
        t.start()
        assert not got.wait(1.0), "the device was handed out while another process held it"
        holder.kill()  # SIGKILL: no clean-up runs, the kernel releases the lock
        assert got.wait(10), "a killed holder left the device locked"
        t.join(10)
        assert turns[0].wait_s >= 1.0 and turns[0].end >= turns[0].start
    finally:
        holder.kill()
        holder.wait()


def test_turns_in_one_process_never_overlap_and_a_disabled_turn_takes_no_lock(tmp_path: Path) -> None:
    spans: list[tuple[float, float]] = []

    def work() -> None:
        with device_turn(tmp_path, "shard") as turn:
            time.sleep(0.1)
        spans.append((turn.start, turn.end))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)), spans

    other = tmp_path / "off"
    with device_turn(other, "shard", enabled=False) as turn:
        pass
    assert not lock_path(other).exists() and turn.wait_s == 0 and turn.end >= turn.start

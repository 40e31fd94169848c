"""``[core] hostname_callable`` of the distributed test's workers: both run on this one machine, so each
records the name it was given (``GEN_TEST_WORKER``) in its task instances instead of the machine's."""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("GEN_TEST_WORKER") or socket.getfqdn()

"""Errors by kind: what the caller should do about them, not where they were raised.

- `UserError`: the input or the setup is wrong (a bad CSV, a drop that fails its checks, a model that
  does not exist, missing credentials). Retrying cannot help; the message says what to do. The CLI
  prints it without a traceback; an Airflow task turns it into ``AirflowFailException`` (no retry).
- `TransientError`: a fault outside the factory that may pass (S3 or a server not answering). Airflow
  retries the task as configured; the CLI prints the message.

Anything else is a bug and keeps its traceback everywhere.
"""

from __future__ import annotations


class GenEngineError(Exception):
    """Base of every error the factory raises on purpose."""


class UserError(GenEngineError, ValueError):
    """Wrong input or configuration: fail fast with a clear message, never retry."""


class TransientError(GenEngineError, RuntimeError):
    """A fault that may pass on its own (network, a service starting): worth retrying."""


# Errors of libraries beneath the factory that mean "a server did not answer" (by class name, so this
# module imports nothing): SQLAlchemy's connection-level errors, and the builtins for sockets and time-outs.
_TRANSIENT_NAMES = {"OperationalError", "InterfaceError", "DisconnectionError", "TimeoutError"}


def is_transient(err: BaseException) -> bool:
    """Whether retrying may help: a `TransientError`, a connection or time-out error, or SQLAlchemy's
    OperationalError / InterfaceError (the lineage database not answering)."""
    if isinstance(err, TransientError | ConnectionError | TimeoutError):
        return True
    return any(c.__name__ in _TRANSIENT_NAMES and c.__module__.startswith("sqlalchemy") for c in type(err).__mro__)

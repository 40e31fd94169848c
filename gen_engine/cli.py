"""`genengine`: the factory's command line; every stage can be run by hand.

    genengine config                 # resolved settings, secrets masked
    genengine services up|down|status
    genengine --help                 # everything else

Commands are thin: they parse arguments, call gen_engine, and turn its errors into one readable
line and a non-zero exit code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from gen_engine.config import get_settings

app = typer.Typer(help="Campaign image factory: datasets -> GAN -> compiled engines -> rendered campaigns in S3.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
services_app = typer.Typer(help="The embedded local services (S3 server, Airflow home).", no_args_is_help=True)
app.add_typer(services_app, name="services")
console = Console()
err_console = Console(stderr=True)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Print the project's own errors as one line (they already say what to do) and exit 1."""
    from gen_engine.services import ServiceError
    from gen_engine.storage import StorageError

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (StorageError, ServiceError, ValueError, FileNotFoundError) as e:
            err_console.print(f"[bold red]error:[/] {e}", markup=True, highlight=False)
            raise typer.Exit(1) from None

    return wrapper


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def config(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Print the resolved settings (environment GEN_*, .env, defaults) with secrets masked."""
    described = get_settings().describe()
    if as_json:
        typer.echo(json.dumps(described, indent=2, default=str))
        return
    table = Table("setting", "value", title="gen_engine settings (env prefix GEN_)")
    for k, v in described.items():
        table.add_row(k, "-" if v is None else str(v))
    console.print(table)


@services_app.command("up")
@friendly
def services_up(
    airflow: bool = typer.Option(True, help="Also prepare the Airflow home (DB, connection, pool)."),
) -> None:
    """Start the local S3 server (unless GEN_S3_ENDPOINT points elsewhere) and prepare Airflow."""
    from gen_engine.services import LocalS3, init_airflow_home
    from gen_engine.storage import Storage

    s = get_settings()
    buckets = list(s.buckets.values())
    if s.uses_local_s3:
        LocalS3.from_settings(s).start(buckets)
        console.print(f"local S3 up at {s.s3_url} (data in {s.local_dir / 's3'}), buckets: {', '.join(buckets)}")
    else:
        store = Storage.from_settings(s)
        for b in buckets:
            store.ensure_bucket(b)
        console.print(f"using external S3 at {s.s3_url}; buckets ensured: {', '.join(buckets)}")
    from gen_engine.lineage import LineageStore

    LineageStore.from_settings(s)
    console.print(f"lineage store ready: {s.describe()['lineage_url (derived)']}")
    if airflow:
        home = init_airflow_home(s)
        console.print(f"Airflow home ready: {home} (connection {s.airflow_s3_conn_id}, pool gpu)")


@services_app.command("down")
@friendly
def services_down() -> None:
    """Stop the local S3 server started by `services up` (only that process)."""
    from gen_engine.services import LocalS3

    s = get_settings()
    stopped = LocalS3.from_settings(s).stop() if s.uses_local_s3 else False
    console.print("local S3 stopped" if stopped else "no local S3 server of ours was running")


@services_app.command("status")
@friendly
def services_status() -> None:
    """Say whether the S3 endpoint answers."""
    from gen_engine.storage import Storage

    s = get_settings()
    Storage.from_settings(s).check()
    console.print(f"S3 at {s.s3_url}: answering")


if __name__ == "__main__":
    app()

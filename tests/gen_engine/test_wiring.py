"""How the pieces are wired: resources built once, errors by kind, tunables read from the settings."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gen_engine.config import Settings
from gen_engine.errors import GenEngineError, TransientError, UserError
from gen_engine.resources import Resources, resources

REPO = Path(__file__).resolve().parents[2]


# --- resources ------------------------------------------------------------------------------------------
def test_one_resources_per_settings_and_each_part_built_once(s3_settings: Settings, tmp_path: Path) -> None:
    res = resources(s3_settings)
    assert resources(s3_settings) is res and resources(s3_settings.model_copy()) is res
    assert res.storage is res.storage and res.lineage is res.lineage and res.registry is res.registry
    other = resources(s3_settings.model_copy(update={"local_dir": tmp_path}))
    assert other is not res and other.lineage is not res.lineage


def test_a_local_model_folder_needs_neither_s3_nor_the_database(tmp_path: Path) -> None:
    """No credentials and an unreachable database: resolving a folder touches neither (built on first use)."""
    from gen_engine.models.artifact import save_model
    from gen_engine.models.gan import GANConfig, Generator

    torch.manual_seed(3)
    folder = save_model(tmp_path / "m", Generator(GANConfig(resolution=16, nf=4)), {"name": "generator"})
    res = Resources(Settings(s3_access_key=None, s3_secret_key=None, local_dir=tmp_path,
                             lineage_db_url="postgresql+psycopg://nobody@127.0.0.1:1/none"))
    path, row = res.registry.resolve(str(folder))
    assert path == folder and row["model_id"].startswith("generator-")
    assert res.registry.resolve_init(str(folder))[0] == folder
    with pytest.raises(UserError, match="No S3 credentials"):
        res.storage  # noqa: B018


# --- errors by kind ----------------------------------------------------------------------------------------
def test_error_kinds() -> None:
    from gen_engine.datasets.ingest import DropRejected
    from gen_engine.datasets.readers import DropError
    from gen_engine.infra.storage import ObjectNotFound, StorageAuthError, StorageUnavailable
    from gen_engine.render.csvin import CsvError

    for user in (CsvError, DropError, DropRejected, StorageAuthError, ObjectNotFound):
        assert issubclass(user, UserError) and not issubclass(user, TransientError)
    assert issubclass(StorageUnavailable, TransientError) and not issubclass(StorageUnavailable, UserError)
    assert issubclass(UserError, GenEngineError) and issubclass(TransientError, GenEngineError)


def test_the_cli_prints_a_user_error_as_one_line_and_lets_a_bug_keep_its_traceback(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from gen_engine.cli import app

    monkeypatch.setenv("GEN_LOCAL_DIR", str(tmp_path))
    res = CliRunner().invoke(app, ["dataset", "show", "no-such-dataset"])
    assert res.exit_code == 1 and "error:" in res.output and "no dataset 'no-such-dataset'" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)

    def bug(*_a: object, **_k: object) -> None:
        raise KeyError("a real bug")

    monkeypatch.setattr("gen_engine.infra.lineage.LineageStore.dataset_version", bug)
    res = CliRunner().invoke(app, ["dataset", "show", "anything"])
    assert isinstance(res.exception, KeyError), res.output  # not swallowed into a one-line message


def test_a_user_error_fails_an_airflow_task_without_retries_and_others_pass_through(
        s3_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    sys.path.insert(0, str(REPO / "plugins"))
    import gen_airflow
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setattr(gen_airflow, "factory_settings", lambda: s3_settings)

    def bad_input(res: Resources, x: int) -> None:
        assert res is resources(s3_settings) and x == 1
        raise UserError("the CSV has no prompt column")

    def outage(res: Resources) -> None:
        raise TransientError("S3 is restarting")

    with pytest.raises(AirflowFailException, match="no prompt column"):
        gen_airflow.call(bad_input, 1)
    with pytest.raises(TransientError):  # Airflow retries it as the task's retries say
        gen_airflow.call(outage)


# --- one configuration source --------------------------------------------------------------------------
def test_row_rules_and_curation_thresholds_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from gen_engine.datasets.ingest import CurationConfig
    from gen_engine.render.csvin import RowRules, validate_row

    monkeypatch.setenv("GEN_RENDER_MAX_COUNT", "4")
    monkeypatch.setenv("GEN_RENDER_ALLOWED_SIZES", '["64x64"]')
    monkeypatch.setenv("GEN_INGEST_MIN_SIDE", "100")
    s = Settings()
    rules = RowRules.from_settings(s)
    assert validate_row(2, {"prompt": "a heart", "count": "4"}, rules, {}).count == 4
    with pytest.raises(ValueError, match="count must be from 1 to 4"):
        validate_row(3, {"prompt": "a heart", "count": "5"}, rules, {})
    with pytest.raises(ValueError, match="use one of 64x64"):
        validate_row(4, {"prompt": "a heart", "size": "128x128"}, rules, {})
    assert CurationConfig.from_settings(s).min_side == 100


def test_dataclass_defaults_equal_the_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dataclasses' own defaults are the settings' (one source, no drift between two copies)."""
    from gen_engine.datasets.ingest import CurationConfig
    from gen_engine.render.csvin import RowRules

    for k in [k for k in __import__("os").environ if k.startswith("GEN_")]:
        monkeypatch.delenv(k)
    s = Settings(_env_file=None)
    assert RowRules.from_settings(s) == RowRules()
    assert CurationConfig.from_settings(s) == CurationConfig()


def test_config_command_shows_the_tunables_and_the_dag_params_read_them(monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from gen_engine.cli import app

    shown = json.loads(CliRunner().invoke(app, ["config", "--json"]).output)
    for key in ("render_shard_size", "render_batch_size", "render_max_count", "ingest_schedule", "retrain_schedule",
                "airflow_gpu_queue", "ingest_min_side", "eval_images"):
        assert key in shown
    dag_sources = "".join(p.read_text() for p in (REPO / "dags").glob("*.py"))
    assert "os.environ" not in dag_sources and "2048" not in dag_sources


# --- evaluation metrics registry ------------------------------------------------------------------------
def test_a_registered_metric_runs_and_an_unknown_one_is_a_user_error() -> None:
    from gen_engine.datasets.curated import TrainData
    from gen_engine.evaluation import METRICS, evaluate
    from gen_engine.evaluation.registry import metric
    from gen_engine.training.encoder import train_encoder

    rng = np.random.default_rng(0)
    data = TrainData(torch.from_numpy(rng.integers(0, 256, (20, 3, 16, 16), dtype=np.uint8)),
                     torch.nn.functional.normalize(torch.randn(20, 384), dim=1), [f"c{i}" for i in range(20)], "r")
    enc = train_encoder(data.images, data.text, steps=2, batch=20)

    @metric("mean_brightness_test")
    def brightness(ctx):  # type: ignore[no-untyped-def]
        return {"mean_brightness": float(ctx.fake.float().mean())}

    try:
        out = evaluate(lambda z, t: np.full((len(z), 16, 16, 3), 200, np.uint8), data, enc, n=20,
                       metrics=["fd", "mean_brightness_test"])
        assert out["mean_brightness"] == 200.0 and "fd" in out and "r_precision" not in out
        with pytest.raises(UserError, match="unknown metric"):
            evaluate(lambda z, t: z, data, enc, metrics=["nope"])
    finally:
        METRICS.pop("mean_brightness_test")

"""Model and engine integrity: every download and every cache hit is checked against the sha256 the
registry recorded at publish; what does not match is refused or fetched again, never used."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from pydantic import SecretStr

from gen_engine.config import Settings
from gen_engine.hashing import sha256_file
from gen_engine.models.artifact import save_model
from gen_engine.models.gan import GANConfig, Generator
from gen_engine.orchestration import compile_and_register
from gen_engine.registry import ArtifactMismatch
from gen_engine.resources import Resources, resources


def _host(s3: Settings, tmp: Path, name: str) -> Settings:
    """Another host: its own local cache, the shared S3 and lineage database."""
    return s3.model_copy(update={"local_dir": tmp / name,
                                 "lineage_db_url": SecretStr(f"sqlite:///{tmp / 'lineage.db'}")})


def _publish(s3: Settings, tmp: Path, seed: int) -> tuple[Resources, dict]:
    torch.manual_seed(seed)
    d = save_model(tmp / f"model-{seed}", Generator(GANConfig(resolution=16, nf=8)), {"name": "generator"})
    res = resources(_host(s3, tmp, "publisher"))
    return res, res.registry.publish(d)


def _prefix(row: dict, s: Settings) -> str:
    return row["uri"].removeprefix(f"s3://{s.bucket_models}/")


def test_a_cached_file_that_changed_is_fetched_again(s3_settings: Settings, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    _, row = _publish(s3_settings, tmp_path, 1)
    res = resources(_host(s3_settings, tmp_path, "worker"))
    local, _ = res.registry.resolve(row["model_id"])
    good = sha256_file(local / "generator.safetensors")
    with open(local / "generator.safetensors", "r+b") as f:  # bit rot, or someone edited the cache
        f.seek(200)
        f.write(b"\xff\xff\xff\xff")
    (local / "model.json").write_text('{"name": "generator", "architecture": {}}')
    with caplog.at_level(logging.WARNING, logger="gen_engine.registry"):
        local2, _ = res.registry.resolve(row["model_id"])
    assert local2 == local and sha256_file(local / "generator.safetensors") == good
    assert '"architecture": {}' not in (local / "model.json").read_text()
    assert sum("does not match the registry" in r.message for r in caplog.records) == 2


@pytest.mark.parametrize("tampered", ["generator.safetensors", "model.json"])
def test_an_object_changed_in_s3_after_publishing_is_refused(s3_settings: Settings, tmp_path: Path,
                                                              tampered: str) -> None:
    pub, row = _publish(s3_settings, tmp_path, 2 if tampered == "model.json" else 3)
    pub.storage.put_bytes(s3_settings.bucket_models, _prefix(row, s3_settings) + tampered, b"not the published bytes")
    res = resources(_host(s3_settings, tmp_path, "cold"))
    with pytest.raises(ArtifactMismatch, match=rf"{tampered} has sha256 .* the registry recorded"):
        res.registry.resolve(row["model_id"])
    cache = res.settings.local_dir / "cache" / "models" / row["model_id"]
    assert not (cache / tampered).exists() and not list(cache.glob(".*.part"))  # nothing usable left behind


def test_a_compiled_engine_changed_in_s3_is_refused(s3_settings: Settings, tmp_path: Path) -> None:
    pub, row = _publish(s3_settings, tmp_path, 4)
    model_dir, row = pub.registry.resolve(row["model_id"])
    compile_and_register(pub, model_dir, row)
    onnx_key = _prefix(row, s3_settings) + "generator.onnx"
    res = resources(_host(s3_settings, tmp_path, "renderer"))
    local, _ = res.registry.resolve(row["model_id"])
    assert sha256_file(local / "generator.onnx") == sha256_file(model_dir / "generator.onnx")
    pub.storage.put_bytes(s3_settings.bucket_models, onnx_key, b"an engine someone swapped")
    other = resources(_host(s3_settings, tmp_path, "renderer2"))
    with pytest.raises(ArtifactMismatch, match="generator.onnx has sha256"):
        other.registry.resolve(row["model_id"])


def test_a_model_published_before_file_hashes_is_checked_by_its_id(s3_settings: Settings, tmp_path: Path) -> None:
    import sqlalchemy as sa

    pub, row = _publish(s3_settings, tmp_path, 5)
    with pub.lineage.engine.begin() as c:
        c.execute(sa.text("DELETE FROM model_files"))
    torch.manual_seed(99)
    other = save_model(tmp_path / "other", Generator(GANConfig(resolution=16, nf=8)), {"name": "generator"})
    pub.storage.put_file(s3_settings.bucket_models, _prefix(row, s3_settings) + "generator.safetensors",
                         other / "generator.safetensors")
    with pytest.raises(ArtifactMismatch, match="hash to another model id"):
        resources(_host(s3_settings, tmp_path, "legacy")).registry.resolve(row["model_id"])


def test_cold_downloads_at_once_on_one_host_share_no_temporary_file(s3_settings: Settings, tmp_path: Path,
                                                                    at_once) -> None:
    _, row = _publish(s3_settings, tmp_path, 6)
    host = _host(s3_settings, tmp_path, "busy")
    hosts = [Resources(host.model_copy(update={"s3_retries": 2 + i})) for i in range(6)]  # six processes' clients
    errors = [r for r in at_once(6, lambda i: hosts[i].registry.resolve(row["model_id"]))
              if isinstance(r, BaseException)]
    assert not errors, errors
    cache = host.local_dir / "cache" / "models" / row["model_id"]
    assert sorted(p.name for p in cache.iterdir()) == ["generator.safetensors", "model.json"]
    local, _ = resources(host).registry.resolve(row["model_id"])
    assert local == cache


def test_two_retrains_at_once_both_register_and_only_one_replaces_the_champion(s3_settings: Settings,
                                                                               tmp_path: Path, at_once) -> None:
    """Two retrains finishing together (a scheduled one and a manual `genengine train --publish`): their
    models publish at once with distinct version numbers, and of the two gated against the same champion
    only the first to promote moves production; the second is told why and changes nothing."""
    from gen_engine.orchestration import promote

    champion_res, champion = _publish(s3_settings, tmp_path, 20)
    champion_res.lineage.set_alias("generator", "production", champion["model_id"])
    dirs = []
    for seed in (21, 22):
        torch.manual_seed(seed)
        dirs.append(save_model(tmp_path / f"challenger-{seed}", Generator(GANConfig(resolution=16, nf=8)),
                               {"name": "generator"}))
    trainers = [Resources(_host(s3_settings, tmp_path, f"trainer{i}")) for i in range(2)]
    rows = at_once(2, lambda i: trainers[i].registry.publish(dirs[i]))
    assert all(rows) and sorted(r["version"] for r in rows) == [champion["version"] + 1, champion["version"] + 2]
    first = promote(champion_res, rows[0]["model_id"], champion["model_id"])
    second = promote(champion_res, rows[1]["model_id"], champion["model_id"])
    assert first["promoted"] and not second["promoted"] and rows[0]["model_id"] in second["reason"]
    assert champion_res.lineage.resolve_alias("generator", "production")["model_id"] == rows[0]["model_id"]

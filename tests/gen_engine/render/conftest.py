"""Fixtures of the render tests: a published model."""

from __future__ import annotations

import pytest
import torch

from gen_engine.config import Settings
from gen_engine.models.artifact import save_model
from gen_engine.models.gan import GANConfig, Generator
from gen_engine.resources import resources


@pytest.fixture(scope="session")
def model_id(s3_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An untrained 16 px generator, published like a real one (rendering does not need a good model).
    Its own seed: identical weights elsewhere would share its model id (ids are content hashes)."""
    torch.manual_seed(11)
    d = save_model(tmp_path_factory.mktemp("model") / "model", Generator(GANConfig(resolution=16, nf=8)),
                   {"name": "generator", "code_version": "test"})
    lineage = resources(s3_settings).lineage
    lineage.record_dataset_version("shapes", "dv-test", uri="s3://datasets/curated/shapes/v1/", n_records=1,
                                   n_rejected=0, config={}, card={})
    return resources(s3_settings).registry.publish(d, dataset_version_id="dv-test")["model_id"]

"""The offline metrics: Frechet distance, R-precision and the held-out rendering contract (seed = index)."""

from __future__ import annotations

import numpy as np
import torch

from gen_engine.datasets.curated import TrainData
from gen_engine.evaluation import evaluate, frechet_distance, r_precision, render_heldout
from gen_engine.models.noise import seed_noise
from gen_engine.training.encoder import train_encoder


def test_frechet_distance_is_zero_for_one_set_and_the_squared_shift_for_a_shifted_one() -> None:
    a = np.random.default_rng(0).standard_normal((500, 8))
    assert abs(frechet_distance(a, a)) < 1e-6
    shift = np.full(8, 0.5)
    assert abs(frechet_distance(a, a + shift) - float(shift @ shift)) < 1e-6


def test_r_precision_ranks_the_true_caption_against_distinct_others() -> None:
    text = torch.nn.functional.normalize(torch.randn(120, 16), dim=1).numpy()
    captions = [f"caption {i}" for i in range(120)]
    assert r_precision(text, text, captions) == 1.0  # each image is its own caption's embedding
    assert r_precision(-text, text, captions) == 0.0


def _data(n: int = 70) -> TrainData:
    rng = np.random.default_rng(1)
    images = torch.from_numpy(rng.integers(0, 256, (n, 3, 16, 16), dtype=np.uint8))
    text = torch.nn.functional.normalize(torch.randn(n, 384), dim=1)
    return TrainData(images, text, [f"c{i}" for i in range(n)], "random")


def test_held_out_images_are_rendered_with_seed_equal_to_index_in_batches() -> None:
    data, calls = _data(), []

    def render(z: np.ndarray, t: np.ndarray) -> np.ndarray:
        calls.append(len(z))
        assert np.array_equal(z[0], seed_noise(sum(calls[:-1]), 100))
        return np.zeros((len(z), 16, 16, 3), np.uint8)

    out = render_heldout(render, data, 70)
    assert calls == [64, 6] and out.shape == (70, 3, 16, 16) and out.dtype == torch.uint8


def test_evaluating_the_real_images_scores_them_as_their_own_captions() -> None:
    data = _data()
    enc = train_encoder(data.images, data.text, steps=60, batch=70)

    def real(z: np.ndarray, t: np.ndarray) -> np.ndarray:  # hand back the image of each caption
        rows = [int(np.argmax(data.text.numpy() @ row)) for row in t]
        return data.images[rows].permute(0, 2, 3, 1).numpy()

    m = evaluate(real, data, enc, n=70)
    assert m["n"] == 70 and abs(m["fd"]) < 1e-3 and m["r_precision"] == m["real_r_precision"]


def test_the_evaluation_encoder_is_trained_once_and_found_in_s3_by_a_worker_with_an_empty_disk(
        storage, tmp_path, monkeypatch) -> None:
    import gen_engine.evaluation.encoder as encoder_module
    from gen_engine.evaluation import cached_encoder

    data = _data()
    data.dataset_version_id, data.curated_uri = "v-cache-test", "s3://datasets/curated/cache-test/v-cache-test/"
    trained = []
    real_train = encoder_module.train_encoder
    monkeypatch.setattr(encoder_module, "train_encoder", lambda *a, **k: trained.append(1) or real_train(*a, **k))

    first, _ = cached_encoder(data, tmp_path / "worker-a", steps=5, store=storage)
    assert trained == [1]
    assert storage.exists("datasets", "curated/cache-test/v-cache-test/evaluation/encoder-r16-s5.safetensors")
    second, _ = cached_encoder(data, tmp_path / "worker-b", steps=5, store=storage)  # another disk: from S3
    assert trained == [1]
    for (k, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # Another resolution or step count is another encoder.
    cached_encoder(data, tmp_path / "worker-b", steps=6, store=storage)
    assert trained == [1, 1]

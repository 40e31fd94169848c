"""The frozen MiniLM text encoder: offline, unit-norm 384-d, cached or streamed with the same vectors."""

from __future__ import annotations

import numpy as np

from gen_engine.text import EMBED_DIM, shared_encoder


def test_cached_and_streamed_encodings_agree_and_streaming_keeps_nothing() -> None:
    enc = shared_encoder()
    texts = ["a red circle", "a blue square on grey", "a red circle", "ein grüner Stern"]
    before = len(enc._cache)
    streamed = enc.encode(texts, cache=False)
    assert len(enc._cache) == before  # ingest streams millions of captions through this: nothing is kept
    cached = enc.encode(texts)
    assert streamed.shape == (4, EMBED_DIM) and streamed.dtype == np.float32
    np.testing.assert_allclose(streamed, cached, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(streamed, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(streamed[0], streamed[2])  # duplicates are encoded once
    assert float(streamed[0] @ streamed[1]) < 0.99
    assert enc.encode([], cache=False).shape == (0, EMBED_DIM)

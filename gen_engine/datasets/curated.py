"""Training data in memory: a curated version from S3 (stored embeddings) or a local imagefolder.

`TrainData` holds uint8 images, caption embeddings and the rows' descriptive columns; the trainer,
the evaluation and the benchmarks all read data through it. The embeddings are those of one text
encoder (`text_encoder`, from `gen_engine.text`): a curated version stores the default encoder's in
its parquet shards, and another encoder's are computed once per version and kept in S3 beside it
(``embeddings/<encoder>.npz``, `_embeddings`), so a dataset trains models with either.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from gen_engine.datasets.images import split_of, square
from gen_engine.errors import UserError
from gen_engine.text import DEFAULT_ENCODER, prompt_key, shared_encoder, spec

if TYPE_CHECKING:
    from gen_engine.resources import Resources

# Descriptive columns of a dataset's rows kept beside the images (the starter data has them).
META_COLUMNS = ("lang", "category", "color", "source_set", "name", "file_name")


class TrainData:
    """Images as uint8 (N, 3, R, R) and caption embeddings (N, 384), all in memory."""

    def __init__(self, images: torch.Tensor, text: torch.Tensor, captions: list[str], version: str,
                 dataset_version_id: str | None = None, text_encoder: str = DEFAULT_ENCODER) -> None:
        """version: a description of the data; dataset_version_id: the curated version (lineage), if any;
        text_encoder: the registered encoder whose embeddings ``text`` holds."""
        assert images.dtype == torch.uint8 and images.shape[0] == text.shape[0] == len(captions)
        self.images, self.text, self.captions, self.version = images, text, captions, version
        self.dataset_version_id, self.text_encoder = dataset_version_id, text_encoder
        self.attributes: dict[str, list[str]] = {}  # e.g. color/shape of synthetic shapes, for evaluation
        self.meta: dict[str, list[str]] = {}  # per-row descriptive columns (language, category, source set, ...)
        self.heldout_captions: list[str] = []  # the dataset's held-out captions: sample grids and parity prompts
        self.content_hashes: list[str] = []  # per row, for a curated version: which images it holds
        self.curated_uri: str | None = None  # a curated version's s3:// folder (its evaluation encoder lives there)

    def labels(self, vocab: dict[str, list[str]] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
        """Attribute columns as class indices (vocabulary sorted, or the one given)."""
        vocab = vocab or {k: sorted(set(v)) for k, v in self.attributes.items()}
        return {k: torch.tensor([vocab[k].index(x) for x in self.attributes[k]]) for k in vocab}, vocab

    def __len__(self) -> int:
        return self.images.shape[0]

    @classmethod
    def from_imagefolder(cls, root: Path, resolution: int, split: str | None = None,
                         text_encoder: str | None = None) -> TrainData:
        """Read ``metadata.jsonl`` + images; encode captions once (``text_encoder``, default MiniLM).

        split: None keeps every row; "train" / "val" keep the rows whose image the ingest would put in
        that split (by content hash), and a "train" read also collects the held-out captions."""
        root = Path(root)
        rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text(encoding="utf-8").splitlines() if line]
        decoded: dict[str, tuple[np.ndarray, str]] = {}  # file name -> (image, content hash)
        keep, held = [], []
        for r in rows:
            fn = r["file_name"]
            if fn not in decoded:
                raw = (root / fn).read_bytes()
                decoded[fn] = (np.asarray(square(Image.open(io.BytesIO(raw)), resolution)),
                               hashlib.sha256(raw).hexdigest())
            if split is None or split_of(decoded[fn][1]) == split:
                keep.append(r)
            elif split == "train":
                held.append(r["text"])
        imgs = np.stack([decoded[r["file_name"]][0] for r in keep]) if keep else \
            np.empty((0, resolution, resolution, 3), np.uint8)
        h = hashlib.sha256(str(split).encode())
        for r in keep:
            h.update(r["file_name"].encode() + r["text"].encode())
        captions = [r["text"] for r in keep]
        enc = shared_encoder(text_encoder)
        text = torch.from_numpy(enc.encode(captions, cache=False))
        data = cls(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), text, captions,
                   f"imagefolder:{h.hexdigest()[:16]}", text_encoder=enc.name)
        data.attributes = {k: [str(r[k]) for r in keep] for k in ("color", "shape") if rows and "shape" in rows[0]}
        data.meta = {k: [str(r.get(k, "")) for r in keep] for k in META_COLUMNS if rows and k in rows[0]}
        data.heldout_captions = list(dict.fromkeys(held))
        return data

    @classmethod
    def from_curated(cls, ref: str, res: Resources, resolution: int, split: str = "train",
                     text_encoder: str | None = None) -> TrainData:
        """A curated version (``name`` = latest, or ``name@vN``) from S3: stored embeddings, no re-encoding
        (another ``text_encoder``'s: computed once per version and kept beside it, `_embeddings`)."""
        import polars as pl

        settings, store = res.settings, res.storage
        name, _, v = ref.partition("@")
        row = res.lineage.dataset_version(name, int(v.lstrip("v")) if v else None)
        if row is None:
            raise UserError(f"no curated dataset '{ref}'; ingest one first (`genengine dataset ingest`)")
        prefix = row["uri"].removeprefix(f"s3://{settings.bucket_datasets}/")
        cols = ["image", "caption", "embedding", "split", "extra", "content_hash"]
        frames = [pl.read_parquet(io.BytesIO(store.get_bytes(settings.bucket_datasets, o.key)), columns=cols)
                  for o in store.list(settings.bucket_datasets, prefix)
                  if o.key.endswith(".parquet") and "/masters/" not in o.key]
        everything = pl.concat(frames)
        df = everything.filter(pl.col("split") == split)
        imgs = np.empty((df.height, resolution, resolution, 3), np.uint8)
        for i, png in enumerate(df["image"]):
            im = Image.open(io.BytesIO(png)).convert("RGB")
            if im.size != (resolution, resolution):
                im = im.resize((resolution, resolution), Image.Resampling.LANCZOS)
            imgs[i] = np.asarray(im)
        name = text_encoder or DEFAULT_ENCODER
        if name == DEFAULT_ENCODER:
            text = torch.from_numpy(df["embedding"].to_numpy().astype(np.float32))
        else:
            table = _embeddings(res, prefix, name, everything["caption"].to_list())
            text = torch.from_numpy(np.stack([table[prompt_key(c)] for c in df["caption"]]) if df.height
                                    else np.zeros((0, spec(name).dim), np.float32))
        data = cls(torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), text, df["caption"].to_list(),
                   row["version_id"], dataset_version_id=row["version_id"], text_encoder=name)
        data.content_hashes = df["content_hash"].to_list()
        data.curated_uri = row["uri"]
        extras = [json.loads(e or "{}") for e in df["extra"].to_list()]
        data.meta = {k: [str(e.get(k, "")) for e in extras] for k in META_COLUMNS if extras and k in extras[0]}
        if split == "train":
            data.heldout_captions = list(dict.fromkeys(everything.filter(pl.col("split") == "val")["caption"]))
        return data

    def indices(self, step: int, batch_size: int, seed: int, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of batch ``step`` of an epoch-wise shuffle seeded by (seed, epoch): a pure function of step.

        weights: per-row sampling weights (`language_weights`); then the rows are drawn with replacement
        in those proportions, from a generator seeded by (seed, step), a pure function of step too."""
        if weights is not None:
            return torch.multinomial(weights, batch_size, replacement=True,
                                     generator=torch.Generator().manual_seed(seed * 100_003 + 7_777_777 + step))
        n = len(self)
        start = step * batch_size
        idx: list[int] = []
        while len(idx) < batch_size:
            epoch, off = divmod(start + len(idx), n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            idx.extend(perm[off : off + batch_size - len(idx)].tolist())
        return torch.tensor(idx)

    def language_weights(self) -> torch.Tensor | None:
        """Per-row weights that give each caption language (``meta["lang"]``) an equal share of the draws;
        None when the rows have no languages or only one."""
        langs = self.meta.get("lang") or []
        counts = Counter(langs)
        if len(langs) != len(self) or len(counts) < 2:
            return None
        return torch.tensor([1.0 / counts[lang] for lang in langs], dtype=torch.float64)

    def rows(self, ix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images in [-1, 1] and caption embeddings of rows ``ix``."""
        return self.images[ix].float() / 127.5 - 1.0, self.text[ix]

    def batch(self, step: int, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``step`` (see `indices`) as `rows`."""
        return self.rows(self.indices(step, batch_size, seed))


def _embeddings(res: Resources, prefix: str, encoder: str, captions: list[str]) -> dict[str, np.ndarray]:
    """Caption key (`prompt_key`) -> embedding by ``encoder``, for every caption of the curated version at
    ``prefix``: read from ``embeddings/<encoder>.npz`` beside it, or encoded once and written there (any
    worker, any later run reuses it)."""
    bucket, store = res.settings.bucket_datasets, res.storage
    key = f"{prefix.rstrip('/')}/embeddings/{encoder}.npz"
    wanted = {prompt_key(c): c for c in captions}
    if store.exists(bucket, key):
        with np.load(io.BytesIO(store.get_bytes(bucket, key))) as z:
            table = dict(zip(z["keys"].tolist(), z["vectors"], strict=True))
        if wanted.keys() <= table.keys():
            return table
    vectors = shared_encoder(encoder).encode(list(wanted.values()), cache=False)
    buf = io.BytesIO()
    np.savez(buf, keys=np.array(list(wanted), dtype="U64"), vectors=vectors)
    store.put_bytes(bucket, key, buf.getvalue())
    return dict(zip(wanted, vectors, strict=True))

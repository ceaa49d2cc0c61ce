"""DIRECT configuration dataclasses of the MIAR models (YAML keys under ``model:``).

DIRECT builds a model from the keys its constructor accepts; the remaining keys configure the engine. Defaults are the
paper's where it states them (``projects/miar_brain/configs``); tiny CPU values live in ``direct_nextaccel/configs/``.

Choices are Enums, refused by DIRECT's merge when not a member; ranges are checked by ``__post_init__``, which the
engines run with :func:`~direct_nextaccel.modules.options.validate_model_config` (see
:mod:`direct_nextaccel.modules.options`). :class:`MSVQVAEShape` is the tokenizer's architecture, defined once for the
MSVQ-VAE's config and the MIAR transformer's (which holds the frozen tokenizer and a copy of its encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from direct.config.defaults import ModelConfig

from direct_nextaccel.modules.options import (
    CheckedConfig,
    Decoding,
    DecodingOptions,
    LRSchedule,
    LRScheduleOptions,
    check_fraction,
    check_positive,
    check_positive_int,
    check_positive_ints,
)


@dataclass
class MSVQVAEShape(CheckedConfig):
    """The MSVQ-VAE's architecture; the MIAR transformer repeats it to hold the frozen tokenizer and an encoder copy."""

    in_channels: int = 2
    base_channels: int = 160
    channel_multipliers: tuple[int, ...] = (1, 1, 2, 4)  # stride 8 (paper: downsampling factor 8)
    num_res_blocks: int = 2
    latent_dim: int = 32
    codebook_size: int = 4096
    # VAR's schedule for a 32 x 32 latent (its 512-pixel model); 2240 tokens.
    scales: tuple[int, ...] = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
    quant_resi: float = 0.5
    num_phi: int = 4
    # Engine: DIRECT's matrix is mapped to image_size and back on output (core.images.WorkingGrid).
    image_size: tuple[int, int] = (256, 256)

    def _check(self) -> None:
        for key in ("in_channels", "base_channels", "num_res_blocks", "latent_dim", "codebook_size", "num_phi"):
            check_positive_int(key, getattr(self, key))
        check_positive_ints("channel_multipliers", self.channel_multipliers)
        check_positive_ints("scales", self.scales)
        check_fraction("quant_resi", self.quant_resi)
        check_positive_ints("image_size", self.image_size, length=2)


@dataclass
class MSVQVAEConfig(LRScheduleOptions, MSVQVAEShape, ModelConfig):
    """MSVQ-VAE tokenizer (paper appendix A, VAR's setup) with scale-aware dropout (section 4.4.2)."""

    beta: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.0
    kmeans_init: bool = False
    scale_dropout: float = 0.5
    # Images reach the tokenizer as intensity_gain * x / s, s = the maximum of the root-sum-of-squares image of the
    # low-resolution block (direct_nextaccel.core.intensity). At 4x, 1 puts fully sampled 64 x 64 brain slices at a
    # maximum of about 1 (training subjects TCGA-DU-7294 and Lesjak cs07: median max |x| / s = 1.14, 5-95%:
    # 1.00-1.62). MIAR reads the value from this tokenizer's checkpoint.
    intensity_gain: float = 1.0
    # "direct" (DIRECT's multi-step schedule), "cosine" or "linear" with warm-up, decaying to min_lr.
    lr_schedule: LRSchedule = LRSchedule.direct
    min_lr: float = 1e-6

    def _check(self) -> None:
        check_positive("beta", self.beta, zero=True)
        check_fraction("ema_decay", self.ema_decay, "[", ")")
        check_positive("dead_code_threshold", self.dead_code_threshold, zero=True)
        check_fraction("scale_dropout", self.scale_dropout, "[", ")")
        check_positive("intensity_gain", self.intensity_gain)


@dataclass
class MIARConfig(DecodingOptions, LRScheduleOptions, MSVQVAEShape, ModelConfig):
    """MIAR transformer (paper section 3.2-3.3 and appendix A)."""

    # Keys the MIAREngine reads, not the model (besides the mixins'): DIRECT does not warn that the model drops them.
    ENGINE_KEYS: ClassVar[tuple[str, ...]] = ("tokenizer_checkpoint", "lr_blur_sigma")

    depth: int = 4
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    use_rope: bool = True
    rope_base: float = 10000.0
    qk_norm: bool = False
    # Multi-contrast SR (paper section 4.1.1): the LR encoder also sees the fully sampled reference contrast's image,
    # the batch's reference_image (dataset FastMRIReference), through extra input channels that start at zero.
    reference_contrast: bool = False

    # Engine: the trained MSVQ-VAE (a DIRECT checkpoint, model_<N>.pt of its run), loaded when the engine is built
    # (training, validation and direct predict alike); no MIAR checkpoint carries it (direct_nextaccel.miar).
    tokenizer_checkpoint: str | None = None
    # Gaussian blur (kernel radius 1) of the low-resolution image, in low-resolution pixels; 0 = off, 0.8 = OpenCV's
    # sigma for a 3 x 3 kernel. DIRECT baselines cannot see it: keep 0 to compare on the same input.
    lr_blur_sigma: float = 0.0
    # Inference (DecodingOptions): argmax, multinomial, top_k_top_p or beam (MIAR's beam search, beam_k in 1..3).
    decoding: Decoding = Decoding.beam
    # "direct" (DIRECT's multi-step schedule), "cosine" or "linear" with warm-up, decaying to min_lr.
    lr_schedule: LRSchedule = LRSchedule.direct
    min_lr: float = 1e-6

    def _check(self) -> None:
        for key in ("depth", "embed_dim", "num_heads"):
            check_positive_int(key, getattr(self, key))
        check_positive("mlp_ratio", self.mlp_ratio)
        check_fraction("drop_path_rate", self.drop_path_rate, "[", ")")
        check_positive("rope_base", self.rope_base)
        check_positive("lr_blur_sigma", self.lr_blur_sigma, zero=True)

"""DIRECT configuration dataclasses of the NextAccel models (YAML keys under ``model:``).

DIRECT builds a model from the keys its constructor accepts; the remaining keys configure the engine. Defaults are
the paper's (``projects/fastmri_brain/configs``); tiny CPU values live in ``direct_nextaccel/configs/``.

Choices are Enums, refused by DIRECT's merge when not a member; ranges are checked by ``__post_init__``, which the
engines run with :func:`~direct_nextaccel.modules.options.validate_model_config` (see
:mod:`direct_nextaccel.modules.options` for where each check fires). :class:`AQVAEShape` is the tokenizer's
architecture, defined once: the AQ-VAE's config and the transformer's (whose context encoder copies the tokenizer's
encoder and which loads the frozen tokenizer with exactly these values) both inherit it, and the transformer engine
checks the values against the tokenizer checkpoint's ``config.yaml`` when it loads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from direct.config.defaults import ModelConfig

from direct_nextaccel.masks.nested import DEFAULT_CENTER_FRACTION
from direct_nextaccel.modules.options import (
    CheckedConfig,
    Choice,
    Decoding,
    DecodingOptions,
    LRSchedule,
    LRScheduleOptions,
    SamplingMode,
    check_fraction,
    check_positive,
    check_positive_int,
    check_positive_ints,
)

NUM_LEVELS = 6
"""Acquisition levels R32, R16, R8, R4, R2 and fully sampled: one token grid each."""


class MaskFamily(Choice):
    """A nested mask family (``masks.nested.FAMILIES``, in that order: the FiLM label order)."""

    cartesian_x = "cartesian_x"
    cartesian_y = "cartesian_y"
    gaussian2d = "gaussian2d"
    radial = "radial"


class VarInit(Choice):
    """``model.var_init``: start the AQ-VAE from VAR's pretrained VQ-VAE, or train it from scratch."""

    var = "var"
    none = "none"


class DiscriminatorBackbone(Choice):
    """``model.discriminator_backbone`` (``modules.discriminator.BACKBONES``, or no discriminator)."""

    biomedclip = "biomedclip"
    vit_random = "vit_random"
    patch = "patch"
    none = "none"


class TrainingMasks(Choice):
    """``model.training_masks``: DIRECT's per-file nested mask, or a fresh one per slice and iteration."""

    file = "file"
    fresh = "fresh"


class PrefixNoise(Choice):
    """``model.prefix_noise`` of the teacher (``distillation_engine.PREFIX_NOISE``): what replaces a prefix token.

    ``uniform``: a random code; ``self``: the teacher's own teacher-forced argmax prediction; ``mixed``: either, half
    and half; ``base_rollout``: the token of a frozen base NextAccel's own rollout from the R = 32 input
    (``model.prefix_model_checkpoint``, ``model.prefix_rollout``), i.e. the errors a student makes at inference.
    """

    uniform = "uniform"
    self = "self"
    mixed = "mixed"
    base_rollout = "base_rollout"


@dataclass
class AQVAEShape(CheckedConfig):
    """The AQ-VAE tokenizer's architecture (``tokenizer_loading.TOKENIZER_KEYS``), shared by the tokenizer's and the
    transformer's configs. ``quant_resi``, the one other architecture value, is ``tokenizer_quant_resi`` in the
    transformer's config."""

    in_channels: int = 2
    base_channels: int = 160
    channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    latent_dim: int = 32
    codebook_size: int = 4096
    token_grids: tuple[int, ...] = (11, 12, 13, 14, 15, 16)
    num_families: int = 4
    image_size: tuple[int, int] = (256, 256)

    def _check(self) -> None:
        for key in ("in_channels", "base_channels", "num_res_blocks", "latent_dim", "codebook_size", "num_families"):
            check_positive_int(key, getattr(self, key))
        check_positive_ints("channel_multipliers", self.channel_multipliers)
        if len(self.token_grids) != NUM_LEVELS:
            raise ValueError(
                f"token_grids {list(self.token_grids)} must name {NUM_LEVELS} grids, one per level "
                "R32, R16, R8, R4, R2, FS"
            )
        check_positive_ints("token_grids", self.token_grids)
        check_positive_ints("image_size", self.image_size, length=2)


def _check_center_fraction(value: float) -> None:
    check_fraction("mask_center_fraction", value, "(", ")")


@dataclass
class AQVAEConfig(LRScheduleOptions, AQVAEShape, ModelConfig):
    """AQ-VAE tokenizer (paper section 4.1 and supplement section 9)."""

    # Keys the AQVAEEngine reads, not the model (besides the mixins'): DIRECT does not warn that the model drops them.
    ENGINE_KEYS: ClassVar[tuple[str, ...]] = (
        "mask_families",
        "mask_center_fraction",
        "output_levels",
        "var_init",
        "var_checkpoint",
        "discriminator_backbone",
        "discriminator_weights",
        "discriminator_lr",
        "discriminator_weight_decay",
        "discriminator_grad_clip",
    )

    quant_resi: float = 0.5
    beta: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.0
    kmeans_init: bool = False
    context_strides: tuple[int, ...] = (4, 8, 16)
    # Images reach the tokenizer as intensity_gain * x / s, s = the maximum of the root-sum-of-squares image of the
    # calibration centre every family shares (direct_nextaccel.core.intensity). 1/8 puts fully sampled 64 x 64 brain
    # slices at a maximum of about 1 (training subjects TCGA-DU-7294 and Lesjak cs07: median max |x| / s = 7.7,
    # 5-95%: 5.1-14).
    intensity_gain: float = 0.125

    # Engine: which acquisitions are simulated from the fully sampled k-space of each slice.
    mask_families: list[MaskFamily] = field(default_factory=lambda: list(MaskFamily))
    mask_center_fraction: float = DEFAULT_CENTER_FRACTION
    # Levels (0 = R32 ... 5 = FS) whose tokens form the output at validation and prediction; (0,) measures how much
    # of the slice the R = 32 tokens alone carry. Training always decodes all six.
    output_levels: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    # Initialisation from VAR's pretrained VQ-VAE (vae_ch160v4096z32.pth), as in the paper: var_init "var" reads
    # var_checkpoint or, when that is None, the file found by `direct-nextaccel doctor`; "none" trains from scratch.
    var_init: VarInit = VarInit.var
    var_checkpoint: str | None = None
    # Adversarial training: biomedclip (paper), vit_random or patch (explicit fallbacks), none (no discriminator).
    discriminator_backbone: DiscriminatorBackbone = DiscriminatorBackbone.biomedclip
    discriminator_weights: str | None = None
    discriminator_lr: float = 1e-4
    discriminator_weight_decay: float = 1e-4
    discriminator_grad_clip: float = 1.0
    # Learning-rate schedule replacing DIRECT's multi-step one: "cosine" (warm-up, cosine to min_lr), "linear" or
    # "direct".
    lr_schedule: LRSchedule = LRSchedule.cosine
    min_lr: float = 1e-6

    def _check(self) -> None:
        check_fraction("quant_resi", self.quant_resi)
        check_positive("beta", self.beta, zero=True)
        check_fraction("ema_decay", self.ema_decay, "[", ")")
        check_positive("dead_code_threshold", self.dead_code_threshold, zero=True)
        check_positive_ints("context_strides", self.context_strides)
        check_positive("intensity_gain", self.intensity_gain)
        if not self.mask_families:
            raise ValueError("mask_families is empty: name at least one of the nested mask families")
        _check_center_fraction(self.mask_center_fraction)
        levels = list(self.output_levels)
        if not levels or any(isinstance(v, bool) or v not in range(NUM_LEVELS) for v in levels):
            raise ValueError(f"output_levels {levels} must be a non-empty list of level indices 0..{NUM_LEVELS - 1}")
        check_positive("discriminator_lr", self.discriminator_lr)
        check_positive("discriminator_weight_decay", self.discriminator_weight_decay, zero=True)
        check_positive("discriminator_grad_clip", self.discriminator_grad_clip)


@dataclass
class NextAccelConfig(DecodingOptions, LRScheduleOptions, AQVAEShape, ModelConfig):
    """NextAccel transformer (paper sections 4.2 to 4.4): base model, privileged teacher and distilled student.

    One dataclass serves the three engines of ``nextaccel_engine`` (``NextAccelEngine``, the default;
    ``TeacherEngine``; ``DistillationEngine``), selected with ``engine_name``, and the distillation teacher's
    ``additional_models`` entry, which has the same ``model_name``. The tokenizer's architecture keys come from
    :class:`AQVAEShape` and must match ``tokenizer_checkpoint``.
    """

    # Keys the three engines read, not the model (besides the mixins'): DIRECT does not warn that the model drops them.
    ENGINE_KEYS: ClassVar[tuple[str, ...]] = (
        "tokenizer_checkpoint",
        "tokenizer_quant_resi",
        "mask_family",
        "mask_families",
        "mask_center_fraction",
        "training_masks",
        "data_consistency",
        "write_uncertainty",
        "adam_betas",
        "prefix_noise_fraction",
        "prefix_noise",
        "prefix_model_checkpoint",
        "prefix_rollout",
        "teacher_init_checkpoint",
        "teacher_checkpoint",
        "rollout",
    )

    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.025
    context_strides: tuple[int, ...] = (16, 8, 4)
    privileged_context: bool = False
    qk_norm: bool = True

    # Frozen AQ-VAE tokenizer: a DIRECT checkpoint `model_N.pt` of `nextaccel.aqvae.AQVAE`. Its architecture is the
    # AQVAEShape keys above plus `tokenizer_quant_resi`; all must match the checkpoint.
    tokenizer_checkpoint: str | None = None
    tokenizer_quant_resi: float = 0.5
    # The one nested mask family of this model (paper: one model per family) and its calibration centre; DIRECT's
    # dataset masking must give level R32 of the same family (`masking.name: Nested<Family>`, `use_seed: true`).
    mask_family: MaskFamily = MaskFamily.cartesian_y
    # Beyond the paper: one model for several nested families (issue 16). Empty: `mask_family` alone. Training with
    # fresh masks draws one of these families per slice and step; the family is the model's conditioning label.
    mask_families: tuple[MaskFamily, ...] = ()
    mask_center_fraction: float = 0.015625
    # Training acquisitions: "file" = DIRECT's per-file seed (its R32 input is checked to be level R32), "fresh" = a
    # new nested mask per slice and iteration (augmentation; DIRECT's training input is then not used).
    training_masks: TrainingMasks = TrainingMasks.file
    # Decoding at validation and `direct predict` (DecodingOptions): argmax (paper), multinomial, top_k_top_p or beam
    # (MIAR); top_k_top_p uses the paper's 900 / 0.96.
    decoding: Decoding = Decoding.argmax
    top_k: int = 900
    top_p: float = 0.96
    # Beyond the papers: replace the acquired R32 k-space samples in the output image.
    data_consistency: bool = False
    # Beyond the papers: `direct predict` writes a per-pixel uncertainty map per volume to
    # OUTPUT/uncertainty/<file name> (dataset `uncertainty`).
    write_uncertainty: bool = False
    # Optimisation: warm-up then linear (paper base model) or cosine (paper distillation) decay to min_lr, or
    # "direct" for DIRECT's own schedule; AdamW betas set on DIRECT's optimizer (None keeps torch's defaults).
    lr_schedule: LRSchedule = LRSchedule.linear
    min_lr: float = 0.0
    adam_betas: tuple[float, float] | None = (0.9, 0.95)
    # TeacherEngine: fraction of the tokens of levels R16..R2 replaced in teacher forcing, by uniform random codes,
    # by the model's own argmax predictions ("self"), by either, half and half ("mixed"), or by the tokens of a frozen
    # base model's own rollout from the R32 input ("base_rollout": the errors a student makes). The paper says only
    # "randomized prefix tokens"; kind and fraction are this project's choice.
    prefix_noise_fraction: float = 0.0
    prefix_noise: PrefixNoise = PrefixNoise.uniform
    # prefix_noise "base_rollout": the base NextAccel's checkpoint (architecture: `additional_models.prefix_model`;
    # loaded frozen, in no optimizer and no checkpoint) and how it rolls out: multinomial (as the paper's student
    # samples), argmax or top_k_top_p, with temperature/top_k/top_p.
    prefix_model_checkpoint: str | None = None
    prefix_rollout: SamplingMode = SamplingMode.multinomial
    # TeacherEngine, beyond the paper (which does not say how its teacher starts): a base NextAccel's checkpoint whose
    # weights start the teacher, all but the privileged source embeddings. The teacher then begins near the student it
    # will correct and only has to learn to use the fully sampled image; None trains it from the tokenizer's
    # initialisation, as the base model.
    teacher_init_checkpoint: str | None = None
    # DistillationEngine: the privileged teacher's checkpoint (its architecture is `additional_models.teacher`) and
    # how the student rolls out its prefixes: multinomial (paper: "feeding each sampled token back"; softmax of
    # logits / temperature), argmax, or top_k_top_p (temperature/top_k/top_p). Sampling draws from a generator of the
    # engine that checkpoints hold, so a resumed run samples what the uninterrupted one would.
    teacher_checkpoint: str | None = None
    rollout: SamplingMode = SamplingMode.multinomial

    def _check(self) -> None:
        for key in ("depth", "embed_dim", "num_heads"):
            check_positive_int(key, getattr(self, key))
        check_positive("mlp_ratio", self.mlp_ratio)
        check_fraction("drop_path_rate", self.drop_path_rate, "[", ")")
        check_positive_ints("context_strides", self.context_strides)
        check_fraction("tokenizer_quant_resi", self.tokenizer_quant_resi)
        _check_center_fraction(self.mask_center_fraction)
        if self.adam_betas is not None:
            if len(self.adam_betas) != 2:
                raise ValueError(f"adam_betas {list(self.adam_betas)} must be two numbers in [0, 1), or null")
            for beta in self.adam_betas:
                check_fraction("adam_betas", beta, "[", ")")
        check_fraction("prefix_noise_fraction", self.prefix_noise_fraction)

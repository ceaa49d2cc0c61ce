"""DIRECT configuration dataclasses of the NextAccel models (YAML keys under ``model:``).

DIRECT builds a model from the keys its constructor accepts; the remaining keys configure the engine. Defaults are
the paper's (``projects/fastmri_brain/configs``); tiny CPU values live in ``direct_nextaccel/configs/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from direct.config.defaults import ModelConfig

from direct_nextaccel.masks.nested import DEFAULT_CENTER_FRACTION, FAMILIES


@dataclass
class AQVAEConfig(ModelConfig):
    """AQ-VAE tokenizer (paper section 4.1 and supplement section 9)."""

    in_channels: int = 2
    base_channels: int = 160
    channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    latent_dim: int = 32
    codebook_size: int = 4096
    token_grids: tuple[int, ...] = (11, 12, 13, 14, 15, 16)
    num_families: int = 4
    quant_resi: float = 0.5
    beta: float = 0.25
    ema_decay: float = 0.99
    dead_code_threshold: float = 0.0
    kmeans_init: bool = False
    image_size: tuple[int, int] = (256, 256)
    context_strides: tuple[int, ...] = (4, 8, 16)
    # Images reach the tokenizer as intensity_gain * x / s, s = the maximum of the root-sum-of-squares image of the
    # calibration centre every family shares (direct_nextaccel.core.intensity). 1/8 puts fully sampled 64 x 64 brain
    # slices at a maximum of about 1 (training subjects TCGA-DU-7294 and Lesjak cs07: median max |x| / s = 7.7,
    # 5-95%: 5.1-14).
    intensity_gain: float = 0.125

    # Engine: which acquisitions are simulated from the fully sampled k-space of each slice.
    mask_families: tuple[str, ...] = FAMILIES
    mask_center_fraction: float = DEFAULT_CENTER_FRACTION
    # Levels (0 = R32 ... 5 = FS) whose tokens form the output at validation and prediction; (0,) measures how much
    # of the slice the R = 32 tokens alone carry. Training always decodes all six.
    output_levels: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    # Initialisation from VAR's pretrained VQ-VAE (vae_ch160v4096z32.pth), as in the paper: var_init "var" reads
    # var_checkpoint or, when that is None, the file found by `direct-nextaccel doctor`; "none" trains from scratch.
    var_init: str = "var"
    var_checkpoint: str | None = None
    # Adversarial training: biomedclip (paper), vit_random or patch (explicit fallbacks), none (no discriminator).
    discriminator_backbone: str = "biomedclip"
    discriminator_weights: str | None = None
    discriminator_lr: float = 1e-4
    discriminator_weight_decay: float = 1e-4
    discriminator_grad_clip: float = 1.0
    # Learning-rate schedule replacing DIRECT's multi-step one: "cosine" (warm-up, cosine to min_lr) or "direct".
    lr_schedule: str = "cosine"
    min_lr: float = 1e-6


@dataclass
class NextAccelConfig(ModelConfig):
    """NextAccel transformer (paper sections 4.2 to 4.4): base model, privileged teacher and distilled student.

    One dataclass serves the three engines of ``nextaccel_engine`` (``NextAccelEngine``, the default;
    ``TeacherEngine``; ``DistillationEngine``), selected with ``engine_name``, and the distillation teacher's
    ``additional_models`` entry, which has the same ``model_name``.
    """

    depth: int = 16
    embed_dim: int = 1024
    num_heads: int = 16
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.025
    codebook_size: int = 4096
    latent_dim: int = 32
    token_grids: tuple[int, ...] = (11, 12, 13, 14, 15, 16)
    num_families: int = 4
    in_channels: int = 2
    base_channels: int = 160
    channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    image_size: tuple[int, int] = (256, 256)
    context_strides: tuple[int, ...] = (16, 8, 4)
    privileged_context: bool = False
    qk_norm: bool = True

    # Frozen AQ-VAE tokenizer: a DIRECT checkpoint `model_N.pt` of `nextaccel.aqvae.AQVAE`. Its architecture is the
    # keys above shared with the context encoder plus `tokenizer_quant_resi`; all must match the checkpoint.
    tokenizer_checkpoint: str | None = None
    tokenizer_quant_resi: float = 0.5
    # The one nested mask family of this model (paper: one model per family) and its calibration centre; DIRECT's
    # dataset masking must give level R32 of the same family (`masking.name: Nested<Family>`, `use_seed: true`).
    mask_family: str = "cartesian_y"
    mask_center_fraction: float = 0.015625
    # Training acquisitions: "file" = DIRECT's per-file seed (its R32 input is checked to be level R32), "fresh" = a
    # new nested mask per slice and iteration (augmentation; DIRECT's training input is then not used).
    training_masks: str = "file"
    # Decoding at validation and `direct predict`: argmax (paper), multinomial, top_k_top_p or beam (MIAR).
    decoding: str = "argmax"
    temperature: float = 1.0
    top_k: int = 900
    top_p: float = 0.96
    beam_k: int = 1
    beam_alpha: float = 1.0
    # Beyond the papers: replace the acquired R32 k-space samples in the output image.
    data_consistency: bool = False
    # Beyond the papers: `direct predict` writes a per-pixel uncertainty map per volume to
    # OUTPUT/uncertainty/<file name> (dataset `uncertainty`).
    write_uncertainty: bool = False
    # Optimisation: warm-up then linear (paper base model) or cosine (paper distillation) decay to min_lr, or
    # "direct" for DIRECT's own schedule; AdamW betas set on DIRECT's optimizer (None keeps torch's defaults).
    lr_schedule: str = "linear"
    min_lr: float = 0.0
    adam_betas: tuple[float, float] | None = (0.9, 0.95)
    # TeacherEngine: fraction of the tokens of levels R16..R2 replaced in teacher forcing, by uniform random codes,
    # by the model's own argmax predictions ("self") or by either, half and half ("mixed").
    prefix_noise_fraction: float = 0.0
    prefix_noise: str = "uniform"
    # DistillationEngine: the privileged teacher's checkpoint (its architecture is `additional_models.teacher`) and
    # how the student rolls out its prefixes: argmax (paper), multinomial or top_k_top_p (temperature/top_k/top_p).
    teacher_checkpoint: str | None = None
    rollout: str = "argmax"

"""DIRECT configuration dataclasses of the NextAccel models (YAML keys under ``model:``).

DIRECT builds a model from the keys its constructor accepts; the remaining keys configure the engine. Defaults are
the paper's (``projects/fastmri_brain/configs``); tiny CPU values live in ``configs/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from direct.config.defaults import ModelConfig


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

    # Engine: which acquisitions are simulated from the fully sampled k-space of each slice.
    mask_families: tuple[str, ...] = ("cartesian_x", "cartesian_y", "gaussian2d", "radial")
    mask_center_fraction: float = 0.015625
    # Levels (0 = R32 ... 5 = FS) whose tokens form the output at validation and prediction; (0,) measures how much
    # of the slice the R = 32 tokens alone carry. Training always decodes all six.
    output_levels: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    # Initialisation from VAR's pretrained VQ-VAE (vae_ch160v4096z32.pth); None trains from scratch.
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

"""DIRECT configuration dataclasses of the MIAR models (YAML keys under ``model:``).

DIRECT builds a model from the keys its constructor accepts; the remaining keys configure the engine. Defaults are the
paper's where it states them (``projects/miar_brain/configs``); tiny CPU values live in ``direct_nextaccel/configs/``.
"""

from __future__ import annotations

from dataclasses import dataclass

from direct.config.defaults import ModelConfig


@dataclass
class _TokenizerShape(ModelConfig):
    """The MSVQ-VAE's shape: the MIAR transformer repeats it to hold the frozen tokenizer and its encoder copy."""

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
    image_size: tuple[int, int] = (256, 256)
    # Engine: DIRECT's matrix is centre-cropped or zero-padded to image_size (and back on output).
    lr_schedule: str = "direct"  # "direct" (DIRECT's multi-step schedule), "cosine" or "linear" with warm-up
    min_lr: float = 1e-6


@dataclass
class MSVQVAEConfig(_TokenizerShape):
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


@dataclass
class MIARConfig(_TokenizerShape):
    """MIAR transformer (paper section 3.2-3.3 and appendix A)."""

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

    # Engine: the trained MSVQ-VAE (a DIRECT checkpoint, model_<N>.pt of its run), loaded when training starts.
    tokenizer_checkpoint: str | None = None
    # Gaussian blur (kernel radius 1) of the low-resolution image, in low-resolution pixels; 0 = off, 0.8 = OpenCV's
    # sigma for a 3 x 3 kernel. DIRECT baselines cannot see it: keep 0 to compare on the same input.
    lr_blur_sigma: float = 0.0
    # Inference: argmax, multinomial, top_k_top_p or beam (MIAR's beam search with beam_k in 1..3).
    decoding: str = "beam"
    beam_k: int = 1
    beam_alpha: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    temperature: float = 1.0

"""AQ-VAE: the NextAccel tokenizer, one token grid per acceleration level, one shared codebook, averaged decoding.

Each acceleration level (index 0 = R32 ... 5 = fully sampled) is encoded by one FiLM-conditioned encoder, its latent
is area-shrunk to the level's token grid (11x11 ... 16x16) and quantized with the shared codebook. Decoding enlarges
each level's codes to the common latent grid, applies the level's residual post-quantization conv (VAR's Phi) and
decodes the average over the levels present (paper section 4.1 and supplement section 9).
"""

import logging
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from direct_nextaccel.core.intensity import register_gain
from direct_nextaccel.modules.quantizer import Phi, SharedCodebookQuantizer, resize_latent
from direct_nextaccel.modules.vqvae import Decoder, Encoder, load_var_vqvae_weights

logger = logging.getLogger(__name__)


class AQVAEEncoding(NamedTuple):
    """What :meth:`AQVAE.encode` returns; every list is aligned with the requested levels."""

    indices: list[torch.Tensor]
    """Token indices per level, long (B, g, g)."""
    z_q: list[torch.Tensor]
    """Quantized latents per level (B, D, g, g), with rotation-trick gradients to the encoder."""
    commit_loss: torch.Tensor
    """Scalar commitment loss averaged over the levels."""
    features: dict[int, torch.Tensor] | None
    """Encoder features ``{side: (B, L, C, side, side')}`` for the L levels, or None unless asked for."""


class AQVAE(nn.Module):
    """Additive quantized VAE over acceleration levels.

    Parameters
    ----------
    in_channels : int
        Image channels (2: real, imaginary).
    base_channels, channel_multipliers, num_res_blocks, latent_dim
        Encoder/decoder shape (paper: 160, (1, 1, 2, 2, 4), 2, 32); total stride ``2**(len(multipliers) - 1)``.
    codebook_size : int
        Shared codebook size (paper: 4096).
    token_grids : Sequence[int]
        Token-grid side per level, coarse to fine (paper: 11 ... 16), each at most the latent grid side.
    num_families : int
        Mask families conditioning the encoder (4).
    quant_resi : float
        Strength of the per-level residual post-quantization conv (paper: 0.5).
    beta : float
        Commitment weight (paper: 0.25).
    ema_decay, dead_code_threshold, kmeans_init
        Codebook training, see :class:`SharedCodebookQuantizer`.
    image_size : Sequence[int]
        Input (H, W), divisible by the total stride.
    context_strides : Sequence[int]
        Encoder strides whose features :meth:`context_features` returns (paper: 4, 8, 16 -> 64, 32, 16 at 256).
    intensity_gain : float
        Images reach the tokenizer as ``intensity_gain * x / s`` with ``s`` the slice's reference scale
        (:mod:`direct_nextaccel.core.intensity`); kept as a buffer, so every checkpoint carries its convention.
    forward_operator, backward_operator
        Passed by DIRECT to every model; the tokenizer works on images and ignores them.
    """

    def __init__(
        self,
        in_channels: int = 2,
        base_channels: int = 160,
        channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        latent_dim: int = 32,
        codebook_size: int = 4096,
        token_grids: Sequence[int] = (11, 12, 13, 14, 15, 16),
        num_families: int = 4,
        quant_resi: float = 0.5,
        beta: float = 0.25,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.0,
        kmeans_init: bool = False,
        image_size: Sequence[int] = (256, 256),
        context_strides: Sequence[int] = (4, 8, 16),
        intensity_gain: float = 0.125,
        forward_operator: Any = None,
        backward_operator: Any = None,
    ) -> None:
        super().__init__()
        stride = 2 ** (len(channel_multipliers) - 1)
        if len(image_size) != 2 or image_size[0] % stride or image_size[1] % stride:
            raise ValueError(f"image_size {tuple(image_size)} is not (H, W) divisible by the total stride {stride}")
        latent_side = min(image_size) // stride
        if len(token_grids) == 0:
            raise ValueError("token_grids is empty")
        for grid in token_grids:
            if not 1 <= grid <= latent_side:
                raise ValueError(
                    f"token grid {grid} is not between 1 and the latent grid side {latent_side} "
                    f"(image_size {tuple(image_size)} / stride {stride})"
                )
        if num_families < 1:
            raise ValueError(f"num_families {num_families} must be at least 1")
        self.in_channels = in_channels
        self.token_grids = tuple(token_grids)
        self.num_levels = len(self.token_grids)
        self.num_families = num_families
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.latent_hw = (self.image_size[0] // stride, self.image_size[1] // stride)

        self.encoder = Encoder(
            in_channels=in_channels,
            base_channels=base_channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            latent_dim=latent_dim,
            num_labels=(self.num_levels, num_families),
            feature_strides=context_strides,
        )
        self.quantizer = SharedCodebookQuantizer(
            codebook_size=codebook_size,
            dim=latent_dim,
            beta=beta,
            ema_decay=ema_decay,
            dead_code_threshold=dead_code_threshold,
            kmeans_init=kmeans_init,
        )
        self.phi = nn.ModuleList(Phi(latent_dim, quant_resi) for _ in self.token_grids)
        register_gain(self, intensity_gain)
        self.decoder = Decoder(
            out_channels=in_channels,
            base_channels=base_channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            latent_dim=latent_dim,
        )

    def _check_levels(self, levels: Sequence[int] | None) -> list[int]:
        if levels is None:
            return list(range(self.num_levels))
        levels = [int(level) for level in levels]
        if len(levels) == 0:
            raise ValueError("levels is empty")
        for level in levels:
            if not 0 <= level < self.num_levels:
                raise ValueError(f"level {level} is not a level index in [0, {self.num_levels})")
        if len(set(levels)) != len(levels):
            raise ValueError(f"levels {levels} repeat a level")
        return levels

    def _check_family(self, family: torch.Tensor, batch: int, check_values: bool) -> None:
        if family.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"family must be an integer tensor, got {family.dtype}")
        if tuple(family.shape) != (batch,):
            raise ValueError(f"family must have shape ({batch},), got {tuple(family.shape)}")
        if check_values:  # one read of the device
            outside = (family < 0) | (family >= self.num_families)
            if outside.any():
                raise ValueError(f"mask family {family[outside][0].item()} is outside [0, {self.num_families})")

    def _check_image_size(self, images: torch.Tensor) -> None:
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"image size {tuple(images.shape[-2:])} differs from the model's {self.image_size}")

    def encode(
        self,
        images: torch.Tensor,
        family: torch.Tensor,
        levels: Sequence[int] | None = None,
        return_features: bool = False,
        *,
        check_values: bool = True,
    ) -> AQVAEEncoding:
        """Tokenize the images of several acceleration levels with one encoder pass.

        In training mode the codebook statistics are accumulated for the next :meth:`ema_update`.

        Parameters
        ----------
        images : torch.Tensor
            (B, L, in_channels, H, W), image ``l`` acquired at level ``levels[l]``.
        family : torch.Tensor
            Long (B,) mask-family index.
        levels : Sequence[int] | None
            Level indices of the L images (default all levels, in order).
        return_features : bool
            Also return the encoder's context features of every level.
        check_values : bool
            Refuse a family label outside ``[0, num_families)`` (one read of the device). The engines pass False:
            their labels come from validated family names, so a training step does not wait for the device here.

        Returns
        -------
        AQVAEEncoding
        """
        levels = self._check_levels(levels)
        if images.ndim != 5 or images.shape[1] != len(levels) or images.shape[2] != self.in_channels:
            raise ValueError(
                f"expected images of shape (B, {len(levels)}, {self.in_channels}, H, W) for levels {levels}, "
                f"got {tuple(images.shape)}"
            )
        self._check_image_size(images)
        batch, num = images.shape[:2]
        self._check_family(family, batch, check_values)
        # One pass over B * L images; GroupNorm is per sample, so this equals encoding each level on its own.
        level_labels = torch.tensor(levels, device=images.device).repeat(batch)  # B*L, batch-major
        family_labels = family.long().repeat_interleave(num)  # B*L
        z, features = self.encoder(
            images.flatten(0, 1), (level_labels, family_labels), return_features=True, check_values=False
        )
        z = z.unflatten(0, (batch, num))  # B, L, D, h, w

        indices, z_q, commit = [], [], []
        for i, level in enumerate(levels):
            grid = self.token_grids[level]
            zq_level, idx, loss = self.quantizer.quantize(
                resize_latent(z[:, i], (grid, grid)), accumulate=self.training
            )
            indices.append(idx)
            z_q.append(zq_level)
            commit.append(loss)
        features = {side: f.unflatten(0, (batch, num)) for side, f in features.items()} if return_features else None
        return AQVAEEncoding(indices, z_q, torch.stack(commit).mean(), features)

    def post_quant(self, z_q: torch.Tensor, level: int) -> torch.Tensor:
        """Enlarge one level's quantized latent (B, D, g, g) to the latent grid (bicubic) and apply its Phi.

        As in VAR, the residual conv runs after enlargement, at the common latent resolution.
        """
        return self.phi[level](resize_latent(z_q, self.latent_hw))

    def fuse(self, z_q: Sequence[torch.Tensor], levels: Sequence[int]) -> torch.Tensor:
        """Average the post-quantized latents of the given levels into one latent (B, D, h, w).

        Levels are summed in increasing order whatever the order given, so that equal inputs fuse bit-identically.
        """
        if len(z_q) != len(levels):
            raise ValueError(f"{len(z_q)} latents for {len(levels)} levels")
        order = sorted(range(len(levels)), key=lambda i: levels[i])
        fused = None
        for i in order:
            contribution = self.post_quant(z_q[i], levels[i])
            fused = contribution if fused is None else fused + contribution
        return fused / len(levels)

    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode a fused latent (B, D, h, w) into images (B, in_channels, H, W)."""
        return self.decoder(latent)

    def decode_indices(
        self, indices: Mapping[int, torch.Tensor] | Sequence[torch.Tensor], levels: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Decode tokens of any subset of levels into images (B, in_channels, H, W).

        Parameters
        ----------
        indices : Mapping[int, torch.Tensor] | Sequence[torch.Tensor]
            ``{level: (B, g, g)}``, or a list aligned with ``levels``.
        levels : Sequence[int] | None
            Levels of a list of indices (default all levels); not allowed with a mapping.
        """
        if isinstance(indices, Mapping):
            if levels is not None:
                raise ValueError("levels must be None when indices is a mapping from level to tokens")
            levels, tokens = self._check_levels(list(indices.keys())), list(indices.values())
        else:
            levels, tokens = self._check_levels(levels), list(indices)
            if len(tokens) != len(levels):
                raise ValueError(f"{len(tokens)} token grids given for levels {levels}")
        for level, idx in zip(levels, tokens, strict=True):
            grid = self.token_grids[level]
            if idx.ndim != 3 or tuple(idx.shape[1:]) != (grid, grid):
                raise ValueError(f"level {level} expects tokens of shape (B, {grid}, {grid}), got {tuple(idx.shape)}")
        return self.decode_latent(self.fuse([self.quantizer.lookup(idx) for idx in tokens], levels))

    def forward(
        self,
        images: torch.Tensor,
        family: torch.Tensor,
        levels: Sequence[int] | None = None,
        *,
        check_values: bool = True,
    ) -> dict[str, Any]:
        """Tokenize and reconstruct.

        Parameters
        ----------
        images : torch.Tensor
            (B, L, in_channels, H, W) for the L levels (default all, in order).
        family : torch.Tensor
            Long (B,) mask-family index.
        levels : Sequence[int] | None
            Level indices of the images.
        check_values : bool
            As in :meth:`encode`.

        Returns
        -------
        dict[str, Any]
            ``reconstruction`` (B, in_channels, H, W); ``indices`` list of (B, g, g); ``commit_loss`` scalar;
            ``usage`` list of (used fraction, perplexity) scalar pairs per level; ``levels`` the level indices.
        """
        levels = self._check_levels(levels)
        encoding = self.encode(images, family, levels, check_values=check_values)
        reconstruction = self.decode_latent(self.fuse(encoding.z_q, levels))
        usage = [self.quantizer.usage(idx) for idx in encoding.indices]
        return {
            "reconstruction": reconstruction,
            "indices": encoding.indices,
            "commit_loss": encoding.commit_loss,
            "usage": usage,
            "levels": levels,
        }

    def context_features(self, image: torch.Tensor, family: torch.Tensor, level: int = 0) -> dict[int, torch.Tensor]:
        """Encoder features of one level's image, the transformer's cross-attention context.

        Parameters
        ----------
        image : torch.Tensor
            (B, in_channels, H, W), typically the R32 image (level 0).
        family : torch.Tensor
            Long (B,) mask-family index.
        level : int
            Acceleration level index conditioning the encoder.

        Returns
        -------
        dict[int, torch.Tensor]
            ``{side: (B, C_s, side, W/s)}`` per context stride ``s``; widths in ``encoder.feature_channels``.
        """
        (level,) = self._check_levels([level])
        if image.ndim != 4:
            raise ValueError(f"expected an image of shape (B, {self.in_channels}, H, W), got {tuple(image.shape)}")
        self._check_image_size(image)
        self._check_family(family, image.shape[0], check_values=True)
        labels = (torch.full_like(family, level, dtype=torch.long), family.long())
        return self.encoder(image, labels, return_features=True, check_values=False)[1]

    def ema_update(self) -> None:
        """Apply the codebook EMA step for everything encoded in training mode since the last call."""
        self.quantizer.ema_update()

    def load_var_weights(
        self, state_dict_or_path: Mapping[str, torch.Tensor] | str | PathLike, load_codebook: bool = False
    ) -> None:
        """Initialise encoder, decoder and Phi convs from VAR's pretrained VQ-VAE (FiLM stays at identity).

        VAR shares K Phi convs (``quantize.quant_resi.qresi_ls.k``) among its scales by position in [0, 1]; level
        ``l`` of L takes the conv whose tick is nearest to ``l / (L - 1)``, VAR's rule. ``load_codebook`` also
        copies VAR's codebook, which the paper re-initialises instead.
        """
        if isinstance(state_dict_or_path, Mapping):
            state = state_dict_or_path
        else:
            state = torch.load(state_dict_or_path, map_location="cpu", weights_only=True)
        prefix = "quantize.quant_resi.qresi_ls."
        shared = sorted({int(key[len(prefix) :].split(".")[0]) for key in state if key.startswith(prefix)})
        phi_sources = []
        if shared:
            count = len(shared)
            # VAR's tick placement of K partially shared Phi convs (``PhiPartiallyShared``).
            margin = 1 / 3 / count if count == 4 else 1 / 2 / count
            ticks = np.linspace(margin, 1 - margin, count)
            for level, phi in enumerate(self.phi):
                position = level / (self.num_levels - 1) if self.num_levels > 1 else 0.0
                k = int(np.argmin(np.abs(ticks - position)))
                for name in ("weight", "bias"):
                    key, target = f"{prefix}{k}.{name}", getattr(phi.conv, name)
                    if key not in state or state[key].shape != target.shape:
                        raise ValueError(
                            f"VAR key '{key}' is missing or does not fit Phi conv {name} {tuple(target.shape)}"
                        )
                    phi_sources.append((target, state[key]))
        load_var_vqvae_weights(self.encoder, self.decoder, state, self.quantizer if load_codebook else None)
        if not phi_sources:
            logger.warning("VAR state dict has no '%s*' Phi convs; the per-level Phi convs keep their init", prefix)
        with torch.no_grad():
            for target, source in phi_sources:
                target.copy_(source)

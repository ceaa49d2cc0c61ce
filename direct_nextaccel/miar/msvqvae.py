"""MSVQ-VAE: MIAR's tokenizer, VAR's residual multi-scale quantization with scale-aware dropout in the bottleneck.

An image is encoded to one latent ``f`` (B, D, h, w) at stride 8. Scale ``k`` area-shrinks what is left of ``f`` to an
``s_k x s_k`` grid, quantizes it with the shared EMA codebook, enlarges the codes back to (h, w) (bicubic), passes them
through VAR's residual convolution Phi and subtracts them from the residual (paper eq. 1-2). The decoder sees the sum
of all scales' contributions. Token maps of the last scale cover the full latent grid.

Scale-aware dropout (paper section 4.4.2, Fig. 3a/3c)
    The paper says dropout is applied "in the MSVQ-VAE bottleneck" and that without it "the model defers most of the
    information reconstruction to the final few scales", while with it the scales "incrementally enrich" the image.
    We implement the reading that produces exactly that effect: during training each sample, with probability
    ``scale_dropout``, keeps only the contributions of its first ``K`` scales, ``K`` uniform in ``1 .. S-1``, and the
    decoder reconstructs the full-resolution target from that partial sum. Quantization itself still runs over all
    scales (so every scale's tokens, codebook statistics and commitment loss are unchanged: a scale's residual only
    depends on coarser scales), only the finer contributions are withheld from the decoder. A decoder that must
    produce a good image from any prefix forces the coarse scales to carry coarse content, which is what MIAR's
    coarse-to-fine generation needs. Evaluation never drops anything.

Gradients
    Training quantizes every scale with :meth:`SharedCodebookQuantizer.quantize` (rotation-trick gradients, statistics
    accumulated for one EMA step per iteration), so the decoder's gradient reaches the encoder through exactly the
    scales it was given; a straight-through copy of ``f`` (VAR's) would credit the encoder for dropped scales too.
    Tokenizing for the transformer uses the gradient-free :func:`residual_multiscale_quantize`, which gives the same
    indices.
"""

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from direct_nextaccel.core.intensity import register_gain
from direct_nextaccel.modules.quantizer import (
    Phi,
    SharedCodebookQuantizer,
    decode_multiscale,
    residual_multiscale_quantize,
    resize_latent,
)
from direct_nextaccel.modules.vqvae import Decoder, Encoder


def check_scales(scales: Sequence[int], latent_side: int) -> tuple[int, ...]:
    """Return ``scales`` as a tuple, or raise naming it unless it grows strictly from >= 1 to ``latent_side``."""
    scales = tuple(int(s) for s in scales)
    if not scales or scales[0] < 1 or any(b <= a for a, b in itertools.pairwise(scales)):
        raise ValueError(f"scales {scales} must be strictly increasing token-grid sides >= 1")
    if scales[-1] != latent_side:
        raise ValueError(f"scales {scales} must end at the latent grid side {latent_side} (image side / stride)")
    return scales


def phi_ticks(num_phi: int) -> np.ndarray:
    """Positions in [0, 1] of VAR's partially shared Phi convolutions (``PhiPartiallyShared``)."""
    margin = 1 / 3 / num_phi if num_phi == 4 else 1 / 2 / num_phi
    return np.linspace(margin, 1 - margin, num_phi)


class MSVQVAE(nn.Module):
    """Multi-scale residual VQ-VAE (VAR) with scale-aware dropout (MIAR).

    Parameters
    ----------
    in_channels : int
        Image channels (2: real and imaginary part of the coil-combined image).
    base_channels, channel_multipliers, num_res_blocks
        Encoder/decoder shape; the stride is ``2 ** (len(channel_multipliers) - 1)`` (MIAR: 8, e.g. (1, 1, 2, 4)).
    latent_dim : int
        Code dimension D (MIAR: 32).
    codebook_size : int
        Codes V (MIAR: 4096).
    scales : Sequence[int]
        Token-grid side per scale, strictly increasing, ending at the latent side (image side / stride).
    quant_resi : float
        Strength of the Phi convolutions (VAR: 0.5).
    num_phi : int
        Phi convolutions shared among the scales by position, VAR's rule (VAR: 4); scale ``k`` of ``S`` uses the one
        whose tick is nearest to ``k / (S - 1)``.
    beta, ema_decay, dead_code_threshold, kmeans_init
        Codebook training, see :class:`SharedCodebookQuantizer`; the k-means start runs on the full-resolution latent
        vectors of the first training batch.
    scale_dropout : float
        Probability in [0, 1) that a training sample is decoded from a random prefix of its scales.
    image_size : Sequence[int]
        Square input (H, W), divisible by the stride.
    intensity_gain : float
        Images reach the tokenizer as ``intensity_gain * x / s`` with ``s`` the slice's reference scale from its
        low-resolution block (:mod:`direct_nextaccel.core.intensity`); kept as a buffer, so every checkpoint carries
        its convention.
    forward_operator, backward_operator
        Passed by DIRECT to every model; the tokenizer works on images and ignores them.
    """

    def __init__(
        self,
        in_channels: int = 2,
        base_channels: int = 160,
        channel_multipliers: Sequence[int] = (1, 1, 2, 4),
        num_res_blocks: int = 2,
        latent_dim: int = 32,
        codebook_size: int = 4096,
        scales: Sequence[int] = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32),
        quant_resi: float = 0.5,
        num_phi: int = 4,
        beta: float = 0.25,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.0,
        kmeans_init: bool = False,
        scale_dropout: float = 0.5,
        image_size: Sequence[int] = (256, 256),
        intensity_gain: float = 1.0,
        forward_operator: Any = None,
        backward_operator: Any = None,
    ) -> None:
        super().__init__()
        stride = 2 ** (len(channel_multipliers) - 1)
        if len(image_size) != 2 or image_size[0] != image_size[1] or image_size[0] % stride:
            raise ValueError(f"image_size {tuple(image_size)} must be square (H, H) with H divisible by {stride}")
        if not 0.0 <= scale_dropout < 1.0:
            raise ValueError(f"scale_dropout {scale_dropout} is not in [0, 1)")
        if num_phi < 1:
            raise ValueError(f"num_phi {num_phi} must be at least 1")
        self.in_channels = in_channels
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.latent_hw = (self.image_size[0] // stride, self.image_size[1] // stride)
        self.scales = check_scales(scales, self.latent_hw[0])
        self.num_scales = len(self.scales)
        self.scale_dropout = scale_dropout

        # FiLM with one dummy label: the shared encoder is conditional, MIAR's is not (identity at init and after).
        self.encoder = Encoder(
            in_channels=in_channels,
            base_channels=base_channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            latent_dim=latent_dim,
            num_labels=(1,),
            feature_strides=(),
        )
        self.quantizer = SharedCodebookQuantizer(
            codebook_size=codebook_size,
            dim=latent_dim,
            beta=beta,
            ema_decay=ema_decay,
            dead_code_threshold=dead_code_threshold,
            kmeans_init=kmeans_init,
        )
        self.phi = nn.ModuleList(Phi(latent_dim, quant_resi) for _ in range(num_phi))
        ticks = phi_ticks(num_phi)
        positions = [k / (self.num_scales - 1) if self.num_scales > 1 else 0.0 for k in range(self.num_scales)]
        #: index into ``phi`` of every scale
        self.phi_of_scale = [int(np.argmin(np.abs(ticks - p))) for p in positions]
        register_gain(self, intensity_gain)
        self.decoder = Decoder(
            out_channels=in_channels,
            base_channels=base_channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            latent_dim=latent_dim,
        )

    @property
    def token_lengths(self) -> list[int]:
        """Tokens per scale, ``s_k ** 2``."""
        return [s * s for s in self.scales]

    def _check_images(self, images: torch.Tensor) -> None:
        expected = (self.in_channels, *self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape (B, {', '.join(map(str, expected))}), got {tuple(images.shape)}")

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """Continuous latent (B, D, h, w) of images (B, in_channels, H, W)."""
        self._check_images(images)
        labels = (torch.zeros(images.shape[0], dtype=torch.long, device=images.device),)
        return self.encoder(images, labels, check_values=False)  # labels built here

    def post(self, codes: torch.Tensor, scale: int) -> torch.Tensor:
        """Contribution (B, D, h, w) of scale ``scale`` from its codes already enlarged to the latent grid."""
        return self.phi[self.phi_of_scale[scale]](codes)

    def quantize(self, f: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Residual multi-scale quantization with gradients (training statistics accumulated in training mode).

        Returns
        -------
        indices : list of Tensor
            Long (B, s_k, s_k) per scale.
        contributions : list of Tensor
            Phi'd enlarged codes (B, D, h, w) per scale, whose sum approximates ``f``.
        commit_loss : Tensor
            Scalar, mean over scales of ``beta * MSE(residual_k, code_k)``.
        """
        quantizer = self.quantizer
        if self.training and quantizer.kmeans_init and not bool(quantizer.initialized):
            # The k-means start uses the first grid it is given; give it the B*h*w full-resolution latent vectors,
            # not the B vectors of the 1 x 1 scale that comes first in the loop.
            quantizer.quantize(f.detach())
        rest, indices, contributions, commit = f, [], [], []
        for k, side in enumerate(self.scales):
            z_q, idx, loss = self.quantizer.quantize(resize_latent(rest, (side, side)), accumulate=self.training)
            h = self.post(resize_latent(z_q, self.latent_hw), k)
            rest = rest - h
            indices.append(idx)
            contributions.append(h)
            commit.append(loss)
        return indices, contributions, torch.stack(commit).mean()

    def kept_scales(self, batch: int, device: torch.device | str) -> torch.Tensor:
        """Scales each sample's decoder sees, long (B,): all ``S`` at evaluation, a random prefix under dropout."""
        kept = torch.full((batch,), self.num_scales, dtype=torch.long, device=device)
        if not self.training or self.scale_dropout == 0.0 or self.num_scales == 1:
            return kept
        dropped = torch.rand(batch, device=device) < self.scale_dropout
        prefix = torch.randint(1, self.num_scales, (batch,), device=device)
        return torch.where(dropped, prefix, kept)

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        """Tokenize and reconstruct, with scale-aware dropout in training mode.

        Parameters
        ----------
        images : torch.Tensor
            (B, in_channels, H, W).

        Returns
        -------
        dict[str, Any]
            ``reconstruction`` (B, in_channels, H, W); ``indices`` list of (B, s, s); ``commit_loss`` scalar;
            ``usage`` list of (used fraction, perplexity) per scale; ``kept_scales`` long (B,).
        """
        f = self.encode_latent(images)  # B, D, h, w
        indices, contributions, commit_loss = self.quantize(f)
        kept = self.kept_scales(f.shape[0], f.device)
        f_hat = sum(h * (k < kept).to(h.dtype)[:, None, None, None] for k, h in enumerate(contributions))  # B, D, h, w
        return {
            "reconstruction": self.decoder(f_hat),
            "indices": indices,
            "commit_loss": commit_loss,
            "usage": [self.quantizer.usage(idx) for idx in indices],
            "kept_scales": kept,
        }

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Token maps of images without gradient or codebook statistics (the transformer's targets).

        Returns
        -------
        indices : list of Tensor
            Long (B, s_k, s_k) per scale.
        cumulative : list of Tensor
            Latent (B, D, h, w) reconstructed from scales ``0..k``, per scale ``k``.
        """
        return residual_multiscale_quantize(self.quantizer, self.encode_latent(images), self.scales, post=self.post)

    def _check_indices(self, indices: Sequence[torch.Tensor]) -> None:
        if len(indices) > self.num_scales:
            raise ValueError(f"{len(indices)} token maps given, the tokenizer has {self.num_scales} scales")
        for k, idx in enumerate(indices):
            side = self.scales[k]
            if idx.ndim != 3 or tuple(idx.shape[1:]) != (side, side):
                raise ValueError(f"scale {k} expects tokens of shape (B, {side}, {side}), got {tuple(idx.shape)}")

    def contribution(self, indices: torch.Tensor, scale: int) -> torch.Tensor:
        """What the tokens (B, s, s) of scale ``scale`` add to the latent: Phi of their enlarged codes (B, D, h, w)."""
        return self.post(resize_latent(self.quantizer.lookup(indices), self.latent_hw), scale)

    def cumulative_latent(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Latent (B, D, h, w) of the first ``len(indices)`` scales' tokens."""
        self._check_indices(indices)
        return decode_multiscale(self.quantizer, indices, self.latent_hw, post=self.post)

    def cumulative_latents(self, indices: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Latents (B, D, h, w) after each of the first ``len(indices)`` scales (every prefix sum)."""
        self._check_indices(indices)
        running, latents = None, []
        for k, idx in enumerate(indices):
            h = self.contribution(idx, k)
            running = h if running is None else running + h
            latents.append(running)
        return latents

    def decode_indices(self, indices: Sequence[torch.Tensor]) -> torch.Tensor:
        """Images (B, in_channels, H, W) from the tokens of the first ``len(indices)`` scales (all for the full image,
        fewer for MIAR's layer-wise reconstructions, Fig. 3a)."""
        if not 1 <= len(indices) <= self.num_scales:
            raise ValueError(f"{len(indices)} token maps given, expected 1 to {self.num_scales}")
        return self.decoder(self.cumulative_latent(indices))

    def ema_update(self) -> None:
        """Apply the codebook EMA step for everything quantized in training mode since the last call."""
        self.quantizer.ema_update()

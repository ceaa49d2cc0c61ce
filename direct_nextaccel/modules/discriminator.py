"""The AQ-VAE's adversarial counterpart: small trainable heads on a frozen ViT's block activations, trained as an LSGAN.

Following the paper (supplement section 9, after I2I-GALIP and StyleGAN-T), the feature extractor phi is BiomedCLIP's
ViT-B/16 image tower, frozen; one lightweight conv head per chosen block (0-based blocks 2, 5, 8, 11, see
:mod:`direct_nextaccel.modules.vit`) turns that block's patch tokens into a map of real-vs-fake logits. Gradients flow
through the frozen ViT to the input image (the generator's adversarial loss needs them) but never into its weights.

Objective (least squares), with every head's logit map weighted equally::

    L_D   = 0.5 * [MSE(D(phi(x)), 1) + MSE(D(phi(x_hat).detach()), 0)]
    L_adv = MSE(D(phi(x_hat)), 1)

Two stand-in backbones exist for runs without the BiomedCLIP file, each announced by one warning per process:
``"vit_random"`` (the same ViT, randomly initialised and frozen) and ``"patch"`` (no frozen extractor, a small
PatchGAN-style conv net on the image, for tiny CPU runs). Neither is the paper's discriminator.

The discriminator is not part of the generator: the engine keeps it outside the model DIRECT wraps in DDP and steps it
with :func:`discriminator_step`, which averages its gradients across ranks itself.
"""

import functools
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from direct_nextaccel.modules.vit import VisionTransformer, load_biomedclip_visual
from direct_nextaccel.weights import find_weight, missing_weight_message

logger = logging.getLogger(__name__)

BACKBONES = ("biomedclip", "vit_random", "patch")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""OpenAI CLIP normalisation, which BiomedCLIP's open_clip preprocessing uses."""

Logits = Tensor | Sequence[Tensor]
"""One logit map, or a list of them (one per head) as :meth:`ProjectedDiscriminator.forward` returns."""


@functools.cache
def _warn_stand_in(backbone: str) -> None:
    what = {
        "vit_random": "a randomly initialised frozen ViT",
        "patch": "a small PatchGAN conv net on the image (no frozen feature extractor)",
    }[backbone]
    logger.warning(
        "discriminator backbone %r is %s: this is NOT the paper's BiomedCLIP discriminator, adversarial results are "
        "not comparable",
        backbone,
        what,
    )


class TokenHead(nn.Module):
    """Projected head on one ViT block: patch tokens -> (B, 1, gh, gw) real-vs-fake logits.

    LayerNorm per token (intermediate residual streams grow in scale with depth, so each head sees unit-scale
    features), 1x1 conv to ``channels``, LeakyReLU, 3x3 conv (local context across neighbouring patches), LeakyReLU,
    1x1 conv to one logit per patch.
    """

    def __init__(self, dim: int, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(
            nn.Conv2d(dim, channels, kernel_size=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(channels, 1, kernel_size=1),
        )

    def forward(self, tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Patch tokens (B, gh * gw, dim) in row-major order -> logits (B, 1, gh, gw)."""
        features = self.norm(tokens).transpose(1, 2).unflatten(2, grid)  # B, C, gh, gw
        return self.net(features)


class PatchDiscriminator(nn.Module):
    """PatchGAN-style conv discriminator on a one-channel image: three stride-2 4x4 convs, then one logit per patch.

    Input (B, 1, H, W) in about [-1, 1]; output (B, 1, H / 8, W / 8) logits (receptive field 38 pixels).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 1
        for out_channels in (channels, 2 * channels, 4 * channels):
            layers += [nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            in_channels = out_channels
        layers.append(nn.Conv2d(in_channels, 1, kernel_size=3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image)


class ProjectedDiscriminator(nn.Module):
    """Real-vs-fake discriminator for magnitude images: projected heads on a frozen ViT (or a PatchGAN stand-in).

    Parameters
    ----------
    backbone : str
        ``"biomedclip"`` (the paper: ViT-B/16 loaded from BiomedCLIP's open_clip checkpoint), ``"vit_random"`` (the
        same ViT randomly initialised and frozen) or ``"patch"`` (:class:`PatchDiscriminator`, no ViT). The stand-ins
        log a warning once per process.
    weights_path : str or Path, optional
        BiomedCLIP's ``open_clip_pytorch_model.bin``; default: searched by
        :func:`~direct_nextaccel.weights.find_weight`. Only read for ``"biomedclip"``.
    block_indices : sequence of int
        0-based ViT blocks that get a head; each must be below ``vit_depth``.
    head_channels : int
        Hidden channels of each head (base channels of the PatchGAN for ``"patch"``).
    image_size : int
        Side the input is resized to before the ViT (BiomedCLIP: 224, its positional grid).
    vit_dim, vit_depth, vit_heads, patch_size : int
        ViT architecture (BiomedCLIP: 768, 12, 12, 16); tests use tiny ones.

    Notes
    -----
    The frozen ViT stays in the state dict, so a checkpoint is self-contained (about 344 MB for ViT-B/16); it has
    ``requires_grad=False`` and stays in eval mode whatever :meth:`train` is called with. The paper configuration
    (ViT-B/16, 4 heads of 64 channels) has 85.80 M frozen and 0.35 M trainable parameters.
    """

    def __init__(
        self,
        backbone: str = "biomedclip",
        weights_path: str | Path | None = None,
        block_indices: Sequence[int] = (2, 5, 8, 11),
        head_channels: int = 64,
        image_size: int = 224,
        vit_dim: int = 768,
        vit_depth: int = 12,
        vit_heads: int = 12,
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"discriminator backbone {backbone!r} is not one of {BACKBONES}")
        if head_channels < 1:
            raise ValueError(f"head_channels {head_channels} must be positive")
        self.backbone_name = backbone
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        if backbone == "patch":
            _warn_stand_in(backbone)
            self.vit = None
            self.block_indices: list[int] = []
            self.heads = nn.ModuleList([PatchDiscriminator(head_channels)])
            return
        vit = VisionTransformer(image_size, patch_size, vit_dim, vit_depth, vit_heads)
        self.block_indices = vit.check_block_indices(block_indices)
        if backbone == "biomedclip":
            load_biomedclip_visual(vit, _biomedclip_file(weights_path))
        else:
            _warn_stand_in(backbone)
        self.vit = vit.eval().requires_grad_(False)
        self.heads = nn.ModuleList(TokenHead(vit_dim, head_channels) for _ in self.block_indices)

    def train(self, mode: bool = True) -> "ProjectedDiscriminator":
        """Set the heads' mode; the frozen ViT always stays in eval mode."""
        super().train(mode)
        if self.vit is not None:
            self.vit.eval()
        return self

    def preprocess(self, image: Tensor) -> Tensor:
        """Magnitude images (B, 1, H, W) in [0, 1] -> (B, 3, image_size, image_size) CLIP-normalised ViT input.

        Resized (bilinear, antialiased) to a square, so a non-square image is stretched, identically for real and
        fake; the channel is replicated to RGB.
        """
        size = (self.image_size, self.image_size)
        if tuple(image.shape[-2:]) != size:
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
        return (image.expand(-1, 3, -1, -1) - self.mean) / self.std

    def forward(self, image: Tensor) -> list[Tensor]:
        """Real-vs-fake logit maps of magnitude images.

        Parameters
        ----------
        image : Tensor
            (B, 1, H, W), magnitudes scaled to about [0, 1] (the engine divides by the target's per-image maximum).

        Returns
        -------
        list of Tensor
            One (B, 1, h, w) logit map per head: per ViT block (h = w = image_size / patch_size), or the single
            PatchGAN map (h, w = H / 8, W / 8). :func:`discriminator_loss` and :func:`generator_adversarial_loss`
            take this list as is.
        """
        if image.ndim != 4 or image.shape[1] != 1:
            raise ValueError(f"discriminator input must be (B, 1, H, W) magnitude images, got {tuple(image.shape)}")
        if self.vit is None:
            return [self.heads[0](2 * image - 1)]
        x = self.preprocess(image)
        grid = (x.shape[-2] // self.vit.patch_size, x.shape[-1] // self.vit.patch_size)
        features = self.vit.forward_features(x, self.block_indices)  # each B, 1 + N, C
        return [head(tokens[:, 1:], grid) for head, tokens in zip(self.heads, features, strict=True)]


def _biomedclip_file(weights_path: str | Path | None) -> Path:
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"BiomedCLIP weights_path {str(path)!r} is not a file")
        return path
    path = find_weight("biomedclip")
    if path is None:
        raise FileNotFoundError(f"BiomedCLIP discriminator unavailable: {missing_weight_message('biomedclip')}")
    return path


def _as_list(logits: Logits) -> list[Tensor]:
    maps = [logits] if isinstance(logits, Tensor) else list(logits)
    if not maps:
        raise ValueError("no discriminator logits given")
    return maps


def _least_squares(logits: Logits, target: float) -> Tensor:
    """Mean over heads of each head's MSE to ``target``, so every feature level counts equally."""
    maps = _as_list(logits)
    return torch.stack([F.mse_loss(m, torch.full_like(m, target)) for m in maps]).mean()


def discriminator_loss(d_real_logits: Logits, d_fake_logits: Logits) -> Tensor:
    """LSGAN discriminator loss 0.5 * [MSE(D(x), 1) + MSE(D(x_hat), 0)].

    Parameters
    ----------
    d_real_logits, d_fake_logits : Tensor or sequence of Tensor
        Discriminator outputs on real and on (detached) reconstructed images; a list is averaged over its heads.

    Returns
    -------
    Tensor
        Scalar.
    """
    return 0.5 * (_least_squares(d_real_logits, 1.0) + _least_squares(d_fake_logits, 0.0))


def generator_adversarial_loss(d_fake_logits: Logits) -> Tensor:
    """LSGAN generator loss MSE(D(x_hat), 1) (list input: averaged over heads); scalar, differentiable in x_hat."""
    return _least_squares(d_fake_logits, 1.0)


def build_discriminator_optimizer(
    discriminator: nn.Module, lr: float = 1e-4, weight_decay: float = 1e-4
) -> torch.optim.AdamW:
    """AdamW over the discriminator's trainable parameters (the heads; the frozen ViT is left out)."""
    params = [p for p in discriminator.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(discriminator).__name__} has no trainable parameters")
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def discriminator_step(
    discriminator: nn.Module,
    optimizer: torch.optim.Optimizer,
    real: Tensor,
    fake: Tensor,
    grad_clip: float | None = 1.0,
) -> float:
    """One discriminator update on L_D; returns the loss value before the update.

    Gradients left on the heads by the generator's backward pass (L_adv runs through them) are discarded first.
    Under an initialised ``torch.distributed`` process group the gradients are averaged across ranks before
    clipping, since DDP wraps only the generator.

    Parameters
    ----------
    discriminator : nn.Module
        Maps (B, 1, H, W) images to logits (a tensor or list of tensors), e.g. :class:`ProjectedDiscriminator`.
    optimizer : torch.optim.Optimizer
        Over the discriminator's trainable parameters (:func:`build_discriminator_optimizer`).
    real, fake : Tensor
        Target and reconstructed magnitude images (B, 1, H, W); ``fake`` is detached here.
    grad_clip : float or None
        Maximum global gradient norm (the paper: 1.0); ``None`` disables clipping.

    Returns
    -------
    float
        L_D on this batch.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad(set_to_none=True)
    loss = discriminator_loss(discriminator(real.detach()), discriminator(fake.detach()))
    loss.backward()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world_size = dist.get_world_size()
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(world_size)
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.item()

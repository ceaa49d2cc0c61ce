"""VQ-VAE encoder and decoder shaped like VAR's, with FiLM-conditioned encoder blocks and VAR weight loading.

Submodule names follow VAR's ``models/basic_vae.py`` (``down.{i}.block.{j}``, ``mid.block_1``, ``up.{i}.upsample``,
...) so that :func:`load_var_vqvae_weights` maps a pretrained ``vae_ch160v4096z32.pth`` by prefix. VAR's
``quant_conv`` / ``post_quant_conv`` live here as the encoder's last and the decoder's first layer.
"""

import logging
import math
from collections.abc import Mapping, Sequence
from os import PathLike

import torch
import torch.nn.functional as F
from torch import nn

from direct_nextaccel.modules.quantizer import SharedCodebookQuantizer

logger = logging.getLogger(__name__)


def _group_norm(channels: int) -> nn.GroupNorm:
    # VAR uses 32 groups; the gcd keeps tiny test widths (8, 16, 24 channels) valid and equals 32 at paper widths.
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class FiLM(nn.Module):
    """Per-channel scale and shift looked up from integer labels (one embedding per label field), identity at init.

    Parameters
    ----------
    channels : int
        Channels C of the modulated feature map.
    num_labels_per_field : tuple[int, ...]
        Number of values of each label field, e.g. ``(6, 4)`` for acceleration level and mask family.
    """

    def __init__(self, channels: int, num_labels_per_field: tuple[int, ...]) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, 2 * channels) for n in num_labels_per_field)
        for embedding in self.embeddings:
            nn.init.zeros_(embedding.weight)  # scale 1 + 0, shift 0: a pretrained backbone is unchanged at init

    def forward(self, h: torch.Tensor, labels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Modulate ``h`` (B, C, H, W) with labels, one long tensor (B,) per field."""
        modulation = sum(embedding(label) for embedding, label in zip(self.embeddings, labels, strict=True))  # B, 2C
        scale, shift = modulation[:, :, None, None].chunk(2, dim=1)
        return h * (1 + scale) + shift


class ResBlock(nn.Module):
    """VAR's ResNet block: GroupNorm, SiLU, 3x3 conv, twice, with a 1x1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C_in, H, W) to (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class FiLMResBlock(ResBlock):
    """:class:`ResBlock` whose second normalisation is followed by label-conditioned FiLM (AQ-VAE encoder).

    Parameters
    ----------
    in_channels, out_channels : int
        Widths.
    num_labels_per_field : tuple[int, ...]
        Label fields, e.g. ``(6, 4)`` for acceleration level and mask family.
    """

    def __init__(self, in_channels: int, out_channels: int, num_labels_per_field: tuple[int, ...]) -> None:
        super().__init__(in_channels, out_channels)
        self.film = FiLM(out_channels, num_labels_per_field)

    def forward(self, x: torch.Tensor, labels: Sequence[torch.Tensor]) -> torch.Tensor:
        """Map (B, C_in, H, W) to (B, C_out, H, W) under labels, one long tensor (B,) per field."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.film(self.norm2(h), labels)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual connection, as in VAR's VQ-VAE."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, H, W) to (B, C, H, W)."""
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, 3, c, h * w).transpose(2, 3).unbind(1)  # B, HW, C each
        out = F.scaled_dot_product_attention(q, k, v)  # B, HW, C
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after zero-padding right and bottom by one pixel (VAR's ``Downsample2x``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, H, W) to (B, C, H/2, W/2)."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour 2x enlargement followed by a 3x3 convolution (VAR's ``Upsample2x``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, C, H, W) to (B, C, 2H, 2W)."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _check_architecture(base_channels: int, channel_multipliers: Sequence[int], num_res_blocks: int) -> None:
    if base_channels < 1:
        raise ValueError(f"base_channels {base_channels} must be positive")
    if len(channel_multipliers) == 0 or min(channel_multipliers) < 1:
        raise ValueError(f"channel_multipliers {tuple(channel_multipliers)} must be a non-empty list of positive ints")
    if num_res_blocks < 1:
        raise ValueError(f"num_res_blocks {num_res_blocks} must be at least 1")


class Encoder(nn.Module):
    """VAR's VQ-VAE encoder with FiLM-conditioned ResNet blocks, returning optional intermediate features.

    Stage ``i`` works at stride ``2**i``; stages are separated by :class:`Downsample`, the last stage and the middle
    block carry self-attention. The output passes through ``quant_conv`` (VAR's pre-quantization conv).

    Parameters
    ----------
    in_channels : int
        Image channels (2: real, imaginary).
    base_channels : int
        Width of the first stage (paper: 160).
    channel_multipliers : Sequence[int]
        Width of stage ``i`` is ``base_channels * channel_multipliers[i]`` (paper: (1, 1, 2, 2, 4)).
    num_res_blocks : int
        ResNet blocks per stage (paper: 2).
    latent_dim : int
        Latent channels (paper: 32).
    num_labels : tuple[int, ...]
        FiLM label fields, e.g. ``(6, 4)`` for acceleration level and mask family.
    feature_strides : Sequence[int]
        Strides whose feature maps ``forward(..., return_features=True)`` returns: for a stride below the total
        stride the output of that stage (before downsampling), for the total stride the middle block's output.
    """

    def __init__(
        self,
        in_channels: int = 2,
        base_channels: int = 160,
        channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        latent_dim: int = 32,
        num_labels: tuple[int, ...] = (6, 4),
        feature_strides: Sequence[int] = (4, 8, 16),
    ) -> None:
        super().__init__()
        _check_architecture(base_channels, channel_multipliers, num_res_blocks)
        num_stages = len(channel_multipliers)
        self.total_stride = 2 ** (num_stages - 1)
        valid_strides = [2**i for i in range(num_stages)]
        for stride in feature_strides:
            if stride not in valid_strides:
                raise ValueError(f"feature stride {stride} is not one of the encoder's strides {valid_strides}")
        self.in_channels = in_channels
        self.latent_dim = latent_dim
        self.num_labels = tuple(num_labels)
        self.feature_strides = tuple(feature_strides)

        self.conv_in = nn.Conv2d(in_channels, base_channels, kernel_size=3, padding=1)
        self.down = nn.ModuleList()
        width = base_channels
        stage_widths = []
        for i, multiplier in enumerate(channel_multipliers):
            out_width = base_channels * multiplier
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(FiLMResBlock(width, out_width, self.num_labels))
                width = out_width
                if i == num_stages - 1:
                    attns.append(AttnBlock(width))
            stage = nn.ModuleDict({"block": blocks, "attn": attns})
            if i != num_stages - 1:
                stage["downsample"] = Downsample(width)
            self.down.append(stage)
            stage_widths.append(width)
        self.mid = nn.ModuleDict(
            {
                "block_1": FiLMResBlock(width, width, self.num_labels),
                "attn_1": AttnBlock(width),
                "block_2": FiLMResBlock(width, width, self.num_labels),
            }
        )
        self.norm_out = _group_norm(width)
        self.conv_out = nn.Conv2d(width, latent_dim, kernel_size=3, padding=1)
        self.quant_conv = nn.Conv2d(latent_dim, latent_dim, kernel_size=3, padding=1)
        #: channels of the feature map returned for each stride
        self.feature_channels = {stride: stage_widths[int(math.log2(stride))] for stride in self.feature_strides}

    def _check_labels(self, labels: Sequence[torch.Tensor], batch: int, check_values: bool) -> None:
        if len(labels) != len(self.num_labels):
            raise ValueError(f"expected {len(self.num_labels)} label tensors, got {len(labels)}")
        for field, label in enumerate(labels):
            if label.dtype not in (torch.int64, torch.int32):
                raise TypeError(f"label field {field} must be an integer tensor, got {label.dtype}")
            if tuple(label.shape) != (batch,):
                raise ValueError(f"label field {field} must have shape ({batch},), got {tuple(label.shape)}")
        if not check_values:
            return
        # One read of the device for every field; the offending field is searched for only after a failure.
        outside = [(label < 0) | (label >= count) for label, count in zip(labels, self.num_labels, strict=True)]
        if outside and bool(torch.stack([flags.any() for flags in outside]).any()):
            for field, (label, flags) in enumerate(zip(labels, outside, strict=True)):
                if flags.any():
                    raise ValueError(
                        f"label {label[flags][0].item()} of field {field} is outside [0, {self.num_labels[field]})"
                    )

    def forward(
        self,
        x: torch.Tensor,
        labels: Sequence[torch.Tensor],
        return_features: bool = False,
        *,
        check_values: bool = True,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Encode images under their labels.

        Parameters
        ----------
        x : torch.Tensor
            Images (B, in_channels, H, W) with H and W divisible by the total stride.
        labels : Sequence[torch.Tensor]
            One long tensor (B,) per label field.
        return_features : bool
            Also return the intermediate feature maps.
        check_values : bool
            Refuse a label outside its field's range (one read of the device). The models that build the labels from
            inputs they have already checked pass False, so their forward does not wait for the device here.

        Returns
        -------
        torch.Tensor or tuple[torch.Tensor, dict[int, torch.Tensor]]
            Latent (B, latent_dim, H/stride, W/stride) and, if asked, ``{H // s: (B, C_s, H/s, W/s)}`` for each
            feature stride ``s`` (the paper's 64, 32, 16 at 256x256).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % self.total_stride or width % self.total_stride:
            raise ValueError(f"image size {height}x{width} is not divisible by the encoder stride {self.total_stride}")
        self._check_labels(labels, x.shape[0], check_values)

        features = {}
        h = self.conv_in(x)
        for i, stage in enumerate(self.down):
            for j, block in enumerate(stage["block"]):
                h = block(h, labels)
                if len(stage["attn"]) > 0:
                    h = stage["attn"][j](h)
            if 2**i in self.feature_strides and 2**i != self.total_stride:
                features[height // 2**i] = h
            if "downsample" in stage:
                h = stage["downsample"](h)
        h = self.mid["block_1"](h, labels)
        h = self.mid["block_2"](self.mid["attn_1"](h), labels)
        if self.total_stride in self.feature_strides:
            features[height // self.total_stride] = h
        z = self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))
        return (z, features) if return_features else z


class Decoder(nn.Module):
    """VAR's VQ-VAE decoder (``post_quant_conv`` first), unconditioned.

    Parameters
    ----------
    out_channels : int
        Image channels (2: real, imaginary).
    base_channels, channel_multipliers, num_res_blocks, latent_dim
        As for :class:`Encoder`; each stage has ``num_res_blocks + 1`` blocks.
    """

    def __init__(
        self,
        out_channels: int = 2,
        base_channels: int = 160,
        channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        latent_dim: int = 32,
    ) -> None:
        super().__init__()
        _check_architecture(base_channels, channel_multipliers, num_res_blocks)
        num_stages = len(channel_multipliers)
        self.total_stride = 2 ** (num_stages - 1)
        self.latent_dim = latent_dim
        self.out_channels = out_channels

        width = base_channels * channel_multipliers[-1]
        self.post_quant_conv = nn.Conv2d(latent_dim, latent_dim, kernel_size=3, padding=1)
        self.conv_in = nn.Conv2d(latent_dim, width, kernel_size=3, padding=1)
        self.mid = nn.ModuleDict(
            {"block_1": ResBlock(width, width), "attn_1": AttnBlock(width), "block_2": ResBlock(width, width)}
        )
        stages = []
        for i in reversed(range(num_stages)):
            out_width = base_channels * channel_multipliers[i]
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResBlock(width, out_width))
                width = out_width
                if i == num_stages - 1:
                    attns.append(AttnBlock(width))
            stage = nn.ModuleDict({"block": blocks, "attn": attns})
            if i != 0:
                stage["upsample"] = Upsample(width)
            stages.append(stage)
        # Indexed by stage like VAR's ``up`` (``up.0`` is the finest), though run from the coarsest.
        self.up = nn.ModuleList(reversed(stages))
        self.norm_out = _group_norm(width)
        self.conv_out = nn.Conv2d(width, out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode a latent (B, latent_dim, h, w) into images (B, out_channels, h*stride, w*stride)."""
        if z.ndim != 4 or z.shape[1] != self.latent_dim:
            raise ValueError(f"expected latents of shape (B, {self.latent_dim}, h, w), got {tuple(z.shape)}")
        h = self.conv_in(self.post_quant_conv(z))
        h = self.mid["block_2"](self.mid["attn_1"](self.mid["block_1"](h)))
        for stage in reversed(self.up):
            for j, block in enumerate(stage["block"]):
                h = block(h)
                if len(stage["attn"]) > 0:
                    h = stage["attn"][j](h)
            if "upsample" in stage:
                h = stage["upsample"](h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _var_key(module: str, name: str) -> str:
    # VAR keeps quant_conv / post_quant_conv at the top level of its VQVAE, next to encoder. and decoder.
    if name.startswith(("quant_conv.", "post_quant_conv.")):
        return name
    return f"{module}.{name}"


def load_var_vqvae_weights(
    encoder: Encoder,
    decoder: Decoder,
    state_dict_or_path: Mapping[str, torch.Tensor] | str | PathLike,
    quantizer: SharedCodebookQuantizer | None = None,
) -> None:
    """Initialise an encoder/decoder pair (and optionally the codebook) from VAR's pretrained VQ-VAE.

    Every parameter except the FiLM embeddings (left at identity) is copied from the matching VAR key. VAR works on
    3-channel RGB; for 2-channel (real, imaginary) MRI the encoder's ``conv_in`` takes the first two input-channel
    slices and the decoder's ``conv_out`` the first two output filters. That is exactly the paper's choice of
    appending a dummy third channel: a zero third input contributes nothing, and the third output is discarded.

    Parameters
    ----------
    encoder : Encoder
        Receives ``encoder.*`` and ``quant_conv.*``.
    decoder : Decoder
        Receives ``decoder.*`` and ``post_quant_conv.*``.
    state_dict_or_path : Mapping[str, torch.Tensor] | str | PathLike
        VAR's ``VQVAE`` state dict (e.g. ``vae_ch160v4096z32.pth``) or a path to it.
    quantizer : SharedCodebookQuantizer | None
        If given, ``quantize.embedding.weight`` becomes its codebook (the paper re-initialises it instead).

    Raises
    ------
    ValueError
        If a key is missing or a shape does not fit (latent dim, codebook size, widths), naming the key.
    """
    if isinstance(state_dict_or_path, Mapping):
        state = state_dict_or_path
    else:
        state = torch.load(state_dict_or_path, map_location="cpu", weights_only=True)
    z_key = "encoder.conv_out.weight"
    if z_key in state and state[z_key].shape[0] != encoder.latent_dim:
        raise ValueError(
            f"VAR key '{z_key}' has z_channels={state[z_key].shape[0]}, the encoder has latent_dim={encoder.latent_dim}"
        )

    updates: list[tuple[torch.Tensor, torch.Tensor]] = []
    for prefix, module in (("encoder", encoder), ("decoder", decoder)):
        for name, target in module.state_dict().items():
            if ".film." in name:
                continue
            key = _var_key(prefix, name)
            if key not in state:
                raise ValueError(f"VAR state dict has no key '{key}' for {prefix}.{name}")
            source = state[key]
            if key == "encoder.conv_in.weight" and source.shape[1] >= target.shape[1]:
                source = source[:, : target.shape[1]]
            elif key in ("decoder.conv_out.weight", "decoder.conv_out.bias") and source.shape[0] >= target.shape[0]:
                source = source[: target.shape[0]]
            if source.shape != target.shape:
                raise ValueError(
                    f"VAR key '{key}' has shape {tuple(state[key].shape)}, {prefix}.{name} needs {tuple(target.shape)}"
                )
            updates.append((target, source))
    if quantizer is not None:
        key = "quantize.embedding.weight"
        if key not in state:
            raise ValueError(f"VAR state dict has no key '{key}' for the codebook")
        if tuple(state[key].shape) != tuple(quantizer.codebook.shape):
            raise ValueError(
                f"VAR key '{key}' has shape {tuple(state[key].shape)} (codebook size, z_channels), "
                f"the quantizer has {tuple(quantizer.codebook.shape)}"
            )
    # Copy only after every key has been checked, so a failing load leaves the modules untouched.
    with torch.no_grad():
        for target, source in updates:
            target.copy_(source)
    if quantizer is not None:
        quantizer.set_codebook(state["quantize.embedding.weight"].to(quantizer.codebook))
    logger.info("loaded %d VAR VQ-VAE tensors (FiLM embeddings left at identity)", len(updates))

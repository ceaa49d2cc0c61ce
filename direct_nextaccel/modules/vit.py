"""A plain ViT image encoder, the frozen feature extractor under the AQ-VAE's projected discriminator.

Submodules carry timm's ``VisionTransformer`` names (``patch_embed.proj``, ``cls_token``, ``pos_embed``,
``blocks.{i}.norm1/attn.qkv/attn.proj/norm2/mlp.fc1/mlp.fc2``, ``norm``), so BiomedCLIP's visual tower, a timm
``vit_base_patch16_224`` wrapped by open_clip's ``TimmModel`` under ``visual.trunk.``, loads by stripping that prefix.
Block indices are 0-based, as timm's ``blocks.{i}`` and StyleGAN-T's discriminator hooks ``[2, 5, 8, 11]`` count them:
the paper's "blocks 2, 5, 8 and 11" of a 12-block ViT-B are therefore the third, sixth, ninth and last block.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from direct_nextaccel.modules.attention import SelfAttention

TRUNK_PREFIX = "visual.trunk."
"""Prefix of the image tower's ViT entries in an open_clip checkpoint whose vision tower comes from timm."""

_LAYER_NORM_EPS = 1e-6  # timm's ViT LayerNorm epsilon; torch's default 1e-5 would shift pretrained features


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` x ``patch_size`` patches projected to ``dim`` channels by one strided conv."""

    def __init__(self, patch_size: int, dim: int, in_channels: int = 3) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, dim, H / patch_size, W / patch_size)."""
        return self.proj(x)


class Mlp(nn.Module):
    """Linear -> exact GELU -> Linear: timm's ViT MLP (the shared ``GeluMLP`` uses VAR's tanh approximation)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """(B, N, dim) -> (B, N, dim)."""
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT image encoder (class token, learned absolute positions, pre-norm blocks, final LayerNorm).

    Parameters
    ----------
    image_size : int
        Side of the square image the positional embedding is learned for; other sizes (multiples of ``patch_size``)
        are accepted, with the patch positions resampled bicubically.
    patch_size : int
        Side of a square patch.
    dim : int
        Token dimension.
    depth : int
        Number of transformer blocks.
    num_heads : int
        Attention heads; must divide ``dim``.
    mlp_ratio : float
        MLP hidden width relative to ``dim``.

    Notes
    -----
    The defaults are ViT-B/16 at 224 x 224 (85.8 M parameters), BiomedCLIP's image tower.
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 16,
        dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if patch_size < 1 or image_size % patch_size != 0:
            raise ValueError(f"image_size {image_size} is not a positive multiple of patch_size {patch_size}")
        if depth < 1:
            raise ValueError(f"depth {depth} must be at least 1")
        self.patch_size = patch_size
        self.grid_size = image_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size**2, dim))  # class position first, as timm
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=_LAYER_NORM_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    @property
    def depth(self) -> int:
        """Number of transformer blocks."""
        return len(self.blocks)

    def check_block_indices(self, block_indices: Sequence[int]) -> list[int]:
        """The 0-based block indices as a list, or ``ValueError`` naming the first one outside ``[0, depth)``."""
        indices = list(block_indices)
        if not indices:
            raise ValueError("block_indices is empty: name at least one 0-based block")
        for index in indices:
            if not 0 <= index < self.depth:
                raise ValueError(f"block index {index} is outside 0..{self.depth - 1} of this depth-{self.depth} ViT")
        return indices

    def positional_embedding(self, grid: tuple[int, int]) -> Tensor:
        """Positional embedding (1, 1 + gh * gw, dim) for a ``grid = (gh, gw)`` of patches.

        The learned patch positions are resampled bicubically when ``grid`` differs from the training grid; the class
        token's position is kept as is.
        """
        if grid == (self.grid_size, self.grid_size):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = patch_pos.shape[-1]
        patch_pos = patch_pos.reshape(1, self.grid_size, self.grid_size, dim).permute(0, 3, 1, 2)  # 1, C, g, g
        patch_pos = F.interpolate(patch_pos, size=grid, mode="bicubic", align_corners=False, antialias=True)
        return torch.cat((cls_pos, patch_pos.flatten(2).transpose(1, 2)), dim=1)

    def embed(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W), H and W multiples of ``patch_size`` -> tokens (B, 1 + N, dim), class token first."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"ViT input must be (B, 3, H, W), got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"ViT input size {height}x{width} is not a multiple of patch_size {self.patch_size}")
        patches = self.patch_embed(x)  # B, C, gh, gw
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = patches.flatten(2).transpose(1, 2)  # B, N, C
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat((cls, tokens), dim=1) + self.positional_embedding(grid)

    def forward_features(self, x: Tensor, block_indices: Sequence[int]) -> list[Tensor]:
        """Outputs of the requested blocks (the residual stream, before the final norm).

        Parameters
        ----------
        x : Tensor
            Images (B, 3, H, W), already normalised; H and W multiples of ``patch_size``.
        block_indices : sequence of int
            0-based block indices, each in ``[0, depth)``; blocks after the largest are not run.

        Returns
        -------
        list of Tensor
            One (B, 1 + N, dim) tensor per requested index, in the requested order; token 0 is the class token,
            the N = (H / patch_size) * (W / patch_size) patch tokens follow in row-major order.
        """
        indices = self.check_block_indices(block_indices)
        tokens = self.embed(x)
        outputs = {}
        for index, block in enumerate(self.blocks[: max(indices) + 1]):
            tokens = block(tokens)
            outputs[index] = tokens
        return [outputs[index] for index in indices]

    def forward(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) -> final normalised tokens (B, 1 + N, dim)."""
        tokens = self.embed(x)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


def load_biomedclip_visual(vit: VisionTransformer, path: str | Path) -> VisionTransformer:
    """Load BiomedCLIP's image tower into ``vit`` from open_clip's ``open_clip_pytorch_model.bin``.

    Only the ``visual.trunk.*`` entries are read (the text tower, the image projection ``visual.head.*`` and
    ``logit_scale`` are ignored); they must match ``vit``'s parameters one to one, name and shape.

    Parameters
    ----------
    vit : VisionTransformer
        Target, built with BiomedCLIP's architecture (the defaults: ViT-B/16 at 224).
    path : str or Path
        The checkpoint file.

    Returns
    -------
    VisionTransformer
        ``vit`` itself, with the weights loaded in place.

    Raises
    ------
    ValueError
        The file has no ``visual.trunk.*`` entry, lacks one of ``vit``'s parameters, has an extra trunk entry, or an
        entry's shape differs; the message names the key.
    """
    state = torch.load(Path(path).expanduser(), map_location="cpu", weights_only=True)
    trunk = {key.removeprefix(TRUNK_PREFIX): value for key, value in state.items() if key.startswith(TRUNK_PREFIX)}
    if not trunk:
        raise ValueError(f"{path} has no '{TRUNK_PREFIX}*' entries: it is not an open_clip checkpoint with a timm ViT")
    expected = vit.state_dict()
    for key, value in expected.items():
        if key not in trunk:
            raise ValueError(f"{path} lacks '{TRUNK_PREFIX}{key}'")
        if trunk[key].shape != value.shape:
            raise ValueError(
                f"'{TRUNK_PREFIX}{key}' has shape {tuple(trunk[key].shape)} in {path} but this ViT expects "
                f"{tuple(value.shape)}"
            )
    for key in trunk:
        if key not in expected:
            raise ValueError(f"{path} has '{TRUNK_PREFIX}{key}', which this plain ViT does not have")
    vit.load_state_dict(trunk)
    return vit

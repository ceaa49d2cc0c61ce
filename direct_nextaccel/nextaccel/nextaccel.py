"""NextAccel's cross-attentive transformer: predicts each acceleration level's tokens from the coarser levels' tokens.

Levels 0 (R32) ... 5 (fully sampled) are the AQ-VAE token grids (11x11 ... 16x16 in the paper). Q32 comes from the
tokenizer; the transformer predicts levels 1..5, every token of a level in parallel from all coarser levels (VAR's
next-scale prediction, paper eq. 2). Anatomical guidance comes from cross-attention to multi-resolution features of
the R32 image, computed by a trainable copy of the AQ-VAE encoder: early blocks see the coarsest features, deeper
blocks finer ones (paper section 4.2). With ``privileged_context`` the same class is the distillation teacher, whose
context also holds the fully sampled image's features (section 4.3).

Inputs and positions
    The input predicting level l is the codebook vectors of level l-1's tokens enlarged (bicubic, like the
    tokenizer's :func:`resize_latent`) to level l's grid and projected to the embedding width. Each AQ-VAE level is a
    full encoding of its own acquisition, not a residual, so the latest level is the best per-position prior and
    older levels stay reachable through attention. Positions are a learned table per level grid, initialised with a
    2D sine-cosine code of each token's image region; the context tokens carry the same fixed code, so at
    initialisation a query and the features of its region already share a position code.

Conditioning
    AdaLN is conditioned per token on ``family embedding + level embedding`` of the level being predicted: these are
    the labels the tokenizer's FiLM encoder used to produce that level's tokens, so every block can rescale its
    features per mask family and acceleration (costs one (L, C) x (C, 6C) matmul per block over VAR's per-sample
    condition).
"""

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from direct_nextaccel.core.checkpoints import load_exactly
from direct_nextaccel.masks.nested import FAMILIES
from direct_nextaccel.modules.attention import ContextKV, KVCache
from direct_nextaccel.modules.decoding import (
    BEAM_TOKEN_COUNTS,
    SAMPLING_MODES,
    StepFn,
    beam_search,
    decode,
    filter_logits,
    step_from_history,
)
from direct_nextaccel.modules.quantizer import resize_latent
from direct_nextaccel.modules.transformer import AdaLNBlock, block_causal_mask, init_transformer_weights, sincos_2d
from direct_nextaccel.modules.vqvae import Encoder

logger = logging.getLogger(__name__)

GENERATION_MODES = (*SAMPLING_MODES, "beam")


def token_entropy(probs: Sequence[Tensor]) -> list[Tensor]:
    """Entropy in nats of every token's predictive distribution: (B, g, g, V) per level -> (B, g, g)."""
    return [torch.special.entr(p.float()).sum(dim=-1) for p in probs]


def uncertainty_map(probs: Sequence[Tensor], image_size: Sequence[int], num_levels: int | None = None) -> Tensor:
    """Per-pixel uncertainty (B, H, W) in [0, 1] from the predicted levels' token distributions.

    Each level's token entropy, divided by log V (1 = uniform over the codebook), is enlarged bilinearly to the
    image and weighted by the level's share in the AQ-VAE's fused latent, which averages all levels equally. The
    given levels (R32, and the finer ones an acquisition below R = 32 contains) count as levels with zero entropy,
    so from an R = 32 input the five predicted levels each weigh 1/6: a pixel reads 1 only if every level is uniform
    there, 0 if every predicted level is certain.

    Parameters
    ----------
    probs : Sequence[Tensor]
        Probabilities (B, g, g, V) of the predicted levels, as returned by :meth:`NextAccel.generate`.
    image_size : Sequence[int]
        Output (H, W).
    num_levels : int, optional
        Levels of the fused latent, given and predicted; default ``len(probs) + 1`` (only R32 given).
    """
    if len(probs) == 0:
        raise ValueError("probs is empty: pass the probabilities of the predicted levels")
    num_levels = len(probs) + 1 if num_levels is None else num_levels
    if num_levels <= len(probs):
        raise ValueError(f"num_levels {num_levels} must exceed the {len(probs)} predicted levels (R32 is given)")
    weight = 1.0 / num_levels
    total = None
    for entropy, p in zip(token_entropy(probs), probs, strict=True):
        normalised = entropy / math.log(p.shape[-1])
        enlarged = F.interpolate(normalised[:, None], size=tuple(image_size), mode="bilinear", align_corners=False)
        total = weight * enlarged if total is None else total + weight * enlarged
    return total[:, 0].clamp(0.0, 1.0)


class NextAccel(nn.Module):
    """Cross-attentive next-acceleration-scale transformer (paper section 4.2).

    Parameters
    ----------
    depth, embed_dim, num_heads, mlp_ratio
        Transformer shape (paper: 16, 1024, 16, 4.0).
    drop_path_rate : float
        Stochastic depth of the last block, increasing linearly from 0 at the first (paper: 0.025).
    codebook_size, latent_dim
        Shared AQ-VAE codebook (paper: 4096 x 32); set its vectors with :meth:`set_codebook`.
    token_grids : Sequence[int]
        Token-grid side per level, coarse to fine, non-decreasing (paper: 11 ... 16). The first is given.
    num_families : int
        Mask families, the FiLM and AdaLN label (4, ordered as ``masks.nested.FAMILIES``).
    in_channels, base_channels, channel_multipliers, num_res_blocks
        Context encoder, identical to the AQ-VAE encoder so :meth:`init_context_encoder_from` can copy it (paper:
        2, 160, (1, 1, 2, 2, 4), 2).
    image_size : Sequence[int]
        Input (H, W) of the images the context is computed from.
    context_strides : Sequence[int]
        Encoder strides feeding cross-attention, coarse to fine (paper: (16, 8, 4): 16x16, 32x32, 64x64 at 256).
        The blocks are split into ``len(context_strides)`` contiguous groups of near-equal size, the first groups
        one block larger when depth does not divide (block i attends to stride ``context_strides[i * n // depth]``:
        at depth 16 blocks 0-5 see 16x16, 6-10 32x32 and 11-15 64x64).
    privileged_context : bool
        Teacher mode: the context also holds the fully sampled image's features (tokens of both images concatenated,
        each with a learned source embedding), and ``fs_image`` becomes a required input.
    qk_norm : bool
        Cosine self-attention as in VAR.
    forward_operator, backward_operator
        Passed by DIRECT to every model; the transformer works on tokens and images and ignores them.

    Attributes
    ----------
    trained_families : Tensor
        Bool (num_families,) buffer: the mask families (FiLM labels, :data:`~direct_nextaccel.masks.nested.FAMILIES`
        order) the model was trained on, set by the engine from the training configuration and saved in every
        checkpoint, so that prediction refuses a family the checkpoint never saw whatever its own configuration says.
        A checkpoint written before it existed keeps the value set before loading (the configured families), with a
        logged warning.
    """

    #: state-dict entries an older checkpoint may lack: the load fills them in (see ``trained_families``)
    FILLED_WHEN_MISSING: ClassVar[tuple[str, ...]] = ("trained_families",)

    def __init__(
        self,
        depth: int = 16,
        embed_dim: int = 1024,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.025,
        codebook_size: int = 4096,
        latent_dim: int = 32,
        token_grids: Sequence[int] = (11, 12, 13, 14, 15, 16),
        num_families: int = 4,
        in_channels: int = 2,
        base_channels: int = 160,
        channel_multipliers: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        image_size: Sequence[int] = (256, 256),
        context_strides: Sequence[int] = (16, 8, 4),
        privileged_context: bool = False,
        qk_norm: bool = True,
        forward_operator: Any = None,
        backward_operator: Any = None,
    ) -> None:
        super().__init__()
        token_grids = tuple(int(g) for g in token_grids)
        if len(token_grids) < 2 or min(token_grids) < 1 or list(token_grids) != sorted(token_grids):
            raise ValueError(f"token_grids {token_grids} must be at least two positive, non-decreasing grid sides")
        context_strides = tuple(int(s) for s in context_strides)
        if not 1 <= len(context_strides) <= depth:
            raise ValueError(f"context_strides {context_strides} must name between 1 and depth={depth} strides")
        stride = 2 ** (len(channel_multipliers) - 1)
        if len(image_size) != 2 or image_size[0] % stride or image_size[1] % stride:
            raise ValueError(f"image_size {tuple(image_size)} is not (H, W) divisible by the encoder stride {stride}")
        if embed_dim % 4 != 0:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by 4, needed by the 2D position code")
        if codebook_size < 2:
            raise ValueError(f"codebook_size {codebook_size} must be at least 2")
        self.token_grids = token_grids
        self.num_levels = len(token_grids)
        self.num_families = num_families
        self.codebook_size = codebook_size
        self.latent_dim = latent_dim
        self.in_channels = in_channels
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.context_strides = context_strides
        self.privileged_context = privileged_context
        #: token count of each predicted level 1..num_levels-1, in sequence order
        self.lengths = [g * g for g in token_grids[1:]]
        self.offsets = [sum(self.lengths[:i]) for i in range(len(self.lengths))]
        #: index into ``context_strides`` of the features each block attends to
        self.block_groups = [i * len(context_strides) // depth for i in range(depth)]
        finest = min(context_strides)
        self._position_reference = (self.image_size[0] // finest, self.image_size[1] // finest)

        self.context_encoder = Encoder(
            in_channels=in_channels,
            base_channels=base_channels,
            channel_multipliers=channel_multipliers,
            num_res_blocks=num_res_blocks,
            latent_dim=latent_dim,
            num_labels=(self.num_levels, num_families),
            feature_strides=context_strides,
        )
        self._freeze_unused_encoder_parts()
        context_channels = [self.context_encoder.feature_channels[s] for s in context_strides]
        for s, channels in zip(context_strides, context_channels, strict=True):
            if channels % 4 != 0:
                raise ValueError(f"context features at stride {s} have {channels} channels, not divisible by 4")
        self.context_norms = nn.ModuleList(nn.LayerNorm(c, eps=1e-6) for c in context_channels)
        self.source_embed = (
            nn.ParameterList(nn.Parameter(torch.zeros(2, c)) for c in context_channels) if privileged_context else None
        )

        self.register_buffer("codebook", torch.randn(codebook_size, latent_dim))  # V, D; frozen copy of the AQ-VAE's
        self.register_buffer("trained_families", torch.zeros(num_families, dtype=torch.bool))
        self.register_load_state_dict_pre_hook(_fill_trained_families)
        self.word_embed = nn.Linear(latent_dim, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, sum(self.lengths), embed_dim))  # 1, L, C
        self.family_embed = nn.Embedding(num_families, embed_dim)
        self.level_embed = nn.Embedding(self.num_levels - 1, embed_dim)  # predicted levels 1.. -> rows 0..
        self.register_buffer(
            "level_of_token",
            torch.repeat_interleave(
                torch.arange(self.num_levels - 1), torch.tensor(self.lengths), output_size=sum(self.lengths)
            ),
            persistent=False,
        )
        drop_path = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            AdaLNBlock(
                embed_dim,
                num_heads,
                cond_dim=embed_dim,
                context_dim=context_channels[self.block_groups[i]],
                mlp_ratio=mlp_ratio,
                drop_path=drop_path[i],
                qk_norm=qk_norm,
            )
            for i in range(depth)
        )
        self.head_ada = nn.Sequential(nn.SiLU(), nn.Linear(embed_dim, 2 * embed_dim))
        self.head_norm = nn.LayerNorm(embed_dim, elementwise_affine=False, eps=1e-6)
        self.head = nn.Linear(embed_dim, codebook_size)
        self._init_weights()

    def _freeze_unused_encoder_parts(self) -> None:
        # Only the features feed cross-attention: the latent head (and, when the deepest context stride is below
        # the total stride, the stages past it) would never get a gradient, which DIRECT's DistributedDataParallel
        # (find_unused_parameters=False) rejects. They stay in the state dict so the AQ-VAE encoder loads 1:1.
        encoder = self.context_encoder
        unused: list[nn.Module] = [encoder.norm_out, encoder.conv_out, encoder.quant_conv]
        deepest = int(math.log2(max(self.context_strides)))
        if 2**deepest != encoder.total_stride:
            unused += [encoder.down[deepest]["downsample"], *encoder.down[deepest + 1 :], encoder.mid]
        for module in unused:
            module.requires_grad_(False)

    def _init_weights(self) -> None:
        for module in (self.word_embed, self.family_embed, self.level_embed, self.blocks, self.head_ada, self.head):
            module.apply(init_transformer_weights)
        with torch.no_grad():
            codes = [
                sincos_2d(g, g, self.pos_embed.shape[-1], self._position_reference, device=self.pos_embed.device)
                for g in self.token_grids[1:]
            ]
            self.pos_embed.copy_(0.02 * torch.cat(codes)[None])
            if self.source_embed is not None:
                for embedding in self.source_embed:
                    nn.init.trunc_normal_(embedding, std=0.02)

    # Loading from the tokenizer -------------------------------------------------------------------------------------

    def init_context_encoder_from(self, encoder_state_dict: Mapping[str, Tensor]) -> None:
        """Copy the AQ-VAE encoder's weights (``aqvae.encoder.state_dict()``) into the context encoder.

        Raises
        ------
        ValueError
            Naming the first key that is missing, unexpected or of a different shape; nothing is copied then.
        """
        load_exactly(
            self.context_encoder,
            encoder_state_dict,
            "the AQ-VAE encoder state dict (pass aqvae.encoder.state_dict())",
            "the context encoder",
        )

    def set_codebook(self, codebook: Tensor) -> None:
        """Copy the AQ-VAE's codebook (V, D) (``aqvae.quantizer.codebook``) into the frozen codebook buffer."""
        expected = (self.codebook_size, self.latent_dim)
        if codebook.ndim != 2 or tuple(codebook.shape) != expected:
            raise ValueError(
                f"codebook of shape {tuple(codebook.shape)} does not fit the model's "
                f"codebook_size x latent_dim = {expected[0]} x {expected[1]}"
            )
        if not codebook.is_floating_point():
            raise TypeError(f"codebook must be a floating-point tensor, got {codebook.dtype}")
        with torch.no_grad():
            self.codebook.copy_(codebook.detach())

    # Trained families -----------------------------------------------------------------------------------------------

    def set_trained_families(self, families: Sequence[int]) -> None:
        """Record the family labels (indices into :data:`~direct_nextaccel.masks.nested.FAMILIES`) trained on."""
        labels = [int(family) for family in families]
        if not labels or any(not 0 <= label < self.num_families for label in labels):
            raise ValueError(
                f"trained families {labels} must be a non-empty list of labels in [0, {self.num_families})"
            )
        with torch.no_grad():
            self.trained_families.zero_()
            self.trained_families[labels] = True

    # Input checks ---------------------------------------------------------------------------------------------------

    def _check_image(self, name: str, image: Tensor, batch: int | None = None) -> int:
        expected = (self.in_channels, *self.image_size)
        if image.ndim != 4 or tuple(image.shape[1:]) != expected or (batch is not None and image.shape[0] != batch):
            size = "B" if batch is None else batch
            raise ValueError(
                f"{name} must have shape ({size}, {', '.join(map(str, expected))}), got {tuple(image.shape)}"
            )
        return image.shape[0]

    def _check_family(self, family: Tensor, batch: int) -> None:
        if family.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"family must be an integer tensor, got {family.dtype}")
        if tuple(family.shape) != (batch,):
            raise ValueError(f"family must have shape ({batch},), got {tuple(family.shape)}")

    def _check_tokens(self, name: str, tokens: Tensor, level: int, batch: int) -> None:
        grid = self.token_grids[level]
        if tokens.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be an integer tensor, got {tokens.dtype}")
        if tuple(tokens.shape) != (batch, grid, grid):
            raise ValueError(
                f"{name} (level {level}) must have shape ({batch}, {grid}, {grid}), got {tuple(tokens.shape)}"
            )

    def _check_values(self, family: Tensor, tokens: Sequence[tuple[str, Tensor]] = ()) -> None:
        """Refuse a family label or a token outside its range, with one read of the device for all of them (the
        offender is searched for only after a failure). Shapes and dtypes are checked without reading the device."""
        checks = [("mask family {}", family, self.num_families)]
        checks += [(f"token {{}} of {name}", values, self.codebook_size) for name, values in tokens]
        outside = [(values < 0) | (values >= limit) for _, values, limit in checks]
        if not bool(torch.stack([flags.any() for flags in outside]).any()):
            return
        for (what, values, limit), flags in zip(checks, outside, strict=True):
            if flags.any():
                raise ValueError(f"{what.format(values[flags][0].item())} is outside [0, {limit})")

    # Context --------------------------------------------------------------------------------------------------------

    def context(
        self, image32: Tensor, family: Tensor, fs_image: Tensor | None = None, *, check_values: bool = True
    ) -> list[ContextKV]:
        """Cross-attention keys/values of every block, computed once per slice and reused at every level.

        Parameters
        ----------
        image32 : Tensor
            R32 zero-filled image (B, in_channels, H, W), real and imaginary channels.
        family : Tensor
            Integer (B,) mask-family index.
        fs_image : Tensor, optional
            Fully sampled image (B, in_channels, H, W); required with ``privileged_context``, refused without.
        check_values : bool
            Refuse a family label outside ``[0, num_families)`` (one read of the device). The engines pass False:
            their labels come from validated family names (:func:`~.acquisition.family_labels`), so a training step
            does not wait for the device here.

        Returns
        -------
        list of ContextKV
            One per block, keys/values (B, heads, N, head_dim) with N the context tokens of the block's stride
            (twice as many in privileged mode).
        """
        batch = self._check_image("image32", image32)
        self._check_family(family, batch)
        if check_values:
            self._check_values(family)
        family = family.long()  # the encoder's labels
        images, levels, families = image32, torch.zeros_like(family), family
        if self.privileged_context:
            if fs_image is None:
                raise ValueError("privileged_context=True needs fs_image, the fully sampled image (B, C, H, W)")
            self._check_image("fs_image", fs_image, batch)
            images = torch.cat((image32, fs_image))  # 2B, C, H, W
            levels = torch.cat((levels, torch.full_like(family, self.num_levels - 1)))
            families = torch.cat((family, family))
        elif fs_image is not None:
            raise ValueError("fs_image was given but privileged_context=False: only the teacher sees the FS image")
        features = self.context_encoder(images, (levels, families), return_features=True, check_values=False)[1]
        groups = []
        for g, stride in enumerate(self.context_strides):
            feature = features[self.image_size[0] // stride]  # B', Cs, h, w
            rows, cols = feature.shape[-2:]
            tokens = self.context_norms[g](feature.flatten(2).transpose(1, 2))  # B', h*w, Cs
            tokens = tokens + sincos_2d(
                rows, cols, tokens.shape[-1], self._position_reference, device=tokens.device, dtype=tokens.dtype
            )
            if self.source_embed is not None:
                measured, fully_sampled = tokens.chunk(2)
                tokens = torch.cat((measured + self.source_embed[g][0], fully_sampled + self.source_embed[g][1]), dim=1)
            groups.append(tokens)
        return [
            block.precompute_context(groups[group]) for block, group in zip(self.blocks, self.block_groups, strict=True)
        ]

    # Transformer ----------------------------------------------------------------------------------------------------

    def _level_input(self, previous: Tensor, level: int) -> Tensor:
        """Input tokens (B, g_l^2, C) predicting ``level`` from level ``level - 1``'s tokens (B, g^2) or (B, g, g)."""
        side, grid = self.token_grids[level - 1], self.token_grids[level]
        codes = F.embedding(previous.reshape(-1, side, side), self.codebook).permute(0, 3, 1, 2)  # B, D, g', g'
        codes = resize_latent(codes, (grid, grid)).flatten(2).transpose(1, 2)  # B, g^2, D
        start = self.offsets[level - 1]
        return self.word_embed(codes) + self.pos_embed[:, start : start + grid * grid]

    def _head(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.head_ada(cond).chunk(2, dim=-1)
        if cond.ndim == 2:
            scale, shift = scale[:, None], shift[:, None]
        return self.head(self.head_norm(x) * (1 + scale) + shift)  # B, L, V

    def _teacher_forced_logits(
        self, known: Sequence[Tensor], family: Tensor, context_kv: list[ContextKV]
    ) -> list[Tensor]:
        """Logits (B, g_l^2, V) of levels 1..n from the tokens of levels 0..n-1 in one block-causal pass."""
        n = len(known)
        x = torch.cat([self._level_input(known[level - 1], level) for level in range(1, n + 1)], dim=1)  # B, L, C
        length = x.shape[1]
        cond = self.family_embed(family)[:, None] + self.level_embed(self.level_of_token[:length])  # B, L, C
        mask = block_causal_mask(self.lengths[:n], device=x.device)
        for block, kv in zip(self.blocks, context_kv, strict=True):
            x = block(x, cond, kv, attn_mask=mask)
        return list(self._head(x, cond).split(self.lengths[:n], dim=1))

    def forward(
        self,
        tokens: Sequence[Tensor],
        image32: Tensor,
        family: Tensor,
        fs_image: Tensor | None = None,
        *,
        check_values: bool = True,
    ) -> list[Tensor]:
        """Teacher-forced logits of every predicted level in one pass.

        Parameters
        ----------
        tokens : Sequence[Tensor]
            Token maps of all levels, long (B, g_l, g_l), coarse to fine (the AQ-VAE's ``encode(...).indices``, or a
            student rollout for distillation). The finest level is only a target and is not read.
        image32, family, fs_image
            As in :meth:`context`.
        check_values : bool
            Refuse tokens outside ``[0, codebook_size)`` and family labels outside ``[0, num_families)``, all with
            one read of the device. The engines pass False: their tokens come from the tokenizer (or the model's own
            rollout) and their labels from validated family names, so a training step does not wait for the device
            here.

        Returns
        -------
        list of Tensor
            Logits (B, g_l^2, V) for levels 1 .. num_levels-1; the targets are ``tokens[l].flatten(1)``.
        """
        if len(tokens) != self.num_levels:
            raise ValueError(f"expected token maps of {self.num_levels} levels, got {len(tokens)}")
        batch = tokens[0].shape[0]
        for level, level_tokens in enumerate(tokens[:-1]):
            self._check_tokens(f"tokens[{level}]", level_tokens, level, batch)
        if check_values:
            self._check_image("image32", image32)
            self._check_family(family, batch)
            self._check_values(family, [(f"tokens[{level}]", values) for level, values in enumerate(tokens[:-1])])
        context_kv = self.context(image32, family, fs_image, check_values=False)
        if image32.shape[0] != batch:
            raise ValueError(f"image32 has batch {image32.shape[0]}, the tokens have {batch}")
        return self._teacher_forced_logits(tokens[:-1], family, context_kv)

    # Inference ------------------------------------------------------------------------------------------------------

    def _cached_step(self, tokens: Tensor, state: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """Decoding step: embed the previous level's tokens (N, L') and predict the next level with the KV cache."""
        level = state["level"]
        x = self._level_input(tokens, level)  # N, g^2, C
        cond = self.family_embed(state["family"]) + self.level_embed.weight[level - 1]  # N, C
        for block, kv, cache in zip(self.blocks, state["context"], state["caches"], strict=True):
            x = block(x, cond, kv, cache=cache)
        return self._head(x, cond), {**state, "level": level + 1}

    def _prefill(self, known: Sequence[Tensor], family: Tensor, context_kv: list[ContextKV], caches: list[KVCache]):
        """Fill empty KV caches with the inputs of levels 1..n, made from the known tokens of levels 0..n-1, in one
        block-causal pass (the head is not needed: those levels are known)."""
        n = len(known)
        x = torch.cat([self._level_input(known[level - 1], level) for level in range(1, n + 1)], dim=1)  # B, L, C
        cond = self.family_embed(family)[:, None] + self.level_embed(self.level_of_token[: x.shape[1]])  # B, L, C
        mask = block_causal_mask(self.lengths[:n], device=x.device)
        for block, kv, cache in zip(self.blocks, context_kv, caches, strict=True):
            x = block(x, cond, kv, attn_mask=mask, cache=cache)

    def _next_level_logits(self, history: list[Tensor], condition: dict[str, Any]) -> Tensor:
        """Cache-free decoding: recompute every known level with the block-causal mask, keep the newest logits."""
        return self._teacher_forced_logits(history, condition["family"], condition["context"])[-1]

    @torch.no_grad()
    def generate(
        self,
        known: Tensor | Sequence[Tensor],
        image32: Tensor,
        family: Tensor,
        mode: str = "argmax",
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        beam_k: int = 1,
        beam_alpha: float = 1.0,
        generator: torch.Generator | None = None,
        return_probs: bool = False,
        use_cache: bool = True,
        fs_image: Tensor | None = None,
        check_values: bool = True,
    ) -> list[Tensor] | tuple[list[Tensor], list[Tensor]]:
        """Predict the levels after the known ones, one level per step, with cross-attention keys/values computed once.

        From an R = 32 acquisition only Q32 is known and levels 1.. are generated (the paper). An acquisition at a finer
        level k of the nested ladder (R = 16, 8, 4, 2) contains levels 0..k: their tokens (the tokenizer's encoding of
        each level's image) are given as a teacher-forced prefix, fed through the transformer once to fill its KV
        cache (or its history without a cache), and only levels k+1.. are generated, in every decoding mode.

        Runs in the module's current mode (call ``.eval()`` for deterministic rollouts, drop path is random in
        training mode) under ``torch.no_grad`` (not inference mode, so the tokens can feed a later
        teacher-forced pass with gradients, as on-policy distillation does).

        Parameters
        ----------
        known : Tensor or Sequence[Tensor]
            Long (B, g_0, g_0) tokens of the R32 image from the AQ-VAE (Q32), or the token maps (B, g_l, g_l) of
            levels 0..k, k < num_levels - 1.
        image32, family, fs_image
            As in :meth:`context`. The context stays the R32 image whatever the acquisition: the model was trained
            with it, and the finer levels' information enters through their tokens.
        mode : str
            ``"argmax"`` (paper default), ``"multinomial"``, ``"top_k_top_p"`` (see ``decoding.sample_tokens``) or
            ``"beam"`` (MIAR's beam search, ``decoding.beam_search``).
        temperature, top_k, top_p, generator
            Sampling settings of the sampling modes.
        beam_k, beam_alpha
            Positions branched on per level (1, 2 or 3) and margin weight of beam search.
        return_probs : bool
            Also return the model's predictive distribution softmax(logits) of every predicted level along the
            chosen path (temperature and filtering not applied), e.g. for :func:`uncertainty_map`.
        use_cache : bool
            Keep per-block KV caches (default); False recomputes all known levels with the mask at each step.
        check_values : bool
            As in :meth:`forward`, for the known tokens and the family labels.

        Returns
        -------
        tokens : list of Tensor
            Long (B, g_l, g_l) for every level, the known ones first.
        probs : list of Tensor
            Only with ``return_probs``: float32 (B, g_l, g_l, V) for the generated levels k+1 .. num_levels-1.
        """
        if mode not in GENERATION_MODES:
            raise ValueError(f"generation mode {mode!r} is not one of {GENERATION_MODES}")
        # decoding's own top-k/top-p checks, on a dummy distribution so that a bad value fails before any compute
        filter_logits(torch.zeros(1, 2), top_k=top_k, top_p=top_p)
        if mode == "beam" and (isinstance(beam_k, bool) or beam_k not in BEAM_TOKEN_COUNTS or beam_alpha < 0):
            raise ValueError(f"beam_k {beam_k} must be one of {BEAM_TOKEN_COUNTS} and beam_alpha {beam_alpha} >= 0")
        if mode in ("multinomial", "top_k_top_p") and temperature <= 0:
            raise ValueError(f"temperature {temperature} must be positive for sampling mode {mode!r}")
        batch = self._check_image("image32", image32)
        prefix = [known] if isinstance(known, Tensor) else list(known)
        if not 1 <= len(prefix) < self.num_levels:
            raise ValueError(
                f"known tokens of {len(prefix)} levels: give those of levels 0..k with k < {self.num_levels - 1}, "
                "at least Q32 and at least one level left to generate"
            )
        names = ["q32"] if isinstance(known, Tensor) else [f"known[{level}]" for level in range(len(prefix))]
        for level, (name, tokens) in enumerate(zip(names, prefix, strict=True)):
            self._check_tokens(name, tokens, level, batch)
        if check_values:
            self._check_family(family, batch)
            self._check_values(family, list(zip(names, prefix, strict=True)))
        first = len(prefix)  # the first generated level
        context_kv = self.context(image32, family, fs_image, check_values=False)

        step: StepFn
        state: Any
        if use_cache:
            caches = [KVCache() for _ in self.blocks]
            if first > 1:
                self._prefill(prefix[:-1], family, context_kv, caches)
            step, state = self._cached_step, {"family": family, "context": context_kv, "caches": caches, "level": first}
        else:
            history = [tokens.flatten(1) for tokens in prefix[:-1]]
            step, state = (
                step_from_history(self._next_level_logits),
                (history, {"family": family, "context": context_kv}),
            )
        recorded: list[Tensor] = []
        if return_probs and mode != "beam":
            step = _recording(step, recorded)
        num_scales = self.num_levels - first
        last = prefix[-1].flatten(1)
        if mode == "beam":
            generated, _ = beam_search(step, state, num_scales, last, k=beam_k, alpha=beam_alpha)
        else:
            generated = decode(step, state, num_scales, last, mode, temperature, top_k, top_p, generator)
        grids = self.token_grids[first:]
        tokens = [*(t.long() for t in prefix), *(t.view(batch, g, g) for t, g in zip(generated, grids, strict=True))]
        if not return_probs:
            return tokens
        if mode == "beam":
            # Beam search scores many candidates per level; the chosen path's logits are recomputed in one pass.
            recorded = self._teacher_forced_logits(tokens[:-1], family, context_kv)[first - 1 :]
        probs = [
            logits.float().softmax(dim=-1).view(batch, g, g, -1) for logits, g in zip(recorded, grids, strict=True)
        ]
        return tokens, probs


def _recording(step: StepFn, logits: list[Tensor]) -> StepFn:
    """Wrap a step function so that every call's logits are appended to ``logits``."""

    def recording_step(tokens: Tensor | None, state: Any) -> tuple[Tensor, Any]:
        out, state = step(tokens, state)
        logits.append(out)
        return out, state

    return recording_step


def _family_names(flags: Tensor) -> list[str]:
    return [FAMILIES[i] if i < len(FAMILIES) else str(i) for i in flags.nonzero().flatten().tolist()]


def _fill_trained_families(module: NextAccel, state_dict: dict[str, Tensor], prefix: str, *args: Any) -> None:
    """Load hook: a checkpoint written before ``trained_families`` existed keeps the value set before loading."""
    key = prefix + "trained_families"
    if key not in state_dict:
        state_dict[key] = module.trained_families.detach().clone()
        logger.warning(
            "The NextAccel checkpoint records no trained mask families (written before checkpoints recorded them): "
            "taking the configured ones, %s.",
            _family_names(module.trained_families) or "none",
        )

"""Vector quantization with one EMA-updated codebook shared by several token grids, trained with the rotation trick.

NextAccel quantizes six acceleration levels, each on its own token grid, with one codebook; MIAR quantizes one
latent residually over growing grids (VAR style). Both need the codebook statistics of every grid of a training step
mixed into a single EMA update, which is why the quantizer separates :meth:`SharedCodebookQuantizer.quantize`
(``accumulate=True`` collects statistics) from :meth:`SharedCodebookQuantizer.ema_update` (applies them once).
"""

import logging
import math
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rotation_trick(e: torch.Tensor, q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pass ``q`` forward and the gradient back to ``e`` through the rotation trick (Fifty et al., 2024).

    The forward value is ``q`` bit for bit. The backward pass treats ``q`` as ``s * R @ e`` with the rotation
    ``R = I - 2 r r^T + 2 q_hat e_hat^T`` (``r`` the unit bisector of ``e_hat`` and ``q_hat``), which maps
    ``e / |e|`` onto ``q / |q|``, and ``s = |q| / |e|``; ``R`` and ``s`` are constants, so ``dL/de = s R^T dL/dq``.

    Parameters
    ----------
    e : torch.Tensor
        Encoder vectors, shape (N, D), carrying the gradient.
    q : torch.Tensor
        Their codebook vectors, shape (N, D).
    eps : float
        Floor of the norms, so that zero vectors give a finite (identity-like) map.

    Returns
    -------
    torch.Tensor
        Shape (N, D), equal to ``q``.
    """
    with torch.no_grad():
        e_norm = e.norm(dim=-1, keepdim=True).clamp_min(eps)  # N, 1
        q_norm = q.norm(dim=-1, keepdim=True).clamp_min(eps)
        e_hat, q_hat = e / e_norm, q / q_norm
        r = F.normalize(e_hat + q_hat, dim=-1, eps=eps)
        scale = q_norm / e_norm
    rotated = e - 2 * (e * r).sum(-1, keepdim=True) * r + 2 * (e * e_hat).sum(-1, keepdim=True) * q_hat
    rotated = scale * rotated
    # q + (x - x) is exactly q while the gradient is that of x: decoding from indices then matches the forward pass.
    return q.detach() + (rotated - rotated.detach())


def resize_latent(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a latent map as VAR does: area averaging to shrink, bicubic to enlarge, identity at equal size.

    Parameters
    ----------
    x : torch.Tensor
        Shape (B, D, h, w).
    size : tuple[int, int]
        Target (h', w'); both sides must shrink or both must grow.

    Returns
    -------
    torch.Tensor
        Shape (B, D, h', w').
    """
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    if size[0] <= h and size[1] <= w:
        return F.interpolate(x, size=size, mode="area")
    if size[0] >= h and size[1] >= w:
        return F.interpolate(x, size=size, mode="bicubic", align_corners=False)
    raise ValueError(f"cannot resize a {h}x{w} latent to {size[0]}x{size[1]}: one side shrinks and the other grows")


class Phi(nn.Module):
    """VAR's residual post-quantization convolution ``(1 - r) x + r conv(x)`` with fixed strength ``r``."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"residual quantization strength {ratio} is not in [0, 1]")
        self.ratio = ratio
        self.conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (B, D, h, w) to (B, D, h, w)."""
        return (1.0 - self.ratio) * x + self.ratio * self.conv(x)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}"


class SharedCodebookQuantizer(nn.Module):
    """Nearest-neighbour quantizer with an EMA-updated codebook shared by token grids of any size.

    The codebook ``(V, D)`` is a buffer: no gradient reaches it. Training calls ``quantize(z, accumulate=True)``
    once per grid (any number of grids, any sizes) and then :meth:`ema_update` once per optimizer step, which
    all-reduces the collected statistics under ``torch.distributed`` and applies one EMA step with Laplace-smoothed
    cluster sizes.

    Parameters
    ----------
    codebook_size : int
        Number of codes V (paper: 4096).
    dim : int
        Code dimension D (paper: 32).
    beta : float
        Commitment weight: ``beta * MSE(z, sg[q])``.
    ema_decay : float
        EMA decay of cluster sizes and code sums, in [0, 1).
    dead_code_threshold : float
        Dead-code restart. A code's EMA cluster size is the EMA of the number of vectors assigned to it per
        :meth:`ema_update` (summed over every grid of the step and, under ``torch.distributed``, over all ranks).
        After each update, every code whose cluster size is below this threshold is re-initialised to a randomly
        chosen non-zero encoder vector of that step (drawn on every rank and all-gathered, so all ranks revive the
        same codes with the same vectors), with cluster size reset to the threshold and code sum to ``threshold *
        vector``; codes at or above it are left exactly as the EMA step made them. 1.0 means "restart codes used
        less than once per step on average", the setting long runs need. 0 switches restarts off and keeps the
        plain EMA of the paper setting (Sonnet's ``VectorQuantizerEMA`` smoothing), under which a code that receives
        no vector decays to the origin after about ``ln(eps) / ln(ema_decay)`` updates (1.1k at 0.99 with eps 1e-5):
        the Laplace smoothing keeps ``eps`` in the denominator while the code sum keeps decaying. Positive values
        below ``100 * eps`` are refused, since codes would shrink toward the origin before they count as dead.
    kmeans_init : bool
        Initialise the codebook with a few k-means iterations on the first training batch instead of keeping the
        random normal initialisation.
    kmeans_iters : int
        Lloyd iterations of that initialisation.
    eps : float
        Laplace smoothing of the cluster sizes.
    """

    def __init__(
        self,
        codebook_size: int = 4096,
        dim: int = 32,
        beta: float = 0.25,
        ema_decay: float = 0.99,
        dead_code_threshold: float = 0.0,
        kmeans_init: bool = False,
        kmeans_iters: int = 10,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if codebook_size < 1:
            raise ValueError(f"codebook_size {codebook_size} must be at least 1")
        if dim < 1:
            raise ValueError(f"codebook dim {dim} must be at least 1")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay {ema_decay} is not in [0, 1)")
        if beta < 0:
            raise ValueError(f"commitment weight beta {beta} is negative")
        if not (math.isfinite(dead_code_threshold) and dead_code_threshold >= 0):
            raise ValueError(f"dead_code_threshold {dead_code_threshold} is not a finite non-negative number")
        if 0 < dead_code_threshold < 100 * eps:
            raise ValueError(
                f"dead_code_threshold {dead_code_threshold} is positive but below 100 * eps = {100 * eps:g}: unused "
                "codes would shrink toward the origin before counting as dead; use 0 (off) or about 1"
            )
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.ema_decay = ema_decay
        self.dead_code_threshold = dead_code_threshold
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.eps = eps

        codebook = torch.randn(codebook_size, dim)
        self.register_buffer("codebook", codebook)  # V, D
        # Cluster sizes start at one with sums equal to the codes, so each code starts as its own cluster mean. An
        # unused code's size and sum then both decay by ema_decay per update, but the Laplace smoothing keeps eps in
        # the denominator: once the size nears eps (about ln(eps) / ln(ema_decay) updates, 1.1k at 0.99) the code
        # collapses to the origin. Only dead_code_threshold > 0 prevents that, by restarting such codes.
        self.register_buffer("ema_cluster_size", torch.ones(codebook_size))  # V
        self.register_buffer("ema_embed_sum", codebook.clone())  # V, D
        self.register_buffer("initialized", torch.tensor(not kmeans_init))
        self._ranks_synced = False
        # Plain attributes, not buffers: DistributedDataParallel would overwrite them with rank 0's partial sums.
        self._pending_counts: torch.Tensor | None = None  # V
        self._pending_sums: torch.Tensor | None = None  # V, D
        self._pending_vectors: list[torch.Tensor] = []

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size}, dim={self.dim}, beta={self.beta}, ema_decay={self.ema_decay}, "
            f"dead_code_threshold={self.dead_code_threshold}, kmeans_init={self.kmeans_init}"
        )

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.dim:
            raise ValueError(f"expected latents of shape (B, {self.dim}, h, w), got {tuple(z.shape)}")

    def _nearest(self, flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
        # Distances in float32 even under autocast: half-precision ties would scramble the assignments.
        with torch.autocast(flat.device.type, enabled=False):
            distances = flat.square().sum(1, keepdim=True) - 2 * flat @ codebook.T + codebook.square().sum(1)  # N, V
        return distances.argmin(dim=1)

    def nearest_indices(self, z: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) of the nearest codes (L2) of latents (B, D, h, w), without gradient or statistics."""
        self._check_latent(z)
        b, d, h, w = z.shape
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, d).float()
        return self._nearest(flat, self.codebook).view(b, h, w)

    def quantize(self, z: torch.Tensor, accumulate: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize one latent grid.

        Parameters
        ----------
        z : torch.Tensor
            Encoder latents, shape (B, D, h, w).
        accumulate : bool
            Add this grid's assignment counts and vector sums to the statistics that the next :meth:`ema_update`
            applies.

        Returns
        -------
        z_q : torch.Tensor
            Quantized latents (B, D, h, w), equal to the codes, with rotation-trick gradients to ``z``.
        indices : torch.Tensor
            Long tensor (B, h, w).
        commit_loss : torch.Tensor
            Scalar ``beta * MSE(z, sg[q])``.
        """
        self._check_latent(z)
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()  # N, D
        if self.training and not self._ranks_synced:
            self._sync_from_rank0()
        if self.kmeans_init and self.training and not bool(self.initialized):
            self._init_from_kmeans(flat.detach())
        indices = self._nearest(flat.detach(), self.codebook)  # N
        q = self.codebook[indices]  # N, D
        if accumulate:
            self._accumulate(flat.detach(), indices)
        commit_loss = self.beta * F.mse_loss(flat, q)
        z_q = rotation_trick(flat, q).to(z.dtype).view(b, h, w, d).permute(0, 3, 1, 2)
        return z_q, indices.view(b, h, w), commit_loss

    @torch.no_grad()
    def _sync_from_rank0(self) -> None:
        """Give every rank rank 0's codebook and EMA state before the first training step.

        DIRECT wraps models with ``broadcast_buffers=False``, so DistributedDataParallel never copies these buffers;
        without this, ranks would apply the same all-reduced EMA statistics to different random codebooks.
        """
        self._ranks_synced = True
        if _distributed() and dist.get_world_size() > 1:
            for buffer in (self.codebook, self.ema_cluster_size, self.ema_embed_sum):
                dist.broadcast(buffer, src=0)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes of token indices (B, h, w) as latents (B, D, h, w)."""
        if indices.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"token indices must be an int64 or int32 tensor, got {indices.dtype}")
        if indices.ndim != 3:
            raise ValueError(f"token indices must have shape (B, h, w), got {tuple(indices.shape)}")
        outside = (indices < 0) | (indices >= self.codebook_size)
        if outside.any():
            value = indices[outside][0].item()
            raise ValueError(f"token index {value} is outside the codebook range [0, {self.codebook_size})")
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2)

    def usage(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fraction of the V codes that occur in ``indices`` (any shape) and the perplexity of their distribution.

        Returns
        -------
        tuple[torch.Tensor, torch.Tensor]
            Two float scalars: used fraction in [0, 1] and perplexity in [1, V].
        """
        counts = torch.bincount(indices.flatten(), minlength=self.codebook_size).float()  # V
        probs = counts / counts.sum().clamp_min(1.0)
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum()
        return (counts > 0).float().mean(), entropy.exp()

    @torch.no_grad()
    def _accumulate(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        if self._pending_counts is None:
            self._pending_counts = flat.new_zeros(self.codebook_size)
            self._pending_sums = flat.new_zeros(self.codebook_size, self.dim)
        self._pending_counts += torch.bincount(indices, minlength=self.codebook_size).to(flat.dtype)
        self._pending_sums.index_add_(0, indices, flat)
        if self.dead_code_threshold > 0:
            self._pending_vectors.append(flat)

    @torch.no_grad()
    def ema_update(self) -> None:
        """Apply one EMA step with the statistics accumulated since the last call (no-op when there are none).

        Under ``torch.distributed`` every rank must call this after the same number of accumulating
        ``quantize`` calls: the statistics are all-reduced so the codebooks of all ranks stay identical.
        """
        if self._pending_counts is None:
            return
        counts, sums = self._pending_counts, self._pending_sums
        if _distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.ema_cluster_size.mul_(self.ema_decay).add_(counts.to(self.ema_cluster_size), alpha=1 - self.ema_decay)
        self.ema_embed_sum.mul_(self.ema_decay).add_(sums.to(self.ema_embed_sum), alpha=1 - self.ema_decay)
        total = self.ema_cluster_size.sum()
        smoothed = (self.ema_cluster_size + self.eps) / (total + self.codebook_size * self.eps) * total  # V
        self.codebook.copy_(self.ema_embed_sum / smoothed.unsqueeze(1))
        if self.dead_code_threshold > 0 and self._pending_vectors:
            self._reinit_dead_codes(torch.cat(self._pending_vectors))
        self._pending_counts = self._pending_sums = None
        self._pending_vectors = []

    def _reinit_dead_codes(self, vectors: torch.Tensor) -> int:
        """Restart the codes whose EMA cluster size is below the threshold; returns how many were restarted.

        The dead set is identical on all ranks (the statistics were all-reduced and the ranks synced at the start).
        Each rank draws ``num_dead`` distinct candidates from its own non-zero finite vectors (a rank with none sends
        NaN rows); the candidates are all-gathered and dead code ``j`` takes candidate ``j`` of usable rank
        ``j mod (number of usable ranks)``, so every rank writes the same vectors and every rank's data is used.
        """
        dead = self.ema_cluster_size < self.dead_code_threshold  # V
        num_dead = int(dead.sum())
        if num_dead == 0:
            return 0
        usable = vectors[(vectors.abs().amax(dim=1) > 0) & torch.isfinite(vectors).all(dim=1)]  # n, D
        if len(usable) >= num_dead:
            candidates = usable[torch.randperm(len(usable), device=usable.device)[:num_dead]]
        elif len(usable) > 0:
            candidates = usable[torch.randint(len(usable), (num_dead,), device=usable.device)]
        else:
            candidates = vectors.new_full((num_dead, self.dim), float("nan"))
        candidates = candidates.to(self.codebook).contiguous()  # K, D
        if _distributed() and dist.get_world_size() > 1:
            gathered = [torch.empty_like(candidates) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, candidates)
            stacked = torch.stack(gathered)  # W, K, D
        else:
            stacked = candidates[None]
        ranks = torch.isfinite(stacked).all(dim=2).all(dim=1).nonzero().flatten()  # usable ranks
        if len(ranks) == 0:
            logger.warning("%d dead codes not restarted: the step held no non-zero encoder vector", num_dead)
            return 0
        slots = torch.arange(num_dead, device=stacked.device)
        fresh = stacked[ranks[slots % len(ranks)], slots]  # K, D
        self.codebook[dead] = fresh
        self.ema_cluster_size[dead] = self.dead_code_threshold
        self.ema_embed_sum[dead] = fresh * self.dead_code_threshold
        logger.debug("re-initialised %d dead codes", num_dead)
        return num_dead

    @torch.no_grad()
    def _init_from_kmeans(self, vectors: torch.Tensor) -> None:
        n = len(vectors)
        if n >= self.codebook_size:
            pick = torch.randperm(n, device=vectors.device)[: self.codebook_size]
        else:
            pick = torch.randint(n, (self.codebook_size,), device=vectors.device)
        centroids = vectors[pick].clone()  # V, D
        for _ in range(self.kmeans_iters):
            assign = self._nearest(vectors, centroids)
            counts = torch.bincount(assign, minlength=self.codebook_size)
            sums = torch.zeros_like(centroids).index_add_(0, assign, vectors)
            filled = counts > 0
            centroids[filled] = sums[filled] / counts[filled].unsqueeze(1).to(sums)
        if _distributed():
            dist.broadcast(centroids, src=0)
        self.set_codebook(centroids)
        logger.info("initialised the %d-code codebook by k-means on %d vectors", self.codebook_size, n)

    @torch.no_grad()
    def set_codebook(self, codebook: torch.Tensor) -> None:
        """Replace the codes (V, D) and restart the EMA statistics from them."""
        if tuple(codebook.shape) != (self.codebook_size, self.dim):
            raise ValueError(
                f"codebook of shape {tuple(codebook.shape)} does not fit ({self.codebook_size}, {self.dim})"
            )
        self.codebook.copy_(codebook)
        self.ema_cluster_size.fill_(1.0)
        self.ema_embed_sum.copy_(codebook)
        self.initialized.fill_(True)


def _check_scales(scales: Sequence[int], height: int, width: int) -> None:
    if len(scales) == 0:
        raise ValueError("scales is empty")
    for side in scales:
        if not 1 <= side <= min(height, width):
            raise ValueError(f"scale {side} is not a side length between 1 and {min(height, width)}")


@torch.no_grad()
def residual_multiscale_quantize(
    quantizer: SharedCodebookQuantizer,
    f: torch.Tensor,
    scales: Sequence[int],
    post: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Quantize one latent residually over growing square token grids, as VAR's tokenizer does (no gradient).

    At scale ``k`` the remaining residual is area-shrunk to ``scales[k]`` squared, quantized, the codes are
    bicubic-enlarged back to ``(H, W)``, passed through ``post(h, k)`` (VAR's shared Phi convolutions belong to the
    caller) and subtracted from the residual.

    Parameters
    ----------
    quantizer : SharedCodebookQuantizer
        The codebook.
    f : torch.Tensor
        Latent (B, D, H, W).
    scales : Sequence[int]
        Token-grid side lengths, coarse to fine, each at most ``min(H, W)``.
    post : Callable[[torch.Tensor, int], torch.Tensor] | None
        Per-scale map of the enlarged codes (B, D, H, W); identity when None.

    Returns
    -------
    indices : list[torch.Tensor]
        Long tensors (B, s, s), one per scale.
    reconstructions : list[torch.Tensor]
        Cumulative reconstructions (B, D, H, W) after each scale.
    """
    height, width = f.shape[-2:]
    _check_scales(scales, height, width)
    rest = f.detach().float().clone()
    f_hat = torch.zeros_like(rest)
    indices, reconstructions = [], []
    for k, side in enumerate(scales):
        idx = quantizer.nearest_indices(resize_latent(rest, (side, side)))  # B, s, s
        h = resize_latent(quantizer.lookup(idx), (height, width))
        if post is not None:
            h = post(h, k)
        f_hat = f_hat + h
        rest = rest - h
        indices.append(idx)
        reconstructions.append(f_hat)
    return indices, reconstructions


def decode_multiscale(
    quantizer: SharedCodebookQuantizer,
    indices: Sequence[torch.Tensor],
    out_hw: tuple[int, int],
    post: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Sum the enlarged codes of residual multi-scale tokens, the inverse of :func:`residual_multiscale_quantize`.

    Parameters
    ----------
    quantizer : SharedCodebookQuantizer
        The codebook.
    indices : Sequence[torch.Tensor]
        Long tensors (B, s_k, s_k), coarse to fine.
    out_hw : tuple[int, int]
        Latent size (H, W) to enlarge every scale to.
    post : Callable[[torch.Tensor, int], torch.Tensor] | None
        The same per-scale map as at quantization.

    Returns
    -------
    torch.Tensor
        Latent (B, D, H, W).
    """
    if len(indices) == 0:
        raise ValueError("indices is empty")
    f_hat = None
    for k, idx in enumerate(indices):
        h = resize_latent(quantizer.lookup(idx), tuple(out_hw))
        if post is not None:
            h = post(h, k)
        f_hat = h if f_hat is None else f_hat + h
    return f_hat

"""Scale-aligned 2D rotary position embedding (MIAR): tokens covering the same image region share angles on every scale.

Each scale s is an (h_s, w_s) token grid; the scales are concatenated row-major, coarse to fine, into one sequence.
Token (i, j) of scale s sits at ``((i + 0.5) * H / h_s, (j + 0.5) * W / w_s)`` with (H, W) the largest grid, i.e. at
the centre of the image region it covers, measured in finest-grid cells. Half of the rotary pairs turn with that row
coordinate and half with the column coordinate, so within a scale q·k depends only on the 2D offset of two tokens
and across scales it depends on how far apart their regions are.
"""

import torch
from torch import Tensor, nn


class Rope2D(nn.Module):
    """Rotate queries/keys by their scale-aligned 2D positions.

    Parameters
    ----------
    head_dim : int
        Per-head channel count; must be divisible by 4 (two rotary halves of complex pairs).
    scales : list of (int, int)
        Token grid (h, w) of every scale, in sequence order.
    base : float
        Frequency base: pair i of each half turns at ``base ** (-i / (head_dim // 4))`` radians per cell.

    Notes
    -----
    Called as ``rope(x, positions)`` (``nn.Module.apply`` already means something else). The cos/sin tables are
    non-persistent buffers: they follow ``.to(device)`` but stay out of checkpoints, so one instance can be shared by
    every attention layer.
    """

    def __init__(self, head_dim: int, scales: list[tuple[int, int]], base: float = 10000.0) -> None:
        super().__init__()
        if head_dim <= 0 or head_dim % 4 != 0:
            raise ValueError(f"head_dim {head_dim} is not a positive multiple of 4, needed for 2D rotary embedding")
        if not scales or any(h < 1 or w < 1 for h, w in scales):
            raise ValueError(f"scales {scales} must be a non-empty list of positive (h, w) token grids")
        self.scales = [(int(h), int(w)) for h, w in scales]
        self.offsets = [0]
        for h, w in self.scales:
            self.offsets.append(self.offsets[-1] + h * w)

        max_h = max(h for h, _ in self.scales)
        max_w = max(w for _, w in self.scales)
        rows, cols = [], []
        for h, w in self.scales:
            row = (torch.arange(h, dtype=torch.float64) + 0.5) * (max_h / h)
            col = (torch.arange(w, dtype=torch.float64) + 0.5) * (max_w / w)
            rows.append(row.repeat_interleave(w))  # row-major: row index changes slowest
            cols.append(col.repeat(h))
        quarter = head_dim // 4
        inv_freq = base ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
        angles = torch.cat((torch.cat(rows)[:, None] * inv_freq, torch.cat(cols)[:, None] * inv_freq), dim=1)
        self.register_buffer("cos", angles.cos().float(), persistent=False)  # L_total, head_dim / 2
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    @property
    def sequence_length(self) -> int:
        """Total number of tokens over all scales."""
        return self.offsets[-1]

    def scale_slice(self, scale: int) -> slice:
        """Positions of scale ``scale`` in the concatenated sequence."""
        if not 0 <= scale < len(self.scales):
            raise ValueError(f"scale {scale} is out of range for {len(self.scales)} scales")
        return slice(self.offsets[scale], self.offsets[scale + 1])

    def forward(self, x: Tensor, positions: slice | Tensor) -> Tensor:
        """Rotate ``x`` (..., L, head_dim) whose L tokens sit at ``positions`` (a slice or (L,) indices)."""
        cos, sin = self.cos[positions], self.sin[positions]  # L, head_dim / 2
        if cos.shape[0] != x.shape[-2]:
            raise ValueError(f"positions select {cos.shape[0]} tokens but x holds {x.shape[-2]}")
        pairs = x.float().unflatten(-1, (-1, 2))  # ..., L, head_dim / 2, 2
        real, imag = pairs.unbind(-1)
        rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
        return rotated.flatten(-2).type_as(x)

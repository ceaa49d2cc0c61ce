"""Learning-rate schedules of the papers, for engines that replace DIRECT's multi-step schedule."""

from __future__ import annotations

import math

import torch


def warmup_schedule(
    optimizer: torch.optim.Optimizer, kind: str, warmup_iterations: int, total_iterations: int, min_lr: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine (AQ-VAE, distillation) or linear (NextAccel) decay to ``min_lr``.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Every parameter group decays from its own initial learning rate.
    kind : str
        ``"cosine"`` or ``"linear"``.
    warmup_iterations, total_iterations : int
        Iterations of warm-up and of the whole run.
    min_lr : float
        Final learning rate of the main group, reached at ``total_iterations``.

    Returns
    -------
    torch.optim.lr_scheduler.LambdaLR
    """
    if kind not in ("cosine", "linear"):
        raise ValueError(f"lr_schedule {kind!r} is not 'cosine' or 'linear'")
    if total_iterations <= 0:
        raise ValueError(f"num_iterations {total_iterations} must be positive")
    # DIRECT's own scheduler has already scaled "lr" by its warm-up factor; "initial_lr" is the configured value.
    group = optimizer.param_groups[0]
    base_lr = group.get("initial_lr", group["lr"])
    floor = min(min_lr / base_lr, 1.0) if base_lr > 0 else 0.0

    def factor(iteration: int) -> float:
        if iteration < warmup_iterations:
            return (iteration + 1) / warmup_iterations
        progress = min((iteration - warmup_iterations) / max(total_iterations - warmup_iterations, 1), 1.0)
        decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
        return floor + (1.0 - floor) * decay

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

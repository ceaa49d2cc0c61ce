"""Learning-rate schedules of the papers, for engines that replace DIRECT's multi-step schedule."""

from __future__ import annotations

import math

import torch


class WarmupDecayLR(torch.optim.lr_scheduler._LRScheduler):
    """Linear warm-up, then cosine or linear decay of every group's learning rate to ``min_lr``.

    A subclass of ``_LRScheduler`` with plain-number state, because DIRECT's Checkpointer saves and restores only
    schedulers of that type: a resumed run continues the schedule instead of warming up again.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Every parameter group decays from its own configured (``initial_lr``) learning rate.
    kind : str
        ``"cosine"`` or ``"linear"``.
    warmup_iterations, total_iterations : int
        Iterations of warm-up and of the whole run.
    min_lr : float
        Final learning rate of the first group, reached at ``total_iterations``; other groups keep the same ratio.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, kind: str, warmup_iterations: int, total_iterations: int, min_lr: float
    ) -> None:
        if kind not in ("cosine", "linear"):
            raise ValueError(f"lr_schedule {kind!r} is not 'cosine' or 'linear'")
        if total_iterations <= 0:
            raise ValueError(f"num_iterations {total_iterations} must be positive")
        # DIRECT's own scheduler has already scaled "lr" by its warm-up factor; "initial_lr" is the configured value.
        group = optimizer.param_groups[0]
        base_lr = group.get("initial_lr", group["lr"])
        self.kind = str(kind)  # a plain str: a config Enum member would make the checkpoint unloadable by weights_only
        self.warmup_iterations = warmup_iterations
        self.total_iterations = total_iterations
        self.floor = min(min_lr / base_lr, 1.0) if base_lr > 0 else 0.0
        super().__init__(optimizer)

    def factor(self, iteration: int) -> float:
        """Multiplier of the configured learning rate at ``iteration``."""
        if iteration < self.warmup_iterations:
            return (iteration + 1) / self.warmup_iterations
        span = max(self.total_iterations - self.warmup_iterations, 1)
        progress = min((iteration - self.warmup_iterations) / span, 1.0)
        decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if self.kind == "cosine" else 1.0 - progress
        return self.floor + (1.0 - self.floor) * decay

    def get_lr(self) -> list[float]:
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]


def warmup_schedule(
    optimizer: torch.optim.Optimizer, kind: str, warmup_iterations: int, total_iterations: int, min_lr: float
) -> WarmupDecayLR:
    """The schedule engines install in place of DIRECT's; see :class:`WarmupDecayLR`."""
    return WarmupDecayLR(optimizer, kind, warmup_iterations, total_iterations, min_lr)

"""The papers' learning-rate schedules, as engines install them over DIRECT's optimizer."""

from __future__ import annotations

import itertools

import pytest
import torch
from direct.data.lr_scheduler import WarmupMultiStepLR

from direct_nextaccel.schedules import warmup_schedule


def optimizer_after_direct(lr: float = 1e-4, warmup: int = 10) -> torch.optim.Optimizer:
    """An optimizer as DIRECT's train script leaves it: its own warm-up scheduler has already scaled the lr."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    WarmupMultiStepLR(optimizer, [1000], 0.1, warmup_factor=1 / 3.0, warmup_iterations=warmup, warmup_method="linear")
    return optimizer


def lrs(scheduler: torch.optim.lr_scheduler.LambdaLR, steps: int) -> list[float]:
    values = []
    for _ in range(steps):
        values.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return values


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_warmup_then_decay_to_min_lr_from_the_configured_lr(kind):
    scheduler = warmup_schedule(optimizer_after_direct(), kind, warmup_iterations=10, total_iterations=100, min_lr=1e-6)
    values = lrs(scheduler, 101)
    assert values[0] == pytest.approx(1e-5)  # 1/10 of the configured 1e-4, not of DIRECT's pre-scaled lr
    assert values[9] == pytest.approx(1e-4)  # end of warm-up: the configured lr
    assert all(a >= b for a, b in itertools.pairwise(values[9:]))  # monotone decay
    assert values[100] == pytest.approx(1e-6)
    midpoint = values[10 + 45]
    expected = 1e-6 + (1e-4 - 1e-6) * 0.5  # half-way between the ends for both shapes
    assert midpoint == pytest.approx(expected, rel=1e-6)


def test_cosine_and_linear_differ_between_ends():
    cosine = lrs(warmup_schedule(optimizer_after_direct(), "cosine", 0, 100, 0.0), 100)
    linear = lrs(warmup_schedule(optimizer_after_direct(), "linear", 0, 100, 0.0), 100)
    assert cosine[25] > linear[25] and cosine[75] < linear[75]


def test_bad_schedule_arguments_name_the_value():
    with pytest.raises(ValueError, match="'step'"):
        warmup_schedule(optimizer_after_direct(), "step", 0, 10, 0.0)
    with pytest.raises(ValueError, match="num_iterations 0"):
        warmup_schedule(optimizer_after_direct(), "cosine", 0, 0, 0.0)

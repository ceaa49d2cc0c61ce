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


def test_directs_checkpointer_saves_and_resumes_the_schedule(tmp_path):
    """DIRECT saves only _LRScheduler instances; a resumed run must continue, not warm up again."""
    from direct.checkpointer import Checkpointer

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = warmup_schedule(optimizer, "cosine", 10, 100, 1e-6)
    lrs(scheduler, 40)
    Checkpointer(tmp_path, save_to_disk=True, model=model, optimizer=optimizer, lr_scheduler=scheduler).save(39)

    model2 = torch.nn.Linear(2, 2)
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=1e-4)
    resumed = warmup_schedule(optimizer2, "cosine", 10, 100, 1e-6)
    Checkpointer(tmp_path, save_to_disk=False, model=model2, optimizer=optimizer2, lr_scheduler=resumed).load(39)
    assert resumed.last_epoch == scheduler.last_epoch == 40
    assert lrs(resumed, 5) == pytest.approx(lrs(scheduler, 5))

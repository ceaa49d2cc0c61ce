"""What keeps the ranks of a DistributedDataParallel run of a plugin engine identical, and stops them together.

DIRECT's ``direct train --num-gpus N`` (and ``--num-machines``) spawns one process per GPU and wraps only
``engine.model`` in DistributedDataParallel (``broadcast_buffers=False``). Everything else an engine trains or holds
is each process's own: DIRECT's additional models (a trainable sensitivity U-Net, which DIRECT's optimizer steps),
the AQ-VAE's discriminator, and every random number generator, since DIRECT seeds only the launching process from
``--seed`` and each spawned worker starts from torch's and numpy's random seeds. The helpers here are what
:class:`~direct_nextaccel.core.engine.PluginEngine` uses to close those gaps (all of them do nothing in a
single-process run):

- :func:`broadcast_modules`: rank 0's parameters and buffers to every rank, once when training starts;
- :func:`average_gradients`: the mean gradient over the ranks of parameters DistributedDataParallel does not reduce
  (DDP's own rule: a parameter without a gradient on a rank counts as a zero gradient there);
- :func:`any_rank` and :func:`gather_objects`: one all-reduced flag per check, so that a problem found by one rank
  (a non-finite batch, an interrupt) is acted on by every rank at the same point, before any other collective;
- :func:`seed_rank`: each rank's own random streams, derived from ``--seed`` and the rank.

Every function that communicates must be called by all ranks in the same order.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "SEED_VARIABLE",
    "any_rank",
    "average_gradients",
    "broadcast_modules",
    "direct_seed",
    "gather_objects",
    "is_distributed",
    "rank",
    "rank_seed",
    "seed_rank",
    "world_size",
]

logger = logging.getLogger(__name__)

SEED_VARIABLE = "PL_GLOBAL_SEED"
"""Environment variable that ``direct train`` sets from ``--seed`` (``direct.utils.set_all_seeds``) in the launching
process, before it spawns the workers, which inherit it: the one trace of ``--seed`` a spawned worker has."""


def world_size() -> int:
    """Number of processes of the initialised process group, 1 without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_distributed() -> bool:
    """Whether this process is one of several ranks (the helpers below communicate only then)."""
    return world_size() > 1


def rank() -> int:
    """This process's global rank, 0 without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def _tensors(modules: Iterable[nn.Module]) -> list[torch.Tensor]:
    seen: set[int] = set()
    tensors = []
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                tensors.append(tensor)
    return tensors


@torch.no_grad()
def broadcast_modules(modules: Iterable[nn.Module], source: int = 0) -> int:
    """Give every rank the parameters and buffers of rank ``source``'s ``modules`` (in place, so optimizers keep
    their references). Returns the number of tensors sent (0 in a single process)."""
    if not is_distributed():
        return 0
    tensors = _tensors(modules)
    for tensor in tensors:
        data = tensor.data
        if data.is_contiguous():
            dist.broadcast(data, src=source)
        else:
            buffer = data.contiguous()
            dist.broadcast(buffer, src=source)
            data.copy_(buffer)
    return len(tensors)


@torch.no_grad()
def average_gradients(parameters: Sequence[torch.Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the ranks: one all-reduce per dtype and device.

    A parameter without a gradient on some rank contributes zeros there (DistributedDataParallel's rule for unused
    parameters); one without a gradient on every rank keeps none, so the optimizer skips it as in a single process.
    """
    if not is_distributed() or not parameters:
        return
    count = world_size()
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for parameter in parameters:
        groups.setdefault((parameter.dtype, parameter.device), []).append(parameter)
    for (dtype, device), members in groups.items():
        pieces = [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in members]
        present = torch.tensor([p.grad is not None for p in members], dtype=dtype, device=device)
        flat = torch.cat([*pieces, present])
        dist.all_reduce(flat)
        present = flat[-len(members) :]
        offset = 0
        for parameter, used in zip(members, present.tolist(), strict=True):
            size = parameter.numel()
            if used > 0:
                mean = flat[offset : offset + size].view_as(parameter).div_(count)
                if parameter.grad is None:
                    parameter.grad = mean.clone()
                else:
                    parameter.grad.copy_(mean)
            offset += size


def any_rank(flags: Sequence[bool], device: torch.device | str) -> list[bool]:
    """For each flag, whether it is set on any rank (one all-reduce of a small tensor on ``device``, which must be
    the process group's device: the GPU for NCCL)."""
    if not is_distributed():
        return [bool(flag) for flag in flags]
    values = torch.tensor([int(bool(flag)) for flag in flags], dtype=torch.int32, device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return [bool(value) for value in values.tolist()]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` in a single process."""
    if not is_distributed():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


# Seeds ----------------------------------------------------------------------------------------------------------


def direct_seed() -> int | None:
    """The seed ``direct train`` derived from ``--seed`` for its workers (:data:`SEED_VARIABLE`), or None."""
    value = os.environ.get(SEED_VARIABLE, "").strip()
    return int(value) if value.isdigit() else None


def rank_seed(base: int, rank_index: int) -> int:
    """A 64-bit seed for rank ``rank_index`` of a run seeded with ``base``: different for every rank, a function of
    both alone."""
    words = np.random.SeedSequence([int(base), int(rank_index)]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 32) | int(words[1])


def seed_rank(base: int | None = None) -> int:
    """Seed this rank's torch (every device), numpy and Python generators from ``base`` and the rank.

    ``base`` defaults to :func:`direct_seed`; without it (a launcher other than ``direct train``) the ranks use base
    0, with a warning. Returns the rank's seed.
    """
    if base is None:
        base = direct_seed()
        if base is None:
            logger.warning(
                "%s is not set (not launched by direct train): every rank seeds its random numbers from base 0 and "
                "its rank, not from --seed.",
                SEED_VARIABLE,
            )
            base = 0
    seed = rank_seed(base, rank())
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global state DIRECT and datasets draw from
    random.seed(seed)
    return seed

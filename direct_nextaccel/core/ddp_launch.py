"""``direct train`` under DistributedDataParallel on CPU: DIRECT's own launch, its process group on gloo.

Usage (the arguments are ``direct``'s)::

    python -m direct_nextaccel.core.ddp_launch train RUNS --cfg CONFIG.yaml --training-root DATA \\
        --validation-root DATA --name NAME --device cpu --num-gpus 2 --num-workers 0

DIRECT's distributed path runs unchanged (``direct.cli`` -> ``launch`` -> ``torch.multiprocessing.spawn`` -> its
worker -> ``setup_train`` -> ``Engine.train``, which wraps the model in DistributedDataParallel and trains), except
for the two places where DIRECT assumes one GPU per process, both changed only as seen from DIRECT's modules:

1. ``direct.launch``'s worker initialises the process group with ``gloo`` (DIRECT asks for NCCL); on a machine without
   a GPU it also passes DIRECT's two CUDA checks and makes ``torch.cuda.set_device`` do nothing;
2. ``direct.engine``'s DistributedDataParallel is given no ``device_ids`` for a module on the CPU (DDP refuses them).

It is how the test suite trains the plugin's engines on two processes (``tests/core/test_ddp.py``), and a way to try a
multi-process configuration on a laptop. GPU training uses plain ``direct train --num-gpus N`` (NCCL).

With the environment variable :data:`DUMP_VARIABLE` set to a folder, every rank writes ``rank<r>.pt`` there after
training (:func:`dump_rank_state`): the state of every module and optimizer the engine trains or holds and the
``(file, slice)`` of each training batch it ran, so that a test compares the ranks.

The patches are applied when this module is imported: the spawned workers import it again as their ``__main__``
(``__mp_main__``), so they run with the same ones.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import direct.engine
import direct.launch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["DUMP_VARIABLE", "CPUDistributedDataParallel", "dump_rank_state", "main"]

DUMP_VARIABLE = "DIRECT_NEXTACCEL_DDP_DUMP"
"""Environment variable: a folder where each rank writes ``rank<r>.pt`` after training."""


class _Overlay:
    """A module as one other module sees it: the named attributes replaced, everything else the module's own."""

    def __init__(self, module: Any, **replaced: Any):
        self._module = module
        self._replaced = replaced

    def __getattr__(self, name: str) -> Any:
        if name in self._replaced:
            return self._replaced[name]
        return getattr(self._module, name)


def _gloo_process_group(*args: Any, **kwargs: Any) -> None:
    kwargs["backend"] = "gloo"
    dist.init_process_group(*args, **kwargs)


class CPUDistributedDataParallel(DistributedDataParallel):
    """DIRECT's DistributedDataParallel call (``device_ids=[local rank]``) for a module that may be on the CPU."""

    def __init__(self, module: nn.Module, device_ids=None, **kwargs: Any):
        parameter = next(module.parameters(), None)
        if parameter is not None and parameter.device.type == "cpu":
            device_ids = None
        super().__init__(module, device_ids=device_ids, **kwargs)


def _install() -> None:
    if getattr(direct.launch, "_nextaccel_gloo", False):  # imported twice: as __main__ and by its name
        return
    direct.launch._nextaccel_gloo = True
    launch_torch = torch
    if not torch.cuda.is_available():
        cuda = _Overlay(
            torch.cuda, is_available=lambda: True, device_count=lambda: sys.maxsize, set_device=lambda _: None
        )
        launch_torch = _Overlay(torch, cuda=cuda)
    direct.launch.torch = launch_torch
    direct.launch.dist = _Overlay(dist, init_process_group=_gloo_process_group)
    direct.engine.DistributedDataParallel = CPUDistributedDataParallel
    if os.environ.get(DUMP_VARIABLE):
        direct.engine.Engine.training_loop = _dumping(direct.engine.Engine.training_loop)


# The per-rank dump -------------------------------------------------------------------------------------------------


def _engine_modules(engine: Any) -> dict[str, nn.Module]:
    """Every module the engine trains or holds, once each: the model, DIRECT's additional models, and module
    attributes of the engine (a discriminator, a frozen tokenizer or teacher)."""
    model = getattr(engine.model, "module", engine.model)
    found: dict[str, nn.Module] = {"model": model}
    seen = {id(model), id(engine.model)}
    candidates = [(f"models.{name}", module) for name, module in sorted(engine.models.items())]
    candidates += [(f"engine.{name}", value) for name, value in sorted(vars(engine).items())]
    for name, module in candidates:
        if isinstance(module, nn.Module) and id(module) not in seen:
            found[name] = module
            seen.add(id(module))
    return found


def _optimizers(engine: Any) -> dict[str, torch.optim.Optimizer]:
    found = {"optimizer": engine._require_optimizer()}
    extra = engine.resume_checkpointables() if hasattr(engine, "resume_checkpointables") else {}
    found.update({name: value for name, value in extra.items() if isinstance(value, torch.optim.Optimizer)})
    return found


def dump_rank_state(engine: Any, folder: Path, batches: list[list[str]]) -> Path:
    """Write this rank's ``rank<r>.pt`` to ``folder``: ``modules`` (name -> state dict, parameters and buffers),
    ``optimizers`` (name -> state dict), ``batches`` (``file:slice`` of each training batch) and ``world_size``."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    state = {
        "rank": rank,
        "world_size": dist.get_world_size() if dist.is_initialized() else 1,
        "modules": {name: module.state_dict() for name, module in _engine_modules(engine).items()},
        "optimizers": {name: optimizer.state_dict() for name, optimizer in _optimizers(engine).items()},
        "batches": batches,
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank{rank}.pt"
    torch.save(state, path)
    return path


def _dumping(training_loop):
    @functools.wraps(training_loop)
    def loop(engine, *args: Any, **kwargs: Any):
        batches: list[list[str]] = []
        iteration = engine._do_iteration

        def recorded(data, *iteration_args, **iteration_kwargs):
            if engine.model.training:
                slices = data["slice_no"]
                slices = slices.tolist() if isinstance(slices, torch.Tensor) else list(slices)
                names = [Path(str(name)).name for name in data["filename"]]
                batches.append([f"{name}:{number}" for name, number in zip(names, slices, strict=True)])
            return iteration(data, *iteration_args, **iteration_kwargs)

        engine._do_iteration = recorded
        try:
            result = training_loop(engine, *args, **kwargs)
        finally:
            del engine._do_iteration
        dump_rank_state(engine, Path(os.environ[DUMP_VARIABLE]), batches)
        return result

    return loop


_install()


def main() -> int:
    from direct.cli.cli import main as direct_main

    sys.argv[0] = "direct"
    return direct_main()


if __name__ == "__main__":
    sys.exit(main())

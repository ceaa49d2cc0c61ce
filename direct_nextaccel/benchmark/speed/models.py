"""The networks every speed task builds the same way: a DIRECT engine from its config (and checkpoint), a
baseline's runner, and the random batch of a mask.

Speed does not depend on the weights' values: no method has data-dependent control flow (beam search always scores
2^k candidates per level), so randomly initialised weights are used unless checkpoints are given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from direct_nextaccel.benchmark.speed.task import Source
from direct_nextaccel.benchmark.speed.timing import Runner, StageClock, TimedMethod

if TYPE_CHECKING:
    import torch
    from direct.engine import Engine
    from torch import nn

    from direct_nextaccel.core.images import WorkingGrid

logger = logging.getLogger(__name__)

WEIGHTS_NOTE = "randomly initialised: inference time does not depend on the weights' values"
"""What the report says of a network without a checkpoint."""


def config_file(config_path: Path) -> Path:
    """``config_path`` if it exists; else ``FileNotFoundError`` saying where the paper-size configs come from."""
    if not Path(config_path).is_file():
        raise FileNotFoundError(
            f"config {config_path} does not exist: run from a direct-nextaccel checkout or pass --repo-root"
        )
    return Path(config_path)


def load_checkpoint(path: str | os.PathLike, modules: Mapping[str, nn.Module]) -> list[str]:
    """Load a DIRECT checkpoint (``{"model": ..., "sensitivity_model": ...}``) into ``modules`` by name.

    The file is read by the plugin's one checkpoint reader, :func:`direct_nextaccel.core.checkpoints.read_checkpoint`
    (``weights_only``, as ``direct predict`` loads; a missing, truncated or foreign file, or one without a ``model``
    state dict, is a one-line ``ValueError`` naming it). Returns the names of ``modules`` the checkpoint had weights
    for (``model`` always; the others when present). A state dict that does not fit raises ``ValueError``.
    """
    from direct_nextaccel.core.checkpoints import read_checkpoint

    state = read_checkpoint(path, "checkpoint")
    loaded = []
    for name, module in modules.items():
        if name in state:
            try:
                module.load_state_dict(state[name])
            except RuntimeError as err:
                raise ValueError(f"'{name}' of checkpoint {path} does not fit: {str(err).splitlines()[0]}") from err
            loaded.append(name)
    return loaded


def load_weights(checkpoint: str | os.PathLike | None, modules: Mapping[str, nn.Module]) -> None:
    """:func:`load_checkpoint` of ``checkpoint`` into ``modules`` and a log line of what it loaded; nothing for None."""
    if checkpoint is not None:
        loaded = load_checkpoint(checkpoint, modules)
        logger.info("Loaded %s from %s.", ", ".join(loaded), checkpoint)


def build_engine(config_path: Path, checkpoint: str | os.PathLike | None = None) -> Engine:
    """DIRECT's engine of one YAML config with its model and additional models on the CPU, in eval mode
    (:func:`direct_nextaccel.core.direct_build.build_direct_engine`), with the weights of ``checkpoint`` if given."""
    from direct_nextaccel.core.direct_build import build_direct_engine

    engine = build_direct_engine(config_file(config_path))
    load_weights(checkpoint, {"model": engine.model, **engine.models})
    return engine


def baseline_runner(engine: Engine) -> Runner:
    """DIRECT's inference of a baseline engine (E2EVarNet, RecurrentVarNet, U-Net): refine the sensitivities, then
    forward."""

    def reconstruct(batch: dict[str, Any], clock: StageClock) -> torch.Tensor:
        data = {
            "masked_kspace": batch["masked_kspace"],
            "sampling_mask": batch["sampling_mask"],
            "sensitivity_map": engine.compute_sensitivity_map(batch["sensitivity_map"]),
        }
        clock("sensitivities")
        image, _ = engine.forward_function(data)  # B, H, W
        clock("network")
        return image

    return reconstruct


def baseline_methods(
    baselines: Sequence[str], models: Sequence[str], sources: Mapping[str, Source]
) -> list[TimedMethod]:
    """One timed method of one row for each of ``baselines`` (in their order) that ``models`` asks for."""
    methods = []
    for model in baselines:
        if model in models:
            engine = build_engine(sources[model].config, sources[model].checkpoint)
            methods.append(TimedMethod([engine.model, *engine.models.values()], {model: baseline_runner(engine)}))
    return methods


def decoded_magnitude(
    tokenizer: nn.Module, tokens: list[torch.Tensor], factor: torch.Tensor, grid: WorkingGrid, clock: StageClock
) -> torch.Tensor:
    """The end of an autoregressive method's path: the image the ``tokenizer`` decodes from ``tokens``
    (``decode_indices``, B, 2, h, w) at DIRECT's scale (divided by the intensity ``factor``, B, 1, 1, 1), mapped back
    to DIRECT's (H, W) by the engine's ``grid``, as magnitude (B, H, W); ends the ``decode`` stage."""
    import torch

    decoded = grid.from_working(tokenizer.decode_indices(tokens) / factor)  # B, 2, H, W
    magnitude = torch.linalg.vector_norm(decoded, dim=1)  # B, H, W
    clock("decode")
    return magnitude


def random_batch(mask: torch.Tensor, coils: int, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Random k-space under ``mask`` (H, W) and a random sensitivity estimate, in DIRECT's batch layout."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, coils, *mask.shape, 2)
    sampling_mask = mask[None, None, :, :, None].expand(batch_size, 1, *mask.shape, 1).contiguous()
    return {
        "masked_kspace": torch.randn(shape, generator=generator) * sampling_mask,
        "sampling_mask": sampling_mask,
        "sensitivity_map": torch.randn(shape, generator=generator),
    }

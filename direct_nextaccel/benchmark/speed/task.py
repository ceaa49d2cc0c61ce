"""What one ``--task`` of ``direct-nextaccel speed`` is: its methods, rows, ratios and setups, in one :class:`Task`.

:mod:`~direct_nextaccel.benchmark.speed.reconstruction` and :mod:`~direct_nextaccel.benchmark.speed.superresolution`
each define one; :mod:`~direct_nextaccel.benchmark.speed.measure` times any of them the same way.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from direct_nextaccel.benchmark.speed.timing import TimedMethod

MODES = ("argmax", "beam1", "beam2", "beam3")
"""Rows of a task's autoregressive method: argmax decoding, or beam search with k = the row's digit."""

REPOSITORY = Path(__file__).resolve().parents[3]
"""Checkout holding ``projects/`` with the paper-size configs (the default of ``--repo-root``)."""

PACKAGE_CONFIGS = "direct_nextaccel/configs/"
"""Prefix of the setups' configs that are package data rather than files of the checkout."""


@dataclass(frozen=True)
class Setup:
    """Sizes and model configs of one configuration (``--config``) of a task.

    Attributes
    ----------
    matrix : tuple[int, int]
        k-space (H, W).
    coils : int
        Receive coils.
    configs : Mapping[str, str]
        Network name (a key of :attr:`Task.networks`' values: ``aqvae``, ``nextaccel``, ``varnet``, ...) -> DIRECT YAML
        (see :func:`resolve_config`) whose ``model`` and ``additional_models`` build it, in the task's order.
    coil_source : str, optional
        Where the coil count comes from, when the report should say so.
    """

    matrix: tuple[int, int]
    coils: int
    configs: Mapping[str, str]
    coil_source: str | None = None


@dataclass(frozen=True)
class Source:
    """Where one network of a timed method comes from: its config file and its weights (None: random)."""

    config: Path
    checkpoint: Path | None = None


GeneratorBuilder = Callable[[Mapping[str, Source], Sequence[str], bool], "TimedMethod"]
"""``(sources, modes, bf16)`` -> the task's autoregressive method, built from its networks' sources, with one row per
decoding mode (in :data:`MODES` order)."""
BatchMaker = Callable[[Setup, int, "torch.device"], dict[str, Any]]
"""``(setup, batch_size, device)`` -> the synthetic batch every method of the task reconstructs."""


@dataclass(frozen=True)
class Task:
    """One ``--task``: what it times and how.

    Attributes
    ----------
    name : str
        ``--task`` value.
    models : tuple[str, ...]
        ``--models`` choices; the autoregressive method first, whose rows are its decoding modes (:data:`MODES`), then
        the baselines (one row each).
    labels : Mapping[str, str]
        Row name (a mode or a baseline) -> label in the table.
    ratios : tuple
        ``(numerator row, denominator row, upper target or None)`` of the printed ratios of seconds per slice.
    networks : Mapping[str, tuple[str, ...]]
        Model -> names of the networks it is built from, each with its config and weights (``--run NAME=...``,
        ``--checkpoint-NAME``); a model not listed is one network of its own name.
    setups : Mapping[str, Setup]
        ``--config`` -> sizes and configs.
    mask : str
        The mask of the synthetic batch, as the report names it.
    transformer : str
        Name of the transformer that ``--bf16`` autocasts.
    make_batch : BatchMaker
        The synthetic batch.
    build_generator : GeneratorBuilder
        The autoregressive method; the baselines are DIRECT engines of their configs
        (:func:`~direct_nextaccel.benchmark.speed.models.baseline_methods`).
    paper_ms : Mapping[str, float]
        The paper's ms per slice of the autoregressive rows, when there is a reference (empty otherwise).
    paper_source : str, optional
        Where :attr:`paper_ms` comes from.
    """

    name: str
    models: tuple[str, ...]
    labels: Mapping[str, str]
    ratios: tuple[tuple[str, str, float | None], ...]
    networks: Mapping[str, tuple[str, ...]]
    setups: Mapping[str, Setup]
    mask: str
    transformer: str
    make_batch: BatchMaker
    build_generator: GeneratorBuilder
    paper_ms: Mapping[str, float] = field(default_factory=dict)
    paper_source: str | None = None
    modes: tuple[str, ...] = MODES

    @property
    def generator(self) -> str:
        """The autoregressive method, whose rows are its decoding modes."""
        return self.models[0]

    @property
    def checkpoints(self) -> tuple[str, ...]:
        """Every network name of the task, in its order: the names that ``--run`` and ``--checkpoint-NAME`` take."""
        return tuple(dict.fromkeys(name for model in self.models for name in self.networks_of(model)))

    def networks_of(self, model: str) -> tuple[str, ...]:
        """Names of the networks ``model`` is built from."""
        return self.networks.get(model, (model,))


def resolve_config(config: str, repo_root: str | os.PathLike = REPOSITORY) -> Path:
    """File of a setup's config: one under ``direct_nextaccel/configs/`` is package data (found in a wheel as in a
    checkout, whatever ``repo_root``), any other path is relative to the checkout ``repo_root``."""
    from direct_nextaccel import resources

    if config.startswith(PACKAGE_CONFIGS):
        return resources.config_path(config.removeprefix(PACKAGE_CONFIGS))
    return Path(repo_root) / config


def decoding_options(mode: str) -> dict[str, Any]:
    """``generate`` keywords of a row of :data:`MODES`: argmax, or beam search with k = the row's digit."""
    return {"mode": "argmax"} if mode == "argmax" else {"mode": "beam", "beam_k": int(mode.removeprefix("beam"))}

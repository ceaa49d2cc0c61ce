"""DIRECT's models and engine of one YAML config, built in this process as ``direct train`` builds them.

``direct train`` and ``direct predict`` build a run's networks from its YAML (the config dataclass of each
``model_name`` merged with the YAML, constructor arguments filtered by signature, the physics' FFT operators) and then
its engine; both do it inside their own set-up (logging, experiment folder, data). These functions do only the
building, for code that needs a run's networks or engine without a ``direct`` command: timing the inference path
(:mod:`direct_nextaccel.benchmark.speed`), tests. Everything is built on the CPU, in eval mode, with the weights a
fresh run starts from; loading a checkpoint into the result is the caller's.

Imports DIRECT inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from direct.engine import Engine
    from torch import nn

__all__ = ["build_direct_engine", "build_model", "load_config", "model_configs"]

_NOT_ARGUMENTS = ("model_name", "engine_name")
"""Keys of a ``model``/``additional_models`` section that choose the class and engine, not constructor arguments."""


def load_config(config_path: str | os.PathLike) -> Any:
    """The YAML at ``config_path`` as an OmegaConf ``DictConfig``.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    """
    from omegaconf import OmegaConf

    if not Path(config_path).is_file():
        raise FileNotFoundError(f"config {config_path} does not exist")
    return OmegaConf.load(config_path)


def model_configs(config: Any) -> tuple[dict[str, type], Any]:
    """The classes and merged configs of a DIRECT config's ``model`` and ``additional_models``, by name.

    Returns
    -------
    tuple
        ``(classes, configs)``: name (``"model"``, ``"sensitivity_model"``, ...) -> model class, and a ``DictConfig``
        of name -> its config dataclass merged with the YAML (what DIRECT's ``load_models_into_environment_config``
        gives).
    """
    from direct.environment import load_models_into_environment_config

    return load_models_into_environment_config(config)


def build_model(cls: type, config: Mapping[str, Any], **extra: Any) -> nn.Module:
    """``cls`` built from its merged ``config`` and ``extra`` keywords (e.g. the FFT operators), each kept only when
    ``cls``'s signature takes it, as DIRECT does; in eval mode."""
    from direct.utils import filter_arguments_by_signature

    kwargs = {key: value for key, value in config.items() if key not in _NOT_ARGUMENTS}
    return cls(**filter_arguments_by_signature(cls, {**kwargs, **extra})).eval()


def build_direct_engine(config_path: str | os.PathLike) -> Engine:
    """DIRECT's engine of the YAML ``config_path`` with its model and additional models on the CPU, in eval mode.

    The engine gets the config's ``model`` and ``additional_models`` (and ``training.loss``, which some engines check
    at construction), the physics' FFT operators and ``ndim = 2`` (DIRECT sets it from the dataset;
    ``compute_sensitivity_map`` reads it). Its networks are ``engine.model`` and ``engine.models``.

    Raises
    ------
    FileNotFoundError
        The config does not exist.
    """
    from direct.config.defaults import PhysicsConfig
    from direct.environment import build_operators, setup_engine
    from omegaconf import OmegaConf

    raw = load_config(config_path)
    classes, configs = model_configs(raw)
    physics = OmegaConf.merge(OmegaConf.structured(PhysicsConfig), raw.get("physics", {}))
    forward_operator, backward_operator = build_operators(physics)
    operators = {"forward_operator": forward_operator, "backward_operator": backward_operator}
    built = {name: build_model(cls, configs[name], **operators) for name, cls in classes.items()}
    cfg = OmegaConf.create(
        {"model": configs.model, "additional_models": {name: configs[name] for name in configs if name != "model"}}
    )
    if "training" in raw and "loss" in raw.training:
        cfg.training = {"loss": raw.training.loss}
    model = built.pop("model")
    engine = setup_engine(cfg, "cpu", model, built, **operators)
    engine.ndim = 2
    return engine

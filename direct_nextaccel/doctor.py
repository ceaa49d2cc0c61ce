"""``direct-nextaccel doctor``: what a bug report or a new machine needs to know, in one screen."""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from dataclasses import dataclass, field


@dataclass
class PluginInventory:
    """Everything registered through the three entry-point groups, as DIRECT will resolve it.

    Attributes
    ----------
    models : dict[str, list[str]]
        Alias -> ``model_name`` values usable in YAML (``alias.module.Class``).
    masks : dict[str, str]
        ``masking.name`` -> ``module:Class``.
    losses : dict[str, str]
        Loss name -> ``module:function``.
    refused : list[str]
        Entries refused because they would shadow DIRECT built-ins or another plugin.
    """

    models: dict[str, list[str]] = field(default_factory=dict)
    masks: dict[str, str] = field(default_factory=dict)
    losses: dict[str, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)


def model_names(alias: str, package: str) -> list[str]:
    """DIRECT ``model_name`` values of one alias package: classes ``X`` with a ``XConfig`` in ``<package>.config``.

    Parameters
    ----------
    alias : str
        The ``direct.nn`` alias, e.g. ``"nextaccel"``.
    package : str
        The package it points to, e.g. ``"direct_nextaccel.nextaccel"``.

    Returns
    -------
    list[str]
        Sorted names such as ``"nextaccel.aqvae.AQVAE"``.
    """
    try:
        config_module = importlib.import_module(f"{package}.config")
    except ModuleNotFoundError:
        return []
    wanted = {name.removesuffix("Config") for name, obj in vars(config_module).items() if inspect.isclass(obj)}
    found = []
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if info.name == "config" or info.name.endswith("_engine"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        for name in sorted(wanted):
            obj = getattr(module, name, None)
            if inspect.isclass(obj) and obj.__module__ == module.__name__:
                found.append(f"{alias}.{info.name}.{name}")
    return sorted(found)


def inventory() -> PluginInventory:
    """Collect the registered aliases (with their models), masks and losses."""
    from direct_nextaccel._hook import REGISTRY

    REGISTRY.load()
    return PluginInventory(
        models={alias: model_names(alias, package) for alias, package in sorted(REGISTRY.aliases.items())},
        masks={name: ep.value for name, ep in sorted(REGISTRY.masks.items())},
        losses={name: ep.value for name, ep in sorted(REGISTRY.losses.items())},
        refused=list(REGISTRY.refused),
    )


def plugin_startup_ms() -> float | None:
    """Interpreter start-up time spent in this plugin's ``.pth`` hook, from ``python -X importtime``.

    Returns
    -------
    float or None
        Milliseconds (cumulative import time of ``direct_nextaccel._hook``), or None if the hook did not run at start.
    """
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=False
    )
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s+direct_nextaccel\._hook$", line)
        if match:
            return int(match.group(1)) / 1000.0
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options: the report is always complete."""


def run(args: argparse.Namespace) -> int:
    """Print the report; exit code 1 if the plugin is not active at interpreter start."""
    import direct
    import torch

    import direct_nextaccel

    print(f"direct-nextaccel {direct_nextaccel.__version__} ({direct_nextaccel.__file__})")
    print(f"python {sys.version.split()[0]}, DIRECT {direct.__version__}, torch {torch.__version__}")
    if torch.cuda.is_available():
        devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        print(f"device: cuda ({devices})")
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads); no CUDA device")

    startup = plugin_startup_ms()
    if startup is None:
        print("plugin hook: NOT active at interpreter start (.pth not processed): call direct_nextaccel.register()")
    else:
        print(f"plugin hook: active at interpreter start, {startup:.1f} ms (python -X importtime)")

    found = inventory()
    for alias, names in found.models.items():
        print(f"alias direct.nn.{alias}: {', '.join(names) if names else '(no models yet)'}")
    print("masks (masking.name): " + ", ".join(found.masks))
    print("losses (training.loss.losses): " + ", ".join(found.losses))
    for line in found.refused:
        print(f"refused: {line}")

    from direct_nextaccel.weights import weights_dir_problem, weights_report

    print("optional pretrained weights (searched locally only, never downloaded):")
    if problem := weights_dir_problem():
        print(f"  WARNING: {problem}")
    for name, purpose, path in weights_report():
        print(f"  {name:<18} {'found ' + str(path) if path else 'absent'}  ({purpose})")
    return 0 if startup is not None else 1

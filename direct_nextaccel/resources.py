"""Package data: the tiny CPU configs of ``direct_nextaccel/configs/``, read through :mod:`importlib.resources`.

The files travel inside the package, so a wheel install finds them exactly as a checkout or an editable install does
(``demo`` and ``speed --config tiny`` read them from here; the paper-size configs of ``projects/`` are not package
data). ``direct train --cfg`` needs a file on disk: :func:`config_path` gives one.
"""

from __future__ import annotations

import atexit
import contextlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

    from omegaconf import DictConfig

PACKAGE = "direct_nextaccel"
CONFIG_DIR = "configs"

_extracted = contextlib.ExitStack()  # files extracted from a zipped package, removed at exit
atexit.register(_extracted.close)


def configs() -> Traversable:
    """The folder of the shipped configs."""
    return resources.files(PACKAGE).joinpath(CONFIG_DIR)


def config_names() -> list[str]:
    """File names of every shipped config, sorted."""
    return sorted(entry.name for entry in configs().iterdir() if entry.name.endswith(".yaml"))


def config_file(name: str) -> Traversable:
    """The shipped config ``name`` (a file name such as ``tiny_aqvae.yaml``).

    Raises
    ------
    FileNotFoundError
        No such config in the package; the message names it and lists those there are.
    """
    if not name or Path(name).name != name:
        raise FileNotFoundError(f"config name {name!r} is not a file name in {PACKAGE}/{CONFIG_DIR}/")
    entry = configs().joinpath(name)
    if not entry.is_file():
        raise FileNotFoundError(
            f"no config {name!r} in the installed package's {PACKAGE}/{CONFIG_DIR}/ (it holds: "
            f"{', '.join(config_names()) or 'nothing'})"
        )
    return entry


def load_config(name: str) -> DictConfig:
    """The shipped config ``name`` as OmegaConf loads a YAML file (anchors resolved)."""
    from omegaconf import OmegaConf

    with config_file(name).open("r", encoding="utf-8") as stream:
        return OmegaConf.load(stream)


def config_path(name: str) -> Path:
    """A file on disk holding the shipped config ``name``: the package's own file, or for a zipped package a copy
    that lives until the interpreter exits."""
    entry = config_file(name)
    if isinstance(entry, Path):
        return entry
    return _extracted.enter_context(resources.as_file(entry))

"""How both benchmark commands name a model: ``NAME[@FAMILY]=CONFIG.yaml:CHECKPOINT`` or ``NAME[@FAMILY]=RUN_DIR``.

``direct-nextaccel benchmark --run`` (and ``--bound``, ``--predictions``) and ``direct-nextaccel speed --run`` read
the same form: a NAME (:data:`NAME_RULE`: it becomes a folder name), an optional mask family, and a value that is a
DIRECT config with its checkpoint, or a run directory of ``direct train`` (its ``config.yaml`` and latest
``model_<iteration>.pt``), resolved by :func:`resolve_run`.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NAME_RULE", "Named", "check_name", "option_type", "parse_named", "resolve_run"]

_NAMED = re.compile(r"^(?P<name>[^@=]+)(?:@(?P<family>\w+))?=(?P<value>.+)$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$")
NAME_RULE = "1-100 of letters, digits, '_', '.', '+', '-', not starting with '.', '+' or '-'"
"""What a model name may be: it is a folder name (``predictions/<NAME>/``, ``configs/<NAME>.yaml``)."""
_CONFIG_AND_CHECKPOINT = re.compile(r"^(?P<config>.+\.ya?ml):(?P<checkpoint>.+)$")


@dataclass(frozen=True)
class Named:
    """``NAME[@FAMILY]=VALUE`` split into its parts (NAME already checked by :func:`check_name`)."""

    name: str
    family: str | None
    value: str


def check_name(name: str) -> str:
    """``name`` if it is a safe model name (:data:`NAME_RULE`): one path component that cannot climb out of its
    folder (``..``), hide (``.x``) or read as an option (``-x``).

    Raises
    ------
    ValueError
        Naming the refused name and the rule.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ValueError(f"method name {name!r} is not a safe folder name: use {NAME_RULE}")
    return name


def parse_named(text: str) -> Named:
    """``NAME[@FAMILY]=VALUE`` of a command-line option.

    Raises
    ------
    ValueError
        If ``text`` does not have that form or NAME is not safe (:func:`check_name`).
    """
    match = _NAMED.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not NAME[@FAMILY]=VALUE (NAME: {NAME_RULE})")
    return Named(check_name(match["name"]), match["family"], match["value"])


def resolve_run(value: str) -> tuple[Path, Path]:
    """Config and checkpoint of a ``CONFIG.yaml:CHECKPOINT`` or ``RUN_DIR`` value.

    ``CONFIG.yaml:CHECKPOINT`` takes CHECKPOINT as a file or as a run directory; a lone run directory (``direct
    train``'s output folder) gives its ``config.yaml``. A run directory gives its latest checkpoint, as ``direct train
    --resume`` would (:func:`direct_nextaccel.core.checkpoints.latest_checkpoint`: the ``model_<iteration>.pt`` that
    ``last_model.txt`` names, else the highest iteration).

    Raises
    ------
    ValueError
        One line naming the missing config or checkpoint.
    """
    from direct_nextaccel.core.checkpoints import latest_checkpoint  # imports torch: not at parser-building time

    match = _CONFIG_AND_CHECKPOINT.match(value)
    config, checkpoint = (
        (Path(match["config"]), Path(match["checkpoint"])) if match else (Path(value) / "config.yaml", Path(value))
    )
    if not checkpoint.exists():
        raise ValueError(f"checkpoint {checkpoint} does not exist")
    if checkpoint.is_dir():
        run_dir, checkpoint = checkpoint, latest_checkpoint(checkpoint)
        if checkpoint is None:
            raise ValueError(f"run directory {run_dir} has no checkpoint (model_<iteration>.pt)")
    if not config.is_file():
        raise ValueError(f"config {config} does not exist")
    return config, checkpoint


def option_type[T](parse: Callable[[str], T], name: str) -> Callable[[str], T]:
    """``parse`` as an argparse ``type``: its ``ValueError`` becomes argparse's one-line usage error."""

    def parse_option(text: str) -> T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    parse_option.__name__ = name
    return parse_option

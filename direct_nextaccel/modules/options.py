"""Typed pieces of the plugin's model configurations: the choice Enums both methods share, checked dataclasses and
the decoding-options mixin.

Where a bad value is caught (verified against DIRECT 2.2 and OmegaConf 2.4):

* **Choices** are Enums (:class:`Choice`, a ``(str, Enum)`` like DIRECT's own ``DirectEnum``, whose members print as
  their value). DIRECT merges a YAML ``model:`` block into the structured config with
  ``OmegaConf.merge(<Model>Config, yaml)`` (``direct.environment.load_models_into_environment_config``), and
  OmegaConf refuses a value that is not a member right there, before any model is built:
  ``Invalid value 'greedy', expected one of [argmax, multinomial, top_k_top_p, beam]`` with ``full_key: decoding``.
  Member names equal their values, so YAML spells them as before and DIRECT's saved ``config.yaml`` (written with the
  member names) reads back unchanged; a member compares and hashes equal to its string, so code testing
  ``config.decoding == "beam"`` keeps working. A member is still an Enum to ``pickle``: anything saved into a
  checkpoint (DIRECT's readers use ``torch.load(weights_only=True)``, which refuses unknown classes) must hold
  ``str(member)``, a plain ``str``, as :class:`~direct_nextaccel.schedules.WarmupDecayLR` does with its kind.
* **Ranges** (``top_p`` in (0, 1], ``beam_k`` in 1..3, fractions, lengths) cannot be expressed to OmegaConf, and
  neither ``OmegaConf.structured`` nor ``OmegaConf.merge`` instantiates the dataclass, so ``__post_init__`` never runs
  in DIRECT. The checks live in ``__post_init__`` all the same (one place per key) and the engines run them first
  thing in their constructor with :func:`validate_model_config`, which instantiates the dataclass from the merged
  config. That is the earliest point the plugin gets control after the merge: DIRECT builds the models from the
  config and then the engine, so a bad range is reported after the model is built and before anything loads or
  trains.

Lists of choices are typed ``list[Enum]`` rather than ``tuple[Enum, ...]``: OmegaConf 2.4 reports a bad element of a
tuple as ``Invalid value '$VALUE'`` without the key, of a list with the key and index.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

from omegaconf import OmegaConf

from direct_nextaccel.modules.decoding import check_decoding

__all__ = [
    "CheckedConfig",
    "Choice",
    "Decoding",
    "DecodingOptions",
    "LRSchedule",
    "LRScheduleOptions",
    "SamplingMode",
    "check_fraction",
    "check_positive",
    "check_positive_int",
    "check_positive_ints",
    "choice",
    "validate_model_config",
]


class Choice(StrEnum):
    """Base of the config Enums: a ``str`` (``(str, Enum)``) whose str(), format() and repr() are its value's, so
    messages and logs that print a configured choice read as before (``'beam'``, not ``<Decoding.beam: 'beam'>``)."""

    def __repr__(self) -> str:
        return repr(self.value)


class SamplingMode(Choice):
    """Token choice without look-ahead (``model.rollout`` of distillation; the non-beam ``model.decoding`` modes)."""

    argmax = "argmax"
    multinomial = "multinomial"
    top_k_top_p = "top_k_top_p"


class Decoding(Choice):
    """``model.decoding``: a :class:`SamplingMode` or MIAR's beam search (``beam_k``, ``beam_alpha``)."""

    argmax = "argmax"
    multinomial = "multinomial"
    top_k_top_p = "top_k_top_p"
    beam = "beam"


class LRSchedule(Choice):
    """``model.lr_schedule``: warm-up then linear or cosine decay to ``min_lr``, or DIRECT's multi-step schedule."""

    linear = "linear"
    cosine = "cosine"
    direct = "direct"


def choice(key: str, value: Any, enum_type: type[enum.Enum]) -> enum.Enum:
    """``value`` as a member of ``enum_type``, else a ValueError naming ``key``, the value and the allowed values."""
    if isinstance(value, enum_type):
        return value
    if isinstance(value, str):
        try:
            return enum_type(value)
        except ValueError:
            pass
    allowed = tuple(member.value for member in enum_type)
    raise ValueError(f"{key} {value!r} is not one of {allowed}")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Strings to the Enum a field (or a list/tuple field's elements) is typed with."""
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return choice(key, value, hint)
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple) and arguments and isinstance(arguments[0], type) and issubclass(arguments[0], enum.Enum):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"{key} {value!r} must be a list of {tuple(member.value for member in arguments[0])}")
        return origin(choice(f"{key}[{index}]", item, arguments[0]) for index, item in enumerate(value))
    return value


def check_positive(key: str, value: Any, zero: bool = False) -> None:
    """Refuse a value that is not a finite number > 0 (>= 0 with ``zero``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} {value!r} must be a finite number")
    if value < 0 or (value == 0 and not zero):
        raise ValueError(f"{key} {value} must be {'>= 0' if zero else 'positive'}")


def check_fraction(key: str, value: Any, low: str = "[", high: str = "]") -> None:
    """Refuse a value outside the interval 0..1 with the given brackets, e.g. ``"(", "]"`` for (0, 1]."""
    inside = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    inside = inside and (value >= 0 if low == "[" else value > 0) and (value <= 1 if high == "]" else value < 1)
    if not inside:
        raise ValueError(f"{key} {value} is not in {low}0, 1{high}")


def check_positive_int(key: str, value: Any) -> None:
    """Refuse anything but an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{key} {value!r} must be a positive integer")


def check_positive_ints(key: str, values: Any, length: int | None = None) -> None:
    """Refuse anything but a non-empty list of positive integers (of ``length`` entries when given)."""
    good = isinstance(values, Sequence) and not isinstance(values, str) and len(values) > 0
    good = good and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    if not good:
        raise ValueError(f"{key} {_listed(values)} must be a non-empty list of positive integers")
    if length is not None and len(values) != length:
        raise ValueError(f"{key} {_listed(values)} must have {length} entries")


def _listed(values: Any) -> Any:
    return list(values) if isinstance(values, Sequence) and not isinstance(values, str) else values


@dataclass
class CheckedConfig:
    """Base of the plugin's config dataclasses.

    ``__post_init__`` turns strings into the Enum a field is typed with (a ValueError names the key and the allowed
    values), then runs the ``_check`` method that each class of the hierarchy defines for its own fields, base
    classes first. Messages start with the key (``"top_p 1.5 is not in (0, 1]"``); :func:`validate_model_config`
    prefixes where the config sits (``model.``).
    """

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            if field.name in hints:
                setattr(self, field.name, _coerce(field.name, getattr(self, field.name), hints[field.name]))
        for cls in reversed(type(self).__mro__):
            check = cls.__dict__.get("_check")
            if check is not None:
                check(self)


@dataclass
class DecodingOptions(CheckedConfig):
    """How a model picks tokens at validation and ``direct predict`` (shared by NextAccel and MIAR).

    ``decoding``: argmax (NextAccel's paper), multinomial (softmax of logits / ``temperature``), top_k_top_p (the same
    after keeping the ``top_k`` largest logits, 0 = all, and the ``top_p`` nucleus) or beam (MIAR's beam search over
    the ``beam_k`` in 1..3 least confident tokens, confidence margin weight ``beam_alpha``).
    """

    ENGINE_KEYS: ClassVar[tuple[str, ...]] = ("decoding", "temperature", "top_k", "top_p", "beam_k", "beam_alpha")

    decoding: Decoding = Decoding.argmax
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    beam_k: int = 1
    beam_alpha: float = 1.0

    def _check(self) -> None:
        check_decoding(self.decoding, self.beam_k, self.beam_alpha, self.top_k, self.top_p, self.temperature)


@dataclass
class LRScheduleOptions(CheckedConfig):
    """The engine's learning-rate schedule: ``lr_schedule`` (see :class:`LRSchedule`) decaying to ``min_lr``."""

    ENGINE_KEYS: ClassVar[tuple[str, ...]] = ("lr_schedule", "min_lr")

    lr_schedule: LRSchedule = LRSchedule.direct
    min_lr: float = 0.0

    def _check(self) -> None:
        check_positive("min_lr", self.min_lr, zero=True)


def validate_model_config(node: Mapping[str, Any], config_class: type[CheckedConfig], key: str = "model") -> Any:
    """Every check of ``config_class`` on a merged config (``cfg.model``), as the engines run it first thing.

    The dataclass is instantiated from the node's values (keys the dataclass does not have are ignored, missing ones
    take the defaults), which runs its ``__post_init__``: Enum membership and range checks.

    Returns
    -------
    The ``config_class`` instance.

    Raises
    ------
    ValueError
        The first bad value, named as ``<key>.<field>`` (``model.top_p 1.5 is not in (0, 1]``).
    """
    values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node)
    names = {field.name for field in dataclasses.fields(config_class) if field.init}
    try:
        return config_class(**{name: value for name, value in values.items() if name in names})
    except ValueError as error:
        raise ValueError(f"{key}.{error}") from None

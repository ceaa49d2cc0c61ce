"""The one JSON schema of both benchmark commands' results (``speed --output FILE.json``, ``benchmark``'s
``benchmark.json``), and writing it as strict JSON.

Every result is a :class:`Result`: which command wrote it, the schema version, when it started, the machine
(:class:`Environment`), the options it ran with (``settings``, whose ``methods`` says how each model was named: the
``--run`` value, ``NAME=CONFIG.yaml:CHECKPOINT`` or ``NAME=RUN_DIR``), and one :class:`Row` per table row, whose
common keys read the same in both files. Each command adds its own keys next to them:

- ``speed``: ``task``, ``ratios`` and ``paper_reference`` at the top; per row ``batch_size``, ``repeats``,
  ``seconds_per_slice_quartiles``, ``seconds_per_slice_samples``, ``stage_seconds_per_slice``, ``parameters``.
- ``benchmark``: ``notes`` and ``families`` (one table per mask family with its metadata and its full rows: scores
  per metric and contrast, per-volume records, memorisation, warnings); per row ``family``.

Non-finite numbers are written as the strings ``"inf"``, ``"-inf"``, ``"nan"`` (:func:`json_value`), so every file
is strict JSON. Imports nothing heavy.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NotRequired, TypedDict

__all__ = [
    "SCHEMA_VERSION",
    "Environment",
    "MethodSettings",
    "Result",
    "Row",
    "describe_device",
    "environment",
    "json_value",
    "started_now",
    "write_json",
]

SCHEMA_VERSION = 2
"""Version of :class:`Result` (1: the layouts before both commands shared one)."""


class Environment(TypedDict):
    """The machine a result was measured on."""

    device: str
    """What ran the models: the GPU's name, or the CPU's model and its logical cores."""
    device_type: str
    """``"cpu"`` or ``"cuda"``."""
    torch: str
    direct: str
    torch_threads: int
    platform: str
    load_average_before: NotRequired[list[float]]
    """``speed``: the 1, 5 and 15 minute load averages before and after the timed calls."""
    load_average_after: NotRequired[list[float]]


class MethodSettings(TypedDict):
    """How one model was named on the command line (``settings["methods"][NAME]``)."""

    run: str | None
    """The ``CONFIG.yaml:CHECKPOINT`` or ``RUN_DIR`` given with ``--run`` (``speed``: None for a model built from the
    setup's config)."""
    config: NotRequired[str]
    """``speed``: the config the model was built from."""
    checkpoint: NotRequired[str | None]
    """``speed``: its weights; None for random initialisation."""
    kind: NotRequired[str]
    """``benchmark``: ``"method"`` or ``"bound"``; also ``family``, ``overrides`` and ``predictions``."""


class Row(TypedDict):
    """One table row; both commands write these keys (and their own next to them, see the module docstring)."""

    method: str
    """The row's name: ``benchmark``'s NAME, or what ``speed`` timed (a decoding mode such as ``beam1``, a
    baseline such as ``varnet``)."""
    label: str
    """The name as the Markdown table shows it."""
    kind: str
    """``"reference"`` (zero-filled), ``"method"`` or ``"bound"`` (a tokenizer's ceiling)."""
    status: str
    """``"ok"`` or ``"failed"``."""
    error: str | None
    """Why a failed row has no results, in one line."""
    seconds_per_slice: float | None
    """Seconds per slice: ``speed``'s median over the timed calls, ``benchmark``'s DIRECT reconstruction clock;
    None where not measured."""
    peak_memory_mib: float | None
    """Peak memory of the row in MiB (what it measures is in ``settings``); None where not measured."""


class Result(TypedDict):
    """A whole result file (see the module docstring)."""

    benchmark: str
    """The command: ``"direct-nextaccel speed"`` or ``"direct-nextaccel benchmark"``."""
    schema: int
    """:data:`SCHEMA_VERSION`."""
    started: str
    """ISO 8601 UTC time the command started (seconds)."""
    environment: Environment
    settings: dict[str, Any]
    """The options the command ran with; ``settings["methods"]``: NAME -> :class:`MethodSettings`."""
    rows: list[Row]


def started_now() -> str:
    """The current UTC time as :attr:`Result.started` writes it."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def describe_device(device: str) -> tuple[str, str]:
    """``(name, type)`` of ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``): the GPU's name, or the CPU's model and
    its logical cores. A device torch cannot describe keeps its given name."""
    import torch

    try:
        torch_device = torch.device(device)
    except (RuntimeError, TypeError):
        return device, device
    if torch_device.type == "cuda":
        try:
            return torch.cuda.get_device_name(torch_device), "cuda"
        except (RuntimeError, AssertionError, ValueError):  # no GPU in this process
            return device, "cuda"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), None)
    except OSError:
        model = None
    return f"{model or platform.processor() or platform.machine()}, {os.cpu_count()} logical cores", torch_device.type


def environment(device: str) -> Environment:
    """The :class:`Environment` of this process for ``device``."""
    from importlib.metadata import version

    import torch

    name, device_type = describe_device(device)
    return {
        "device": name,
        "device_type": device_type,
        "torch": torch.__version__,
        "direct": version("direct-recon"),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def json_value(value: object) -> object:
    """Strict-JSON version of a result: non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(item) for item in value]
    return value


def write_json(result: Mapping[str, Any], path: Path) -> Path:
    """Write ``result`` to ``path`` as indented strict JSON (its folder is created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_value(result), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path

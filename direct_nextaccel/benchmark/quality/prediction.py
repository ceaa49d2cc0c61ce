"""How ``direct-nextaccel benchmark`` gets a method's predictions: DIRECT's own ``direct predict`` in a child
process, timed by DIRECT's own clock, for ``--run`` methods and ``--bound`` rows.

- **Family** of a row: ``NAME@FAMILY``, else the family of the run config's ``inference.dataset.transforms.masking``
  name (:func:`inference_masking`), else ``--family``. A NextAccel trained on several families
  (``model.mask_families``) is scored on ``@FAMILY`` (else ``--family``): its inference masking takes that family's
  nested mask.
- **Acceleration**: ``--acceleration R`` (default 32) is the inference masking of every run whose masking is a nested
  family (NextAccel, the baselines, a bound), written into its derived config, and that of the zero-filled reference;
  other masks (a super-resolution mask, one of DIRECT's) keep their config's.
- **Derived configs**: a bound row runs its tokenizer's config with some keys changed (:func:`derived_config`),
  written to ``configs/<row>.yaml`` under ``--output``.
- **Time and memory**: each run's ``direct predict`` is DIRECT's own command line executed in a child Python process
  (:func:`predict_child`, started through :mod:`direct_nextaccel.core.direct_runs`), so a crash or a bad config loses
  only that row and memory is that of one model. Seconds per slice is DIRECT's own clock of its reconstruction loop
  (the elapsed time it logs when a volume is done: data loading with 0 workers, transforms, sensitivity estimation,
  network, cropping, DIRECT's per-batch garbage collection) divided by the slices, so interpreter start-up, model
  building and checkpoint loading are excluded. Peak memory is torch's peak CUDA allocation of that process on GPU,
  its peak resident memory (Python, torch and DIRECT included) on CPU.
- Before ``direct predict`` writes into ``predictions/<NAME>/``, only the ``.h5`` files named like the data volumes
  are removed there.
"""

from __future__ import annotations

import json
import logging
import re
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from direct_nextaccel.benchmark.naming import check_name, resolve_run
from direct_nextaccel.benchmark.quality.methods import Entry, Method
from direct_nextaccel.benchmark.report import MethodRow
from direct_nextaccel.core.direct_runs import device_options, failure_cause, one_line, python_command, run_logged

logger = logging.getLogger(__name__)

# DIRECT's MRIModelEngine.reconstruct_volumes logs "<i> of <n> volumes reconstructed: <file> (shape = [<slices>, ...])
# in <seconds since the loop started>s." once per volume.
_RECONSTRUCTED = re.compile(r"volumes reconstructed: .* \(shape = \[(\d+)\D.*\) in ([0-9.]+)s")
PREDICT_CHILD = (
    "import sys; from direct_nextaccel.benchmark.quality.prediction import predict_child; "
    "sys.exit(predict_child(sys.argv[1:]))"
)
"""Python code of the child process of :func:`run_direct_predict` (its arguments follow it)."""


def inference_masking(config: Path) -> dict | None:
    """The ``inference.dataset.transforms.masking`` of a DIRECT config, as ``build_masking_function`` arguments
    (None when absent).

    ``mode`` and ``range_mode`` become DIRECT's enums, as DIRECT's structured config makes them: the ``config.yaml``
    that ``direct train`` writes into a run directory spells them by member name (``mode: STATIC``), which mask
    functions comparing with ``!=`` would otherwise refuse.

    Raises
    ------
    ValueError
        The config cannot be read, or a mode is not one of DIRECT's.
    """
    from direct.types import MaskFuncMode, RangeMode
    from omegaconf import OmegaConf

    try:
        masking = OmegaConf.select(OmegaConf.load(config), "inference.dataset.transforms.masking")
        masking = None if masking is None else OmegaConf.to_container(masking, resolve=True)
    except Exception as error:  # OmegaConf and YAML raise many types; the row only needs the message
        raise ValueError(f"config {config} cannot be read: {one_line(error)}") from error
    if masking is None:
        return None
    if not isinstance(masking, dict):
        raise ValueError(f"config {config}: inference.dataset.transforms.masking is not a mapping")
    for key, enum in (("mode", MaskFuncMode), ("range_mode", RangeMode)):
        if isinstance(masking.get(key), str):
            value = enum.from_str(masking[key])
            if value is None:
                known = ", ".join(member.value for member in enum)
                raise ValueError(f"config {config}: masking {key} {masking[key]!r} is not one of {known}")
            masking[key] = value
    return masking


def derived_config(config: Path, overrides: Sequence[tuple[str, object]], destination: Path) -> Path:
    """``config`` with each dotted key of ``overrides`` set, saved at ``destination`` (its parent is created).

    Raises
    ------
    ValueError
        The config cannot be read or a key cannot be set.
    """
    from omegaconf import OmegaConf

    try:
        loaded = OmegaConf.load(config)
        for key, value in overrides:
            OmegaConf.update(loaded, key, value, merge=False, force_add=True)
    except Exception as error:  # OmegaConf and YAML raise many types; the row only needs the message
        raise ValueError(f"config {config} cannot be derived: {one_line(error)}") from error
    destination.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(loaded, destination)
    return destination


@dataclass(frozen=True)
class PredictStats:
    """Measurements of one ``direct predict`` run (see the module docstring)."""

    seconds_per_slice: float | None
    peak_memory_mib: float


def run_direct_predict(config: Path, checkpoint: Path, data: Path, output: Path, device: str) -> PredictStats:
    """Reconstruct every volume of ``data`` with DIRECT's ``direct predict`` in a child process, into ``output``.

    ``output`` receives one ``.h5`` per volume, DIRECT's log and ``predict.log`` (the child's whole output). Earlier
    predictions of the data's volumes there are removed first, so a failed run cannot leave stale ones; no other
    file is touched.

    Raises
    ------
    ValueError
        ``output`` is the data folder itself (removing its predictions would remove the data).
    RuntimeError
        The child failed; the message is the last exception line of its output and the log's path.
    """
    if output.resolve() == data.resolve():
        raise ValueError(f"predictions folder {output} is the data folder: choose another --output")
    output.mkdir(parents=True, exist_ok=True)
    for volume in sorted(data.glob("*.h5")):
        stale = output / volume.name
        if stale.is_symlink() or stale.is_file():
            stale.unlink()  # a link itself, never what it points to (DIRECT would write through it)
    stats_path, log_path = output / "predict_stats.json", output / "predict.log"
    stats_path.unlink(missing_ok=True)
    command = python_command(PREDICT_CHILD, stats_path, output, "--cfg", config, "--checkpoint", checkpoint)
    command += ["--data-root", str(data), *device_options(device)]
    status = run_logged(command, log_path)
    if status != 0 or not stats_path.is_file():
        reason = failure_cause(log_path) or f"exit status {status}"
        raise RuntimeError(f"direct predict failed: {reason} (log: {log_path})")
    stats = json.loads(stats_path.read_text())
    if not stats["slices"]:
        logger.warning("DIRECT logged no reconstruction time in %s: seconds per slice not measured", log_path)
    seconds = stats["seconds"] / stats["slices"] if stats["slices"] else None
    memory = stats["cuda_peak_mib"] if device != "cpu" and stats["cuda_peak_mib"] is not None else stats["rss_peak_mib"]
    return PredictStats(seconds, memory)


class _ReconstructionClock(logging.Handler):
    """Keeps DIRECT's per-volume reconstruction records: total slices and the last elapsed time.

    Until DIRECT sets up its own logging this is the root logger's only handler, which would silence Python's
    last-resort printing of warnings and errors (DIRECT reports an unknown ``model_name`` that way): such records are
    passed on to it.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.slices, self.seconds = 0, 0.0

    def emit(self, record: logging.LogRecord) -> None:
        if match := _RECONSTRUCTED.search(record.getMessage()):
            self.slices += int(match[1])
            self.seconds = float(match[2])
        if record.levelno >= logging.WARNING and logging.getLogger().handlers == [self] and logging.lastResort:
            logging.lastResort.handle(record)


def predict_child(argv: Sequence[str]) -> int:
    """Body of the child process of :func:`run_direct_predict`: ``STATS_JSON OUTPUT [direct predict options]``.

    Runs DIRECT's command line (``direct predict OUTPUT ...``) in this process, then writes DIRECT's reconstruction
    clock and this process's peak memory to STATS_JSON.
    """
    stats_path, *predict_args = argv
    clock = _ReconstructionClock()
    logging.getLogger().addHandler(clock)
    sys.argv = ["direct", "predict", *predict_args]
    import torch
    from direct.cli.cli import main

    main()
    stats = {
        "slices": clock.slices,
        "seconds": clock.seconds,
        "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # kilobytes on Linux
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized() else None,
    }
    Path(stats_path).write_text(json.dumps(stats))
    return 0


def nested_overrides(config: Path, family: str, acceleration: int) -> list[tuple[str, object]]:
    """Masking keys to set so that ``config`` is run on ``family`` at ``acceleration`` (see the module docstring).

    The masking name is set only for a NextAccel trained on several families (``model.mask_families``) that
    include ``family``; the accelerations for any nested masking not already at ``[acceleration]``.
    """
    from omegaconf import OmegaConf

    from direct_nextaccel.masks.nested import MASK_NAMES, family_of

    masking = inference_masking(config)
    if masking is None:
        return []
    key = "inference.dataset.transforms.masking"
    overrides: list[tuple[str, object]] = []
    trained = OmegaConf.select(OmegaConf.load(config), "model.mask_families", default=None) or []
    if len(trained) > 1 and family in [str(name) for name in trained]:
        overrides.append((f"{key}.name", MASK_NAMES[family]))
    try:
        family_of(str(masking.get("name")))
    except ValueError:
        return overrides  # not a nested family: its own accelerations
    if list(masking.get("accelerations") or []) != [acceleration]:
        overrides.append((f"{key}.accelerations", [acceleration]))
    return overrides


def prepare(
    method: Method, data: Path, output: Path, default_family: str, device: str, acceleration: int = 32
) -> Entry:
    """Family, masking and predictions folder of a method; runs ``direct predict`` for ``--run`` methods and bounds
    (nested maskings at ``acceleration``)."""
    from direct_nextaccel.masks.nested import family_of

    family = family_of(method.family) if method.family else None
    entry = Entry(
        method, MethodRow(method.name, kind=method.kind), family or default_family, predictions=method.predictions
    )
    if method.error is not None:
        entry.row.error = method.error
        logger.error("%s failed: %s", method.name, entry.row.error)
        return entry
    if method.run is None:
        return entry
    try:
        config, checkpoint = resolve_run(method.run)
        derived = output / "configs" / f"{check_name(method.name)}.yaml"
        if method.overrides:
            config = derived_config(config, method.overrides, derived)
        if overrides := nested_overrides(config, family or default_family, acceleration):
            config = derived_config(config, overrides, derived)
        entry.masking = inference_masking(config)
        if entry.masking is not None:
            name = str(entry.masking.get("name"))
            try:
                configured = family_of(name)
            except ValueError:
                configured = name  # a DIRECT mask outside the nested families: its own table
            if family is not None and family != configured:
                raise ValueError(f"@{family} contradicts the config's inference masking {name}")
            entry.family = configured
        entry.predictions = output / "predictions" / check_name(method.name)
        logger.info("%s: direct predict with %s (%s)", method.name, checkpoint, config)
        stats = run_direct_predict(config, checkpoint, data, entry.predictions, device)
        entry.row.seconds_per_slice, entry.row.peak_memory_mib = stats.seconds_per_slice, stats.peak_memory_mib
    except (ValueError, RuntimeError, OSError) as error:
        entry.row.error = one_line(error)
        logger.error("%s failed: %s", method.name, entry.row.error)
    return entry

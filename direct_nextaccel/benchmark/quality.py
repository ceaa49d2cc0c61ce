"""``direct-nextaccel benchmark``: score DIRECT models on the same fastMRI targets, per contrast and mask family, as
in the paper's Tables 1-2 and Figures 6-8 (section 5.1-5.2).

Methods are DIRECT runs (``--run NAME=CONFIG.yaml:CHECKPOINT`` or ``NAME=RUN_DIR``, any DIRECT model, the plugin's or
a built-in one), which the benchmark reconstructs with ``direct predict``, or folders of existing ``direct predict``
outputs (``--predictions NAME=DIR``). A NAME is a safe folder name (:func:`check_name`): it names
``predictions/<NAME>/``. Protocol:

- **Target**: the ``reconstruction_rss`` of every data file (fastMRI layout). A prediction must have exactly its
  shape (DIRECT's ``inference.crop: header``); otherwise that method fails with both shapes named.
- **Metrics**: per volume with fastMRI's conventions (:mod:`direct_nextaccel.metrics`: data range = maximum of the
  target volume), then the mean over the volumes of each contrast. Contrast from the ``acquisition`` attr (or the
  file name's token): AXT1, AXT1PRE and AXT1POST -> T1, AXT2 -> T2, AXFLAIR -> FLAIR (:data:`CONTRAST_OF_ACQUISITION`).
  LPIPS and DISTS cells read ``n/a (weights unavailable)`` when their pretrained weights are not on disk.
- **Mask family**: ``NAME@FAMILY=...``, else the family of the run config's ``inference.dataset.transforms.masking``
  name, else ``--family``. One table and one figure per family.
- **Zero-filled reference**: root-sum-of-squares of the k-space under the family's mask (the inference masking of
  the family's first successful method, else the nested family mask at ``--acceleration``), seeded from the file
  *name* (``tuple(map(ord, name))``), so that it does not depend on where the data sits. DIRECT's ``use_seed: true``
  seeds from the full path as given to ``--data-root`` (``tuple(map(ord, str(data_root / name)))``): a mask function
  that uses its whole seed gives the models another draw of the same family and R than the reference, which the
  notes say. A saved ``sampling_mask`` that is neither draw is flagged on its row.
- **Tokenizer bounds** (``--bound NAME[@FAMILY]=CONFIG.yaml:CHECKPOINT|RUN_DIR``): the ceiling of the autoregressive
  methods that decode through a tokenizer: ``direct predict`` of the tokenizer's own config, which decodes the
  fully sampled slice from its own tokens. An AQ-VAE (``nextaccel.aqvae.AQVAE``) gives two rows,
  ``NAME-all-levels`` (``model.output_levels`` = all six) and ``NAME-R32-tokens`` (``[0]``), both with
  ``model.mask_families: [FAMILY]`` (``@FAMILY``, else ``--family``) and the family's nested mask as inference
  masking, so each is the bound of that family's NextAccel; an MSVQ-VAE (``miar.msvqvae.MSVQVAE``) gives
  ``NAME-all-scales`` in its config's (super-resolution) table. The configs actually run are written to
  ``configs/<row>.yaml``. Bound rows are marked ``(bound)`` and never bold: they see the fully sampled data.
- **Flat predictions**: a predicted slice whose standard deviation is at most 1% of its (non-flat) target's (all
  zero, constant) is counted on its row with a warning, and such a row is never bold (an empty image gets a
  deceptively good SSIM).
- **Memorisation** (``--training-root DIR``): per method, the mean Pearson correlation of each slice with its own
  target and with the closest training slice, and how many slices are closer to a training slice
  (:mod:`direct_nextaccel.benchmark.memorisation`).
- **Time and memory** (``--run`` only): each run's ``direct predict`` is DIRECT's own command line executed in a
  child Python process (this module's ``__main__``), so a crash or a bad config loses only that row and memory is
  that of one model. Seconds per slice is DIRECT's own clock of its reconstruction loop (the elapsed time it logs
  when a volume is done: data loading with 0 workers, transforms, sensitivity estimation, network, cropping, DIRECT's
  per-batch garbage collection) divided by the slices, so interpreter start-up, model building and checkpoint loading
  are excluded. Peak memory is torch's peak CUDA allocation of that process on GPU, its peak resident memory (Python,
  torch and DIRECT included) on CPU.

Figures (:mod:`direct_nextaccel.benchmark.figures`): one slice per family (``--figure-volume``, ``--figure-slice``,
``--zoom-box``), with an uncertainty column for each model whose prediction files hold an ``uncertainty`` dataset.

A method that fails (run directory without checkpoint, model that cannot be built, crashing predict, missing,
unreadable or mis-shaped predictions) keeps its row with a one-line reason naming the file; the other rows are
complete. An unreadable data or training file stops the benchmark with one line naming it. Outputs in ``--output``:
``benchmark.md``, ``benchmark.csv``, ``benchmark.json``, ``figure_<family>.png``, ``predictions/<NAME>/`` and
``configs/`` (bound rows). Before ``direct predict`` writes into ``predictions/<NAME>/``, only the ``.h5`` files named
like the data volumes are removed there.
"""

import argparse
import json
import logging
import os
import re
import resource
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from direct_nextaccel.benchmark.memorisation import SAME_SLICE, Memorisation, TrainingTargets, flat_slices, pearson
from direct_nextaccel.benchmark.report import (
    BOUND_MARK,
    METRIC_LABELS,
    FamilyTable,
    MethodRow,
    markdown_report,
    write_reports,
)
from direct_nextaccel.data.fastmri_h5 import rss_reconstruction

logger = logging.getLogger(__name__)

CONTRAST_OF_ACQUISITION = {"AXT1": "T1", "AXT1PRE": "T1", "AXT1POST": "T1", "AXT2": "T2", "AXFLAIR": "FLAIR"}
"""fastMRI brain acquisition -> contrast column of the paper's tables."""
CONTRASTS = ("T1", "T2", "FLAIR")
ZERO_FILLED = "Zero-filled (RSS)"
DEFAULT_FAMILY = "cartesian_y"
DEFAULT_ACCELERATION = 32

_METHOD = re.compile(r"^(?P<name>[^@=]+)(?:@(?P<family>\w+))?=(?P<value>.+)$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,99}$")
NAME_RULE = "1-100 of letters, digits, '_', '.', '+', '-', not starting with '.', '+' or '-'"
"""What a method name may be: it is a folder name under ``predictions/`` and ``configs/``."""
AQVAE_BOUNDS = {"all-levels": [0, 1, 2, 3, 4, 5], "R32-tokens": [0]}
"""Rows of an AQ-VAE bound: name suffix -> ``model.output_levels``."""
MSVQVAE_BOUND = "all-scales"
_CONFIG_AND_CHECKPOINT = re.compile(r"^(?P<config>.+\.ya?ml):(?P<checkpoint>.+)$")
_CHECKPOINT = re.compile(r"^model_(\d+)\.pt$")
_ACQUISITION_TOKEN = re.compile(r"_(AX[A-Z0-9]+)_")
# DIRECT's MRIModelEngine.reconstruct_volumes logs "<i> of <n> volumes reconstructed: <file> (shape = [<slices>, ...])
# in <seconds since the loop started>s." once per volume.
_RECONSTRUCTED = re.compile(r"volumes reconstructed: .* \(shape = \[(\d+)\D.*\) in ([0-9.]+)s")
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(: .*)?$")


@dataclass(frozen=True)
class Method:
    """One method of the benchmark, as given on the command line.

    Attributes
    ----------
    name : str
        Row label and folder name (:data:`NAME_RULE`).
    family : str, optional
        Mask family given with ``NAME@FAMILY``.
    run : str, optional
        ``CONFIG.yaml:CHECKPOINT`` or a run directory, to reconstruct with ``direct predict``.
    predictions : Path, optional
        Folder of existing ``direct predict`` outputs.
    bound : str, optional
        ``CONFIG.yaml:CHECKPOINT`` or run directory of a tokenizer, expanded by :func:`expand_bound` into its bound
        rows.
    overrides : tuple of (str, object)
        Dotted config keys set before ``direct predict`` (the derived config goes to ``configs/<name>.yaml``).
    kind : str
        ``"method"`` or ``"bound"`` (a row that sees the fully sampled data).
    error : str, optional
        Why this row cannot be produced (set by :func:`expand_bound`); it is reported, not run.
    """

    name: str
    family: str | None = None
    run: str | None = None
    predictions: Path | None = None
    bound: str | None = None
    overrides: tuple[tuple[str, object], ...] = ()
    kind: str = "method"
    error: str | None = None


@dataclass(frozen=True)
class Volume:
    """One data file: its path, acquisition, contrast and target shape (slices, H, W)."""

    path: Path
    acquisition: str
    contrast: str
    shape: tuple[int, int, int]


@dataclass
class _Entry:
    """A method on its way through the benchmark: its row, its family and where its predictions are."""

    method: Method
    row: MethodRow
    family: str
    predictions: Path | None = None
    masking: dict | None = None


@dataclass
class FigureRequest:
    """Which slice the figures show and where they zoom (None: first volume, middle slice, centre quarter)."""

    volume: str | None = None
    slice_index: int | None = None
    zoom_box: tuple[int, int, int, int] | None = None


@dataclass
class BenchmarkResult:
    """What :func:`run_benchmark` produced: one table per family, the notes under them and the paths written."""

    tables: list[FamilyTable]
    notes: list[str]
    reports: dict[str, Path]
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def failed(self) -> list[str]:
        """Names of the methods whose row reports a failure."""
        return [row.name for table in self.tables for row in table.rows if row.error is not None]


def check_name(name: str) -> str:
    """``name`` if it is a safe method name (:data:`NAME_RULE`): one path component that cannot climb out of
    ``predictions/`` (``..``), hide (``.x``) or read as an option (``-x``).

    Raises
    ------
    ValueError
        Naming the refused name and the rule.
    """
    if not isinstance(name, str) or not _SAFE_NAME.match(name):
        raise ValueError(f"method name {name!r} is not a safe folder name: use {NAME_RULE}")
    return name


def parse_method(text: str, kind: str) -> Method:
    """``NAME[@FAMILY]=VALUE`` of ``--run`` (``kind="run"``), ``--predictions`` (``"predictions"``) or ``--bound``
    (``"bound"``).

    Raises
    ------
    ValueError
        If ``text`` does not have that form or NAME is not safe (:func:`check_name`).
    """
    if kind not in ("run", "predictions", "bound"):
        raise ValueError(f"kind {kind!r} is neither 'run', 'predictions' nor 'bound'")
    match = _METHOD.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not NAME[@FAMILY]=VALUE (NAME: {NAME_RULE})")
    name = check_name(match["name"])
    if kind == "run":
        return Method(name, match["family"], run=match["value"])
    if kind == "bound":
        return Method(name, match["family"], bound=match["value"], kind="bound")
    return Method(name, match["family"], predictions=Path(match["value"]))


def expand_bound(method: Method, default_family: str) -> list[Method]:
    """The rows of a ``--bound`` tokenizer (see the module docstring); one failed row if its config cannot be one.

    Parameters
    ----------
    method : Method
        With ``bound`` set.
    default_family : str
        Family of an AQ-VAE bound without ``@FAMILY`` (the benchmark's ``--family``).
    """
    from omegaconf import OmegaConf

    from direct_nextaccel.masks.nested import FAMILIES, MASK_NAMES, family_of

    try:
        config, checkpoint = resolve_run(method.bound)
        try:
            loaded = OmegaConf.load(config)
            model_name = str(OmegaConf.select(loaded, "model.model_name", default=""))
            families = OmegaConf.select(loaded, "model.mask_families", default=None)
            families = list(FAMILIES) if families is None else [str(f) for f in families]
            has_masking = OmegaConf.select(loaded, "inference.dataset.transforms.masking") is not None
        except Exception as error:  # OmegaConf and YAML raise many types; the row only needs the message
            raise ValueError(f"config {config} cannot be read: {_one_line(error)}") from error
        run = f"{config}:{checkpoint}"
        if model_name.split(".")[-2:] == ["aqvae", "AQVAE"]:
            family = family_of(method.family or default_family)
            if family not in families:
                raise ValueError(f"the tokenizer of {config} was trained on the families {families}, not {family}")
            common = [("model.mask_families", [family])]
            if has_masking:
                common.append(("inference.dataset.transforms.masking.name", MASK_NAMES[family]))
            return [
                Method(
                    check_name(f"{method.name}-{suffix}"),
                    family,
                    run=run,
                    overrides=(*common, ("model.output_levels", levels)),
                    kind="bound",
                )
                for suffix, levels in AQVAE_BOUNDS.items()
            ]
        if model_name.split(".")[-2:] == ["msvqvae", "MSVQVAE"]:
            return [Method(check_name(f"{method.name}-{MSVQVAE_BOUND}"), method.family, run=run, kind="bound")]
        raise ValueError(
            f"--bound needs a tokenizer config (model_name nextaccel.aqvae.AQVAE or miar.msvqvae.MSVQVAE); {config} "
            f"has {model_name or 'no model_name'}"
        )
    except ValueError as error:
        return [Method(method.name, method.family, kind="bound", error=_one_line(error))]


def resolve_run(value: str) -> tuple[Path, Path]:
    """Config and checkpoint of a ``--run`` value.

    ``CONFIG.yaml:CHECKPOINT`` takes CHECKPOINT as a file or as a run directory; a lone run directory (``direct
    train``'s output folder) gives its ``config.yaml``. A run directory gives its latest ``model_<iteration>.pt``.

    Raises
    ------
    ValueError
        One line naming the missing config or checkpoint.
    """
    match = _CONFIG_AND_CHECKPOINT.match(value)
    config, checkpoint = (
        (Path(match["config"]), Path(match["checkpoint"])) if match else (Path(value) / "config.yaml", Path(value))
    )
    if not checkpoint.exists():
        raise ValueError(f"checkpoint {checkpoint} does not exist")
    if checkpoint.is_dir():
        found = [(int(m[1]), path) for path in checkpoint.iterdir() if (m := _CHECKPOINT.match(path.name))]
        if not found:
            raise ValueError(f"run directory {checkpoint} has no checkpoint (model_<iteration>.pt)")
        checkpoint = max(found)[1]
    if not config.is_file():
        raise ValueError(f"config {config} does not exist")
    return config, checkpoint


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
        raise ValueError(f"config {config} cannot be read: {_one_line(error)}") from error
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


def find_volumes(data: Path, contrasts: Sequence[str] | None = None) -> list[Volume]:
    """The fully sampled fastMRI-layout volumes of ``data`` whose contrast is in ``contrasts`` (default: all).

    Files without ``reconstruction_rss`` (prospectively undersampled) or with an acquisition outside
    :data:`CONTRAST_OF_ACQUISITION` are skipped with one warning.

    Raises
    ------
    ValueError
        If ``data`` is not a folder, holds no such volume, or lacks one of the requested contrasts.
    """
    if not data.is_dir():
        raise ValueError(f"data folder {data} does not exist")
    volumes, skipped = [], []
    for path in sorted(data.glob("*.h5")):
        try:
            with h5py.File(path, "r") as file:
                acquisition = file.attrs.get("acquisition", "")
                acquisition = acquisition.decode() if isinstance(acquisition, bytes) else str(acquisition)
                if not acquisition and (token := _ACQUISITION_TOKEN.search(path.name)):
                    acquisition = token[1]
                if "reconstruction_rss" not in file or acquisition not in CONTRAST_OF_ACQUISITION:
                    skipped.append(f"{path.name} ({acquisition or 'no acquisition'})")
                    continue
                shape = tuple(int(n) for n in file["reconstruction_rss"].shape)
                kspace = file["kspace"].shape if isinstance(file.get("kspace"), h5py.Dataset) else None
        except (OSError, KeyError, ValueError, TypeError, UnicodeDecodeError) as error:
            raise ValueError(f"data file {path} cannot be read as HDF5: {_one_line(error)}") from None
        if kspace is None or len(kspace) != 4 or len(shape) != 3 or kspace[0] != shape[0]:
            raise ValueError(
                f"data file {path} is not in the fastMRI layout: kspace {kspace} (slices, coils, H, W) and "
                f"reconstruction_rss {shape} (slices, H, W) with as many slices"
            )
        volumes.append(Volume(path, acquisition, CONTRAST_OF_ACQUISITION[acquisition], shape))
    if skipped:
        logger.warning("skipped %d file(s) without a fully sampled T1/T2/FLAIR target: %s", len(skipped), skipped)
    present = sorted({volume.contrast for volume in volumes}, key=CONTRASTS.index)
    if not volumes:
        raise ValueError(f"no fully sampled T1/T2/FLAIR fastMRI volume in {data} (skipped: {skipped or 'none'})")
    wanted = list(contrasts) if contrasts else present
    if missing := [contrast for contrast in wanted if contrast not in present]:
        raise ValueError(f"no {'/'.join(missing)} volume in {data} (it has {', '.join(present)})")
    return [volume for volume in volumes if volume.contrast in wanted]


def _one_line(error: BaseException | str) -> str:
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _failure_line(log: Path) -> str | None:
    """The last exception line of a failed child's output, else its last line (DIRECT logs some errors and exits)."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines()] if log.is_file() else []
    lines = [line for line in lines if line]
    return next((line for line in reversed(lines) if _EXCEPTION.match(line)), lines[-1] if lines else None)


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
    command = [
        sys.executable,
        "-m",
        "direct_nextaccel.benchmark.quality",
        str(stats_path),
        str(output),
        "--cfg",
        str(config),
        "--checkpoint",
        str(checkpoint),
        "--data-root",
        str(data),
        "--device",
        device,
        "--num-gpus",
        "0" if device == "cpu" else "1",
        "--num-workers",
        "0",
    ]
    with log_path.open("w") as log:
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if status != 0 or not stats_path.is_file():
        reason = _failure_line(log_path) or f"exit status {status}"
        raise RuntimeError(f"direct predict failed: {_one_line(reason)} (log: {log_path})")
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


def _predict_child(argv: Sequence[str]) -> int:
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


def zero_filled_mask(mask_function: Callable, shape: tuple[int, int], seed_text: str) -> np.ndarray:
    """Bool ``(H, W)`` mask of a DIRECT mask function for one file, seeded with ``seed_text`` as DIRECT's
    ``use_seed: true`` seeds with the file's path (the benchmark's reference passes the file name)."""
    mask = np.asarray(mask_function((*shape, 2), seed=tuple(map(ord, seed_text)))).astype(bool)
    return np.broadcast_to(mask.reshape(mask.shape[-3:-1]), shape)


def aggregate(records: Sequence[dict], metrics: Sequence[str], contrasts: Sequence[str]) -> dict:
    """Metric -> contrast -> mean over the records of that contrast (a string value, e.g. ``n/a``, is kept)."""
    scores: dict[str, dict[str, float | str]] = {}
    for metric in metrics:
        scores[metric] = {}
        for contrast in contrasts:
            values = [record[metric] for record in records if record["contrast"] == contrast]
            texts = [value for value in values if isinstance(value, str)]
            scores[metric][contrast] = texts[0] if texts else float(np.mean(values))
    return scores


def _scores(target: np.ndarray, reconstruction: np.ndarray, metrics: Sequence[str]) -> dict[str, float | str]:
    from direct_nextaccel.metrics import compute_metrics

    with np.errstate(divide="ignore"):  # PSNR of an exact reconstruction is inf, not a warning
        return compute_metrics(target, reconstruction, metrics)


def _read_prediction(
    path: Path, target_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``reconstruction`` (magnitude), ``sampling_mask`` and ``uncertainty`` (None when absent) of one prediction file.

    Raises
    ------
    ValueError
        One line naming the file: unreadable, no or non-numeric ``reconstruction``, wrong shape, non-finite values.
    """
    try:
        with h5py.File(path, "r") as file:
            if not isinstance(file.get("reconstruction"), h5py.Dataset):
                raise ValueError(f"{path} has no 'reconstruction' dataset")
            prediction = file["reconstruction"][()]
            used_mask = file["sampling_mask"][()] if isinstance(file.get("sampling_mask"), h5py.Dataset) else None
            uncertainty = file["uncertainty"][()] if isinstance(file.get("uncertainty"), h5py.Dataset) else None
    except (OSError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"prediction {path} cannot be read as HDF5: {_one_line(error)}") from None
    if not isinstance(prediction, np.ndarray) or prediction.dtype.kind not in "biufc":
        kind = prediction.dtype if isinstance(prediction, np.ndarray) else type(prediction).__name__
        raise ValueError(f"prediction {path}: 'reconstruction' holds {kind}, not numbers")
    if prediction.dtype.kind == "c":
        prediction = np.abs(prediction)
    if prediction.shape != target_shape:
        raise ValueError(
            f"prediction {path.name} has shape {prediction.shape} but the target reconstruction_rss has "
            f"{target_shape}: predict with inference.crop: header"
        )
    if not np.isfinite(prediction).all():
        raise ValueError(f"prediction {path.name} has {int((~np.isfinite(prediction)).sum())} non-finite values")
    return prediction, used_mask, uncertainty


def _same_mask(saved: np.ndarray, mask: np.ndarray, support: np.ndarray) -> bool:
    """Whether every slice of a saved ``sampling_mask`` (..., H, W) equals ``mask`` (H, W) where k-space has data."""
    if saved.shape[-2:] != mask.shape:
        return False
    return all(((slice_mask > 0.5) == mask)[support].all() for slice_mask in saved.reshape(-1, *mask.shape))


def _check_coverage(entry: _Entry, volumes: Sequence[Volume]) -> None:
    if entry.predictions is None or entry.row.error is not None:
        return
    if not entry.predictions.is_dir():
        entry.row.error = f"predictions folder {entry.predictions} does not exist"
        return
    present = {path.name for path in entry.predictions.glob("*.h5")}
    missing = [volume.path.name for volume in volumes if volume.path.name not in present]
    if len(missing) == len(volumes):
        entry.row.error = f"no prediction in {entry.predictions} matches a data volume (e.g. {missing[0]})"
    elif missing:
        entry.row.error = (
            f"{len(missing)} of {len(volumes)} volumes have no prediction in {entry.predictions} (e.g. {missing[0]})"
        )


@dataclass
class Panels:
    """The slices of one family's figure, gathered while scoring: one slice of one volume per method."""

    volume: Volume
    slice_index: int
    target: np.ndarray | None = None
    data_range: float = 0.0
    reconstructions: dict[str, np.ndarray] = field(default_factory=dict)
    uncertainties: dict[str, np.ndarray] = field(default_factory=dict)

    def without(self, names: set[str]) -> "Panels":
        """These panels less the methods in ``names`` (those that failed on a later volume)."""
        return Panels(
            self.volume,
            self.slice_index,
            self.target,
            self.data_range,
            {name: image for name, image in self.reconstructions.items() if name not in names},
            {name: image for name, image in self.uncertainties.items() if name not in names},
        )


def _score_prediction(entry: _Entry, volume: Volume, target: np.ndarray, metrics: Sequence[str]) -> tuple | None:
    """Record one volume's scores for ``entry``; its prediction, saved mask and uncertainty, or None on failure."""
    try:
        prediction, used_mask, uncertainty = _read_prediction(entry.predictions / volume.path.name, target.shape)
        entry.row.volumes.append({**_volume_record(volume), **_scores(target, prediction, metrics)})
    except (OSError, ValueError, KeyError) as error:
        entry.row.error = _one_line(error)
        return None
    entry.row.volumes[-1]["flat_slices"] = flat = flat_slices(prediction, target)
    entry.row.flat_slices += flat
    return prediction, used_mask, uncertainty


def _volume_record(volume: Volume) -> dict[str, object]:
    return {
        "file": volume.path.name,
        "acquisition": volume.acquisition,
        "contrast": volume.contrast,
        "slices": volume.shape[0],
    }


def score_family(
    family: str,
    entries: Sequence[_Entry],
    volumes: Sequence[Volume],
    data: Path,
    masking: dict,
    metrics: Sequence[str],
    panels: Panels | None = None,
    training: TrainingTargets | None = None,
) -> FamilyTable:
    """Score the zero-filled reference and every entry of one family on every volume.

    Parameters
    ----------
    family : str
        Table title.
    entries : sequence of _Entry
        The family's methods; those with an error are listed but not scored.
    volumes : sequence of Volume
        Data files.
    data : Path
        Data folder as given to ``direct predict --data-root`` (DIRECT seeds the models' masks from it; the reference
        is seeded from the file name).
    masking : dict or None
        DIRECT masking config of the zero-filled reference (``build_masking_function`` arguments); None for a family
        outside the nested ones whose runs all failed: nothing is scored.
    metrics : sequence of str
        Metric names.
    panels : Panels, optional
        Filled with the figure's slices of ``panels.volume``.
    training : TrainingTargets, optional
        Training targets of the memorisation diagnostic; None: no diagnostic.

    Returns
    -------
    FamilyTable
        Zero-filled row first.

    Raises
    ------
    ValueError
        A data file cannot be read (named), or the training matrix would be too large.
    """
    from direct.common.subsample import build_masking_function
    from tqdm import tqdm

    reference = _Entry(Method(ZERO_FILLED), MethodRow(ZERO_FILLED, kind="reference"), family)
    contrasts = sorted({volume.contrast for volume in volumes}, key=CONTRASTS.index)
    table = FamilyTable(
        family=family,
        acceleration="/".join(f"{a:g}" for a in (masking or {}).get("accelerations", [])) or "?",
        metrics=list(metrics),
        contrasts=contrasts,
        volume_counts={c: sum(v.contrast == c for v in volumes) for c in contrasts},
        rows=[reference.row, *(entry.row for entry in entries)],
        training=None if training is None else training.describe(),
    )
    for entry in entries:
        entry.row.kind = entry.method.kind
    if masking is None:
        reference.row.error = f"no run of family {family} succeeded, so its mask is unknown"
        return table
    try:
        mask_function = build_masking_function(**masking)
    except Exception as error:  # DIRECT and plugin mask functions raise many types; the row says which and why
        reference.row.error = f"mask {masking.get('name')} cannot be built: {_one_line(error)}"
        return table
    for entry in entries:
        _check_coverage(entry, volumes)
    mask_differs: set[str] = set()
    memorisation = {entry.row.name: Memorisation() for entry in (reference, *entries)}
    targets_memorisation, in_training = Memorisation(), 0
    for volume in tqdm(volumes, desc=f"scoring {family}", unit="volume", disable=None):
        try:
            with h5py.File(volume.path, "r") as file:
                target = np.asarray(file["reconstruction_rss"][()])
                kspace = np.asarray(file["kspace"][()])  # S, C, H, W
            if target.dtype.kind not in "biuf" or kspace.dtype.kind not in "biufc":
                raise ValueError(f"reconstruction_rss is {target.dtype} and kspace {kspace.dtype}, not numbers")
        except (OSError, KeyError, ValueError, TypeError) as error:
            raise ValueError(f"data file {volume.path} cannot be read: {_one_line(error)}") from None
        mask = zero_filled_mask(mask_function, kspace.shape[-2:], volume.path.name)
        support = np.abs(kspace).sum(axis=(0, 1)) > 0  # DIRECT zeroes the mask where fastMRI k-space is padding
        zero_filled = rss_reconstruction(kspace * mask, target.shape[-2:])
        reference.row.volumes.append({**_volume_record(volume), **_scores(target, zero_filled, metrics)})
        reconstructions = {reference.row.name: (reference, zero_filled)}
        shown = panels is not None and volume == panels.volume
        if shown:
            panels.target, panels.data_range = target[panels.slice_index], float(target.max())
            panels.reconstructions[ZERO_FILLED] = zero_filled[panels.slice_index]
        for entry in entries:
            if entry.row.error is not None or (scored := _score_prediction(entry, volume, target, metrics)) is None:
                continue
            prediction, used_mask, uncertainty = scored
            reconstructions[entry.row.name] = (entry, prediction)
            if used_mask is not None and not _same_mask(used_mask, mask, support):
                path_mask = zero_filled_mask(mask_function, kspace.shape[-2:], str(data / volume.path.name))
                if not _same_mask(used_mask, path_mask, support):
                    mask_differs.add(entry.row.name)
            if shown:
                panels.reconstructions[entry.row.name] = prediction[panels.slice_index]
                if uncertainty is not None and uncertainty.shape == target.shape:
                    panels.uncertainties[entry.row.name] = uncertainty[panels.slice_index]
                elif uncertainty is not None:
                    entry.row.warnings.append(f"uncertainty shape {uncertainty.shape} differs from {target.shape}")
        if training is not None:
            closest = training.closest(target)
            targets_memorisation.add(np.ones(target.shape[0]), closest.correlation)
            in_training += int((closest.correlation >= SAME_SLICE).sum())
            for name, (entry, image) in reconstructions.items():
                own, closest = pearson(image, target), training.closest(image)
                memorisation[name].add(own, closest.correlation)
                entry.row.volumes[-1].update(
                    corr_own=own.tolist(),
                    corr_train_max=closest.correlation.tolist(),
                    closest_training_slice=closest.labels,
                )
    if training is not None:
        table.target_memorisation = {**targets_memorisation.summary(), "in_training": in_training}
    for entry in (reference, *entries):
        if entry.row.error is None:
            entry.row.scores = aggregate(entry.row.volumes, metrics, contrasts)
            if training is not None:
                entry.row.memorisation = memorisation[entry.row.name].summary()
                if undefined := entry.row.memorisation["undefined"]:
                    entry.row.warnings.append(
                        f"{undefined} flat slice(s) have no correlation and are left out of the memorisation columns"
                    )
            if entry.row.flat_slices:
                slices = sum(int(record["slices"]) for record in entry.row.volumes)
                entry.row.warnings.append(
                    f"{entry.row.flat_slices} of {slices} slices are flat where the target is not (standard deviation "
                    "at most 1% of the target's, e.g. all zero): such images can score well (SSIM of an empty "
                    "image), so this row is never bold"
                )
                logger.warning("%s: %d flat slice(s)", entry.row.name, entry.row.flat_slices)
        else:
            entry.row.volumes = []
        if entry.row.name in mask_differs:
            entry.row.warnings.append(
                "its saved sampling_mask is neither the zero-filled reference's nor DIRECT's draw for this data path "
                "(another mask family, acceleration or --data-root spelling)"
            )
            logger.warning("%s: sampling mask differs from the zero-filled reference's", entry.row.name)
    return table


def _prepare(method: Method, data: Path, output: Path, default_family: str, device: str) -> _Entry:
    """Family, masking and predictions folder of a method; runs ``direct predict`` for ``--run`` methods and bounds."""
    from direct_nextaccel.masks.nested import family_of

    family = family_of(method.family) if method.family else None
    entry = _Entry(
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
        if method.overrides:
            config = derived_config(config, method.overrides, output / "configs" / f"{check_name(method.name)}.yaml")
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
        entry.row.error = _one_line(error)
        logger.error("%s failed: %s", method.name, entry.row.error)
    return entry


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
        raise ValueError(f"config {config} cannot be derived: {_one_line(error)}") from error
    destination.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(loaded, destination)
    return destination


def run_benchmark(
    data: Path,
    methods: Sequence[Method],
    output: Path,
    *,
    metrics: Sequence[str] = tuple(METRIC_LABELS),
    contrasts: Sequence[str] | None = None,
    family: str = DEFAULT_FAMILY,
    acceleration: int = DEFAULT_ACCELERATION,
    device: str = "cpu",
    figure: FigureRequest | None = None,
    training_root: Path | None = None,
) -> BenchmarkResult:
    """Reconstruct (``--run``, ``--bound``) and score every method, write the tables and one figure per family.

    Parameters
    ----------
    data : Path
        Folder of fastMRI-layout ``.h5`` volumes with ``reconstruction_rss``.
    methods : sequence of Method
        Rows, in order (names safe and unique; a ``bound`` method stands for its rows, :func:`expand_bound`).
    output : Path
        Folder of the reports, figures and ``predictions/<NAME>``.
    metrics : sequence of str
        Keys of :data:`direct_nextaccel.metrics.METRICS`, in column order.
    contrasts : sequence of str, optional
        Subset of :data:`CONTRASTS`; default those present in ``data``.
    family : str
        Family of methods with neither ``@FAMILY`` nor a config masking.
    acceleration : int
        Acceleration of the zero-filled reference of a family without a run config.
    device : str
        ``cpu`` or a CUDA device, for ``direct predict``.
    figure : FigureRequest, optional
        Figure settings; None draws no figure.
    training_root : Path, optional
        Training folder of the memorisation diagnostic (fastMRI layout, ``reconstruction_rss``); None: none.

    Returns
    -------
    BenchmarkResult
        Tables, report paths and figure paths.

    Raises
    ------
    ValueError
        Bad input that concerns every method (data folder or file, training folder or file, metric, contrast,
        family, unsafe or duplicate name, figure slice).
    """
    from direct_nextaccel.masks.nested import MASK_NAMES, family_of

    if unknown := [metric for metric in metrics if metric not in METRIC_LABELS]:
        raise ValueError(f"unknown metric(s) {unknown}; known: {', '.join(METRIC_LABELS)}")
    if unknown := [contrast for contrast in contrasts or () if contrast not in CONTRASTS]:
        raise ValueError(f"unknown contrast(s) {unknown}; known: {', '.join(CONTRASTS)}")
    for method in methods:
        check_name(method.name)  # before anything is written: the name becomes a folder under --output
    family = family_of(family)
    for method in methods:
        if method.family:
            family_of(method.family)
    rows = [row for method in methods for row in (expand_bound(method, family) if method.bound else [method])]
    names = [row.name for row in rows]
    if duplicates := sorted({name for name in names if names.count(name) > 1}):
        raise ValueError(f"method name(s) {duplicates} given more than once")
    volumes = find_volumes(data, contrasts)
    if figure is not None:
        _panels(figure, volumes)  # bad figure settings fail before any prediction is made
    training = None if training_root is None else TrainingTargets.read(training_root)

    entries = [_prepare(row, data, output, family, device) for row in rows]
    tables, figures = [], {}
    for name in list(dict.fromkeys(entry.family for entry in entries)) or [family]:
        members = [entry for entry in entries if entry.family == name]
        working = [e for e in members if e.masking is not None and e.row.error is None]
        working.sort(key=lambda e: e.method.kind == "bound")  # the methods' own mask first, a bound's if only bounds
        masking = working[0].masking if working else None
        if masking is None and name in MASK_NAMES:
            masking = {"name": MASK_NAMES[name], "accelerations": [acceleration]}
        panels = _panels(figure, volumes) if figure is not None else None
        table = score_family(name, members, volumes, data, masking, metrics, panels, training)
        table.memory = (
            "torch's peak CUDA allocation of the direct predict process"
            if device != "cpu"
            else "peak resident memory of the direct predict process (Python, torch and DIRECT included)"
        )
        tables.append(table)
        if panels is not None and panels.target is not None:
            figures[name] = _draw(output / f"figure_{name}.png", table, panels, figure.zoom_box)
    notes = _notes(tables, device)
    reports = write_reports(tables, output, _settings(data, rows, metrics, device, training_root), notes)
    return BenchmarkResult(tables, notes, reports, figures)


def _panels(figure: FigureRequest, volumes: Sequence[Volume]) -> Panels:
    """Empty panels for the requested volume (default the first) and slice (default the middle one).

    Raises
    ------
    ValueError
        If the volume is not benchmarked, or the slice or zoom box lies outside it.
    """
    from direct_nextaccel.benchmark.figures import check_zoom_box

    names = [volume.path.name for volume in volumes]
    if figure.volume is not None and figure.volume not in names:
        raise ValueError(f"figure volume {figure.volume} is not one of the benchmarked volumes {names}")
    shown = volumes[names.index(figure.volume)] if figure.volume else volumes[0]
    slice_index = shown.shape[0] // 2 if figure.slice_index is None else figure.slice_index
    if not 0 <= slice_index < shown.shape[0]:
        raise ValueError(f"figure slice {slice_index} is outside {shown.path.name}'s {shown.shape[0]} slices")
    if figure.zoom_box is not None:
        check_zoom_box(figure.zoom_box, shown.shape[-2:])
    return Panels(shown, slice_index)


def _draw(path: Path, table: FamilyTable, panels: Panels, zoom_box: Sequence[int] | None) -> Path:
    """The family's comparison figure (methods that failed left out), saved as PNG at ``path``."""
    from direct_nextaccel.benchmark.figures import comparison_figure

    panels = panels.without({row.name for row in table.rows if row.error is not None})
    bounds = {row.name for row in table.rows if row.kind == "bound"}
    panels.reconstructions = {(n + BOUND_MARK if n in bounds else n): v for n, v in panels.reconstructions.items()}
    panels.uncertainties = {(n + BOUND_MARK if n in bounds else n): v for n, v in panels.uncertainties.items()}
    title = f"{table.family}, R = {table.acceleration}: {panels.volume.path.name}, slice {panels.slice_index}"
    image = comparison_figure(
        panels.target,
        panels.reconstructions,
        data_range=panels.data_range,
        uncertainties=panels.uncertainties,
        zoom_box=zoom_box,
        title=title,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def _settings(
    data: Path, methods: Sequence[Method], metrics: Sequence[str], device: str, training_root: Path | None
) -> dict:
    import direct
    import torch

    return {
        "data": str(data),
        "device": device,
        "metrics": list(metrics),
        "training_root": training_root and str(training_root),
        "contrast_of_acquisition": CONTRAST_OF_ACQUISITION,
        "methods": {
            m.name: {
                "family": m.family,
                "kind": m.kind,
                "run": m.run,
                "overrides": dict(m.overrides),
                "predictions": m.predictions and str(m.predictions),
            }
            for m in methods
        },
        "direct": direct.__version__,
        "torch": torch.__version__,
    }


def _notes(tables: Sequence[FamilyTable], device: str) -> list[str]:
    from direct_nextaccel.metrics import WEIGHTS_UNAVAILABLE

    notes = [
        "Metrics per volume with fastMRI's conventions (data range = maximum of the target volume), mean over the "
        "volumes of each contrast; T1 = AXT1, AXT1PRE, AXT1POST; T2 = AXT2; FLAIR = AXFLAIR.",
        f"{ZERO_FILLED}: root-sum-of-squares of the k-space under the family's mask, seeded from the file name so "
        "that it does not depend on where the data sits (DIRECT's use_seed seeds the models' masks from the full "
        "path given to --data-root: with a mask function that uses its whole seed, that is another draw of the same "
        "family and acceleration).",
        f"s/slice ({device}): DIRECT's own clock of its reconstruction loop (data loading, transforms, sensitivity "
        "estimation, network, cropping) divided by the slices; start-up and checkpoint loading excluded. "
        "— = not run by the benchmark (existing predictions, zero-filled).",
    ]
    if any(row.kind == "bound" for table in tables for row in table.rows):
        notes.append(
            f"{BOUND_MARK.strip()}: a tokenizer's ceiling, not a method: direct predict of the tokenizer, which "
            "decodes the fully sampled slice from its own tokens (-all-levels: the tokens of all six levels; "
            "-R32-tokens: the R = 32 tokens alone; -all-scales: every scale of the MSVQ-VAE). It sees the fully "
            "sampled data, so it is never bold; it bounds the models that decode through that tokenizer (before any "
            "data-consistency step)."
        )
    if any(WEIGHTS_UNAVAILABLE in row.scores.get(m, {}).values() for t in tables for row in t.rows for m in t.metrics):
        notes.append(
            f"{WEIGHTS_UNAVAILABLE}: the metric's pretrained weights are not on this machine "
            "(see `direct-nextaccel doctor`; point --weights-dir or $DIRECT_NEXTACCEL_WEIGHTS_DIR at them)."
        )
    return notes


def _method_type(kind: str) -> Callable[[str], Method]:
    def parse(text: str) -> Method:
        try:
            return parse_method(text, kind)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    parse.__name__ = kind
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``direct-nextaccel benchmark``."""
    parser.epilog = (
        f"NAME names predictions/NAME/ and configs/NAME.yaml under --output: {NAME_RULE}. Example, one family with "
        "its tokenizer's bounds and the memorisation columns: direct-nextaccel benchmark --data data/val --output "
        "bench_radial --family radial --run varnet=runs/varnet_radial nextaccel=runs/nextaccel_radial --bound "
        "aqvae=runs/aqvae --training-root data/train"
    )
    parser.add_argument(
        "--run",
        dest="methods",
        action="extend",
        nargs="+",
        default=[],
        type=_method_type("run"),
        metavar="NAME[@FAMILY]=CONFIG.yaml:CHECKPOINT|RUN_DIR",
        help="a DIRECT run to reconstruct the data with direct predict (checkpoint file or run directory)",
    )
    parser.add_argument(
        "--predictions",
        dest="methods",
        action="extend",
        nargs="+",
        type=_method_type("predictions"),
        metavar="NAME[@FAMILY]=DIR",
        help="a folder of existing direct predict outputs (one .h5 with 'reconstruction' per data file)",
    )
    parser.add_argument(
        "--bound",
        dest="methods",
        action="extend",
        nargs="+",
        type=_method_type("bound"),
        metavar="NAME[@FAMILY]=CONFIG.yaml:CHECKPOINT|RUN_DIR",
        help="a tokenizer's ceiling rows, marked (bound) and never bold (they see the fully sampled data): an AQ-VAE "
        "(nextaccel.aqvae.AQVAE) gives NAME-all-levels (model.output_levels: all six) and NAME-R32-tokens ([0]), "
        "both with model.mask_families: [FAMILY] (@FAMILY, else --family) and that family's nested mask; an MSVQ-VAE "
        "(miar.msvqvae.MSVQVAE) gives NAME-all-scales. The configs run are saved in OUTPUT/configs/",
    )
    parser.add_argument(
        "--training-root",
        type=Path,
        metavar="DIR",
        help="fastMRI-layout training files: adds the memorisation columns (mean Pearson correlation of each "
        "slice with its own target and with the closest training target, resampled bilinearly if sizes differ; "
        "slices closer to a training slice than to their own target)",
    )
    parser.add_argument("--data", type=Path, required=True, metavar="DIR", help="fastMRI-layout .h5 volumes")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="reports, figures, predictions")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=list(METRIC_LABELS),
        choices=list(METRIC_LABELS),
        metavar="METRIC",
        help=f"columns, default all: {', '.join(METRIC_LABELS)}",
    )
    parser.add_argument("--contrasts", nargs="+", choices=CONTRASTS, help="default: those in --data")
    parser.add_argument(
        "--family",
        default=DEFAULT_FAMILY,
        help=f"family of methods without @FAMILY or config masking (default {DEFAULT_FAMILY}); "
        "cartesian_x, cartesian_y, gaussian2d or radial",
    )
    parser.add_argument(
        "--acceleration",
        type=int,
        default=DEFAULT_ACCELERATION,
        metavar="R",
        help=f"R of the zero-filled reference of a family without a run config (default {DEFAULT_ACCELERATION})",
    )
    parser.add_argument("--device", default="cpu", help="device of direct predict: cpu (default) or cuda")
    parser.add_argument("--weights-dir", type=Path, metavar="DIR", help="local LPIPS/DISTS weights (sets the env var)")
    parser.add_argument("--figure-volume", metavar="FILE", help="data file shown in the figures (default the first)")
    parser.add_argument("--figure-slice", type=int, metavar="INDEX", help="slice shown (default the middle one)")
    parser.add_argument(
        "--zoom-box", type=int, nargs=4, metavar=("TOP", "LEFT", "HEIGHT", "WIDTH"), help="default centre quarter"
    )
    parser.add_argument("--no-figures", dest="figures", action="store_false", help="write no figure")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the tables; 2 for a bad input, 1 if a method failed, else 0."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from direct_nextaccel.weights import WEIGHTS_DIR_ENV

    try:
        if not args.methods:
            raise ValueError("give at least one --run, --predictions or --bound method")
        if args.weights_dir is not None:
            if not args.weights_dir.is_dir():
                raise ValueError(f"weights folder {args.weights_dir} does not exist")
            os.environ[WEIGHTS_DIR_ENV] = str(args.weights_dir)
        figure = FigureRequest(args.figure_volume, args.figure_slice, args.zoom_box) if args.figures else None
        result = run_benchmark(
            args.data,
            args.methods,
            args.output,
            metrics=args.metrics,
            contrasts=args.contrasts,
            family=args.family,
            acceleration=args.acceleration,
            device=args.device,
            figure=figure,
            training_root=args.training_root,
        )
    except (ValueError, OSError) as error:
        print(f"direct-nextaccel benchmark: error: {_one_line(error)}", file=sys.stderr)
        return 2
    print(markdown_report(result.tables, result.notes))
    for path in [*result.reports.values(), *result.figures.values()]:
        print(path)
    if result.failed:
        print(f"failed: {', '.join(result.failed)} (reasons in their rows)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_predict_child(sys.argv[1:]))

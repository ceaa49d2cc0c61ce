"""Scoring in ``direct-nextaccel benchmark``: the data volumes, their targets, each method's predictions read and
scored per volume, the zero-filled reference, and one :class:`~direct_nextaccel.benchmark.report.FamilyTable` per
mask family (:func:`score_family`).

- **Target**: the ``reconstruction_rss`` of every data file (fastMRI layout). A prediction must have exactly its
  shape (DIRECT's ``inference.crop: header``); otherwise that method fails with both shapes named.
- **Metrics**: per volume with fastMRI's conventions (:mod:`direct_nextaccel.metrics`: data range = maximum of the
  target volume), then the mean over the volumes of each contrast. Contrast from the ``acquisition`` attr (or the
  file name's token): AXT1, AXT1PRE and AXT1POST -> T1, AXT2 -> T2, AXFLAIR -> FLAIR (:data:`CONTRAST_OF_ACQUISITION`).
  LPIPS and DISTS cells read ``n/a (weights unavailable)`` when their pretrained weights are not on disk.
- **Zero-filled reference**: root-sum-of-squares of the k-space under the family's mask (the inference masking of
  the family's first successful method, else the nested family mask at ``--acceleration``), seeded from the file
  *name* (``tuple(map(ord, name))``), so that it does not depend on where the data sits. DIRECT's ``use_seed: true``
  seeds from the full path as given to ``--data-root`` (``tuple(map(ord, str(data_root / name)))``): a mask function
  that uses its whole seed gives the models another draw of the same family and R than the reference, which the
  notes say. A saved ``sampling_mask`` that is neither draw is flagged on its row.
- **Flat predictions**: a predicted slice whose standard deviation is at most 1% of its (non-flat) target's (all
  zero, constant) is counted on its row with a warning, and such a row is never bold (an empty image gets a
  deceptively good SSIM).
- **Memorisation** (a training folder): per method, the mean Pearson correlation of each slice with its own target
  and with the closest training slice, and how many slices are closer to a training slice
  (:mod:`direct_nextaccel.benchmark.memorisation`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from direct_nextaccel.benchmark.memorisation import SAME_SLICE, Memorisation, TrainingTargets, flat_slices, pearson
from direct_nextaccel.benchmark.quality.methods import Entry, Method
from direct_nextaccel.benchmark.report import FamilyTable, MethodRow
from direct_nextaccel.core.direct_runs import one_line
from direct_nextaccel.data.fastmri_h5 import rss_reconstruction

logger = logging.getLogger(__name__)

CONTRAST_OF_ACQUISITION = {"AXT1": "T1", "AXT1PRE": "T1", "AXT1POST": "T1", "AXT2": "T2", "AXFLAIR": "FLAIR"}
"""fastMRI brain acquisition -> contrast column of the paper's tables."""
CONTRASTS = ("T1", "T2", "FLAIR")
ZERO_FILLED = "Zero-filled (RSS)"
_ACQUISITION_TOKEN = re.compile(r"_(AX[A-Z0-9]+)_")


@dataclass(frozen=True)
class Volume:
    """One data file: its path, acquisition, contrast and target shape (slices, H, W)."""

    path: Path
    acquisition: str
    contrast: str
    shape: tuple[int, int, int]


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
            raise ValueError(f"data file {path} cannot be read as HDF5: {one_line(error)}") from None
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
        raise ValueError(f"prediction {path} cannot be read as HDF5: {one_line(error)}") from None
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


def _check_coverage(entry: Entry, volumes: Sequence[Volume]) -> None:
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

    def without(self, names: set[str]) -> Panels:
        """These panels less the methods in ``names`` (those that failed on a later volume)."""
        return Panels(
            self.volume,
            self.slice_index,
            self.target,
            self.data_range,
            {name: image for name, image in self.reconstructions.items() if name not in names},
            {name: image for name, image in self.uncertainties.items() if name not in names},
        )


def _score_prediction(entry: Entry, volume: Volume, target: np.ndarray, metrics: Sequence[str]) -> tuple | None:
    """Record one volume's scores for ``entry``; its prediction, saved mask and uncertainty, or None on failure."""
    try:
        prediction, used_mask, uncertainty = _read_prediction(entry.predictions / volume.path.name, target.shape)
        entry.row.volumes.append({**_volume_record(volume), **_scores(target, prediction, metrics)})
    except (OSError, ValueError, KeyError) as error:
        entry.row.error = one_line(error)
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
    entries: Sequence[Entry],
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
    entries : sequence of Entry
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

    reference = Entry(Method(ZERO_FILLED), MethodRow(ZERO_FILLED, kind="reference"), family)
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
    try:
        if masking is None:
            raise ValueError(f"no run of family {family} succeeded, so its mask is unknown")
        try:
            mask_function = build_masking_function(**masking)
        except Exception as error:  # DIRECT and plugin mask functions raise many types; the row says which and why
            raise ValueError(f"mask {masking.get('name')} cannot be built: {one_line(error)}") from None
    except ValueError as error:  # nothing of the family can be scored: every row says why, none is left without scores
        reference.row.error = str(error)
        for entry in entries:
            entry.row.error = entry.row.error or f"not scored: {error}"
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
            raise ValueError(f"data file {volume.path} cannot be read: {one_line(error)}") from None
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

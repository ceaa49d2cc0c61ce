"""Memorisation diagnostic of the benchmark (``--training-root``): does a reconstruction look more like some training
slice than like its own target?

A tokenizer trained on few subjects can decode held-out data into *training* anatomy: plausible structure that is
not the patient's, which SSIM can reward. For every slice a method reconstructs, this module computes

- ``own``: the Pearson correlation of the magnitude reconstruction with its own target (``reconstruction_rss``);
- ``closest training``: the largest Pearson correlation with the target of any slice of any training file (all
  contrasts), and which slice that is;

and per method the mean of both and the number of slices whose closest training slice correlates more than their
own target. The targets themselves are scored the same way (how close the held-out anatomy already is to the
training set: the level a perfect reconstruction would show).

Protocol:

- **Images**: the ``reconstruction_rss`` of every ``.h5`` of the training folder (fastMRI layout), i.e. the same
  header crop as the benchmark's targets and the predictions (``inference.crop: header``).
- **Sizes**: a training volume whose slices differ in size from the validation slice is resampled to it, per slice,
  with bilinear interpolation (``torch.nn.functional.interpolate``, ``align_corners=False``, antialiased when
  shrinking): the crops are assumed to cover the same field of view. Pearson correlation ignores intensity scale
  and offset, so no intensity normalisation is needed.
- **Cost**: each training slice is centred and scaled to unit norm once per size (a float32 ``N x HW`` matrix,
  ``--training-root`` with N slices), then one matrix product per validation volume and method gives every
  correlation. The matrix is refused above :data:`MAX_MATRIX_BYTES`.
- **Flat images** (zero variance): their correlation is undefined. A flat training slice is left out of the matrix
  (it counts in ``skipped``); a flat reconstruction slice gets NaN and is left out of the means and the count
  (the row says how many).
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

logger = logging.getLogger(__name__)

MAX_MATRIX_BYTES = 8 * 2**30
"""Largest normalised training matrix (float32) held in memory: 8 GiB."""
SAME_SLICE = 0.9999
"""A validation target whose closest training slice correlates at least this much is taken to be that slice."""
TIE = 1e-5
"""A slice counts as closer to a training slice only if that correlation exceeds its own by more than this (the
float32 matrix product's rounding): an exact copy of its own target that is also a training slice is a tie."""


def normalised_rows(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``images`` (N, ...) flattened, centred and scaled to unit Euclidean norm, in float32.

    Returns
    -------
    rows : np.ndarray
        (N, P) float32; the dot product of two rows is their Pearson correlation. A flat row (zero variance) is all
        NaN.
    flat : np.ndarray
        Bool (N,), True for the flat rows.
    """
    rows = np.abs(images).reshape(images.shape[0], -1).astype(np.float64)
    scale = rows.max(axis=1, initial=0.0)
    rows -= rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1)
    flat = norms <= 1e-9 * np.sqrt(rows.shape[1]) * scale  # rounding noise of a constant row; all zero: 0 <= 0
    with np.errstate(invalid="ignore", divide="ignore"):
        rows /= norms[:, None]
    rows[flat] = np.nan
    return rows.astype(np.float32), flat


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-slice Pearson correlation of the magnitudes of two (S, H, W) stacks; NaN where either slice is flat."""
    rows_a, _ = normalised_rows(a)
    rows_b, _ = normalised_rows(b)
    return np.sum(rows_a.astype(np.float64) * rows_b, axis=1)


def resample(volume: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(S, h, w) -> (S, *shape) by bilinear interpolation (antialiased when shrinking); unchanged if already there."""
    if tuple(volume.shape[-2:]) == tuple(shape):
        return volume
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]  # 1, S, h, w
    shrinking = shape[0] < volume.shape[-2] or shape[1] < volume.shape[-1]
    resized = F.interpolate(tensor, size=tuple(shape), mode="bilinear", align_corners=False, antialias=shrinking)
    return resized[0].numpy()


@dataclass(frozen=True)
class Closest:
    """Closest training slice of each of S images: correlation (NaN for a flat image) and the slice's label."""

    correlation: np.ndarray
    labels: list[str | None]


@dataclass
class TrainingTargets:
    """The targets of a training folder, normalised once per image size for :meth:`closest`.

    Attributes
    ----------
    root : Path
        The folder.
    volumes : list of (str, np.ndarray)
        File name and ``reconstruction_rss`` (S, H, W) of each file, as read.
    """

    root: Path
    volumes: list[tuple[str, np.ndarray]]
    max_bytes: int = MAX_MATRIX_BYTES
    _matrices: dict[tuple[int, int], tuple[np.ndarray, list[str], int]] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, root: Path, max_bytes: int = MAX_MATRIX_BYTES) -> "TrainingTargets":
        """Read every ``.h5`` of ``root`` that has a ``reconstruction_rss``.

        Raises
        ------
        ValueError
            One line naming the folder (missing, no usable file) or the file (unreadable, target not (S, H, W) real
            and finite).
        """
        if not root.is_dir():
            raise ValueError(f"training folder {root} does not exist")
        volumes, skipped = [], []
        for path in sorted(root.glob("*.h5")):
            try:
                with h5py.File(path, "r") as file:
                    if "reconstruction_rss" not in file:
                        skipped.append(path.name)
                        continue
                    target = file["reconstruction_rss"][()]
            except (OSError, KeyError, ValueError, TypeError) as error:
                message = " ".join(str(error).split())
                raise ValueError(f"training file {path} cannot be read as HDF5: {message}") from None
            if target.ndim != 3 or target.dtype.kind not in "fiuc":
                raise ValueError(
                    f"training file {path}: reconstruction_rss has shape {target.shape} and dtype {target.dtype}, "
                    "not (slices, H, W) numbers"
                )
            if not np.isfinite(target).all():
                raise ValueError(f"training file {path}: reconstruction_rss has non-finite values")
            volumes.append((path.name, np.abs(target).astype(np.float32)))
        if skipped:
            logger.warning("training files without reconstruction_rss, left out of the diagnostic: %s", skipped)
        if not volumes:
            raise ValueError(f"training folder {root} has no .h5 file with a reconstruction_rss")
        return cls(root, volumes, max_bytes)

    @property
    def slices(self) -> int:
        """Number of training slices read."""
        return sum(volume.shape[0] for _, volume in self.volumes)

    def describe(self) -> str:
        """One line: how many slices of how many files, and their sizes."""
        sizes = sorted({tuple(volume.shape[-2:]) for _, volume in self.volumes})
        text = " ".join(f"{h}x{w}" for h, w in sizes)
        return f"{self.slices} slices of {len(self.volumes)} files in {self.root} ({text})"

    def matrix(self, shape: tuple[int, int]) -> tuple[np.ndarray, list[str], int]:
        """Normalised training matrix for validation slices of ``shape``: (N, H*W) float32, row labels
        ``"<file>[<slice>]"``, and how many flat training slices were left out. Built once per shape.

        Raises
        ------
        ValueError
            If the matrix would exceed ``max_bytes``.
        """
        shape = (int(shape[0]), int(shape[1]))
        if shape in self._matrices:
            return self._matrices[shape]
        needed = self.slices * shape[0] * shape[1] * 4
        if needed > self.max_bytes:
            raise ValueError(
                f"--training-root {self.root} holds {self.slices} slices: their {shape[0]}x{shape[1]} correlation "
                f"matrix needs {needed / 2**30:.1f} GiB, over the {self.max_bytes / 2**30:.1f} GiB limit; give a "
                "folder with fewer training files"
            )
        blocks, labels, skipped = [], [], 0
        for name, volume in self.volumes:
            rows, flat = normalised_rows(resample(volume, shape))
            blocks.append(rows[~flat])
            labels += [f"{name}[{index}]" for index in np.flatnonzero(~flat)]
            skipped += int(flat.sum())
        matrix = np.concatenate(blocks) if blocks else np.zeros((0, shape[0] * shape[1]), np.float32)
        if skipped:
            logger.warning("%d flat training slice(s) left out of the memorisation diagnostic", skipped)
        self._matrices[shape] = (matrix, labels, skipped)
        return self._matrices[shape]

    def closest(self, images: np.ndarray) -> Closest:
        """Largest correlation of each image (S, H, W) with any training slice, and that slice's label.

        NaN and None for a flat image, or when every training slice is flat.
        """
        matrix, labels, _ = self.matrix(images.shape[-2:])
        rows, flat = normalised_rows(images)
        if matrix.shape[0] == 0:
            return Closest(np.full(images.shape[0], np.nan), [None] * images.shape[0])
        correlations = np.nan_to_num(rows) @ matrix.T  # S, N: every correlation in one product
        best = correlations.argmax(axis=1)
        values = correlations[np.arange(len(best)), best].astype(np.float64)
        values[flat] = np.nan
        return Closest(values, [None if f else labels[i] for f, i in zip(flat, best, strict=True)])


@dataclass
class Memorisation:
    """Per-slice correlations of one method (or of the targets) collected over the volumes of one family."""

    own: list[float] = field(default_factory=list)
    closest: list[float] = field(default_factory=list)

    def add(self, own: np.ndarray, closest: np.ndarray) -> None:
        """Append one volume's per-slice values."""
        self.own += [float(v) for v in own]
        self.closest += [float(v) for v in closest]

    def summary(self) -> dict[str, float | int]:
        """``own`` and ``closest_training`` (means over the slices where both are defined),
        ``closer_to_training`` (slices whose closest training slice correlates more than their target, by more
        than :data:`TIE`),
        ``slices`` (defined slices) and ``undefined`` (flat slices)."""
        own, closest = np.asarray(self.own, np.float64), np.asarray(self.closest, np.float64)
        defined = np.isfinite(own) & np.isfinite(closest)
        count = int(defined.sum())
        return {
            "own": float(own[defined].mean()) if count else float("nan"),
            "closest_training": float(closest[defined].mean()) if count else float("nan"),
            "closer_to_training": int((closest[defined] > own[defined] + TIE).sum()),
            "slices": count,
            "undefined": int((~defined).sum()),
        }


def volume_correlations(
    training: TrainingTargets, prediction: np.ndarray, target: np.ndarray
) -> tuple[np.ndarray, Closest]:
    """Own-target correlation (S,) and closest training slices of one predicted volume (S, H, W)."""
    return pearson(prediction, target), training.closest(prediction)


def flat_slices(prediction: np.ndarray, target: np.ndarray, fraction: float = 0.01) -> int:
    """Slices of ``prediction`` (S, H, W) that are flat where the target is not: standard deviation at most
    ``fraction`` of the target slice's (an all-zero or constant output, or one scaled down to nothing)."""
    spread = np.abs(prediction).reshape(prediction.shape[0], -1).std(axis=1)
    reference = np.abs(target).reshape(target.shape[0], -1).std(axis=1)
    return int(((reference > 0) & (spread <= fraction * reference)).sum())


__all__ = [
    "MAX_MATRIX_BYTES",
    "SAME_SLICE",
    "TIE",
    "Closest",
    "Memorisation",
    "TrainingTargets",
    "flat_slices",
    "normalised_rows",
    "pearson",
    "resample",
    "volume_correlations",
]

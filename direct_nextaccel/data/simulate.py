"""Simulate multi-coil k-space from real magnitude brain volumes, so training data has real anatomy.

Only magnitude images of the TCGA/BraTS subjects are public here, so each slice gets what a scanner adds before the
Fourier transform: a smooth phase and receive-coil sensitivities. Results on this data must be reported as
"simulated from magnitude images". Per volume:

1. Intensities: negatives (resampling ringing) are clipped to 0 and the volume is divided by the 99th percentile of
   its positive voxels, so tissue lies in about [0, 1] whatever the scanner units; the RSS target of the written
   file is exactly this scaled magnitude (the sensitivities satisfy ``sum_c |S_c|^2 = 1``).
2. Slices without brain are dropped: a pixel is foreground above 0.1 (10 % of the 99th percentile) and a slice is
   kept when its foreground fraction is at least ``min_brain_fraction`` (default 0.05; this drops the top and bottom
   ~20 of the 155 BraTS slices). ``max_slices`` then keeps the N central kept slices.
3. Matrix: every slice is brought to square output pixels of one spacing (mm), the finest that needs no upsampling
   along either axis and makes the whole slice fit the matrix: ``max(row_mm, col_mm, rows * row_mm / H,
   cols * col_mm / W)``. The anatomy keeps its physical aspect (per-contrast grids and anisotropic in-plane voxels
   included); a slice already at that size is only zero-padded around its centre (no interpolation), otherwise it
   is resampled with exact area averaging, then padded. Nothing is upsampled, so no resolution is invented; the
   header records the resulting voxel size.
4. Phase: a random quadratic polynomial per slice (offset uniform in [-pi, pi), linear and quadratic coefficients
   normal with std pi/3 on coordinates in [-1, 1]): smooth like B0/RF phase, shifts the k-space peak < 1 sample.
5. Coils: ``coils`` Gaussian-profile receivers on a ring of radius ~1.5 (half-FOV units) around the slice, each with
   a constant phase and a gentle linear phase, normalised so ``sum_c |S_c|^2 = 1`` everywhere.
6. k-space: orthonormal centred FFT, the convention DIRECT's fastMRI pipeline inverts with
   ``ifft2(centered=True, normalized=True)``.

Random draws are seeded by ``seed`` and the source slice index, so a slice looks the same whichever others are kept.

Inputs: ``.npz`` files laid out as in ``shared/data/brain`` (see its README): ``(slices, rows, cols)`` arrays ``t1``,
``t1c``, ``t2``, ``flair`` (those the scan has; float or int, negatives clipped as above), the voxel size
``(slice, row, col)`` in mm as ``voxel_size_mm_<contrast>`` per contrast (native scans with one grid per contrast) or
one ``voxel_size_mm`` for all (1 mm isotropic when neither is present); other keys (the strings ``subject_id``,
``dataset``, ``source``) are ignored. Also NIfTI volumes of one contrast, and folders of such files.

Outputs: ``file_brain_<ACQUISITION>_<source token>.h5`` (:func:`~direct_nextaccel.data.fastmri_h5.source_filename`:
the source file's stem, so two sources never share a name and sibling contrasts share the token), with the attrs
``source_file``, ``source_sha256`` and ``source_contrast``. An existing output is replaced only with ``overwrite``
and only if it came from the same source (same file name, contents and contrast); anything else is an error.

Split: :data:`SPLIT_SUBJECTS` is the development subject split of ``shared/data/brain/README.md``; ``--split`` writes
``OUTPUT/train`` and ``OUTPUT/val`` from it, and a file whose subject is not in it is an error.
"""

import argparse
import re
import sys
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from direct_nextaccel.core.user_paths import check_output_folder
from direct_nextaccel.data.fastmri_h5 import (
    centered_fft2,
    check_replaceable,
    file_sha256,
    source_attrs,
    source_filename,
    write_fastmri_h5,
)

CONTRASTS = {"t1": "AXT1", "t1c": "AXT1POST", "t2": "AXT2", "flair": "AXFLAIR"}
"""Contrast key of the ``.npz`` volumes -> fastMRI acquisition name."""

FOREGROUND_THRESHOLD = 0.1
"""Foreground level as a fraction of the volume's 99th percentile."""

NIFTI_SUFFIXES = (".nii", ".nii.gz")

MIN_MATRIX = 16
"""Smallest side of the simulated matrix: at a 230 mm brain field of view a smaller side has pixels over 14 mm, which
is no MRI image any model here could learn from (the nested Cartesian masks even need 32 lines). A 1 x 1 matrix used
to be accepted and gave one-pixel "brains"."""

TRAIN, VAL = "train", "val"

SPLIT_SUBJECTS: dict[str, str] = {
    # shared/data/brain/README.md, "Subject split for development". A subject's files all go to one side (study1 and
    # study2 of a longitudinal patient are one person; so are the skull-stripped and native TCGA-FG-6692 files).
    "TCGA-DU-7294": TRAIN,
    "TCGA-FG-6692": VAL,  # both of its files (skull-stripped and native)
    "lesjak_cs_patient07": TRAIN,
    "lesjak_cs_patient26": TRAIN,
    # Validation with longitudinal patient 19: the two Lesjak databases number patients independently, so cs19 and
    # long patient 19 may be one person and must not sit on opposite sides.
    "lesjak_cs_patient19": VAL,
    "lesjak_long_patient01": TRAIN,
    "lesjak_long_patient03": TRAIN,
    "lesjak_long_patient04": TRAIN,
    "lesjak_long_patient09": TRAIN,
    "lesjak_long_patient12": TRAIN,
    "lesjak_long_patient19": VAL,
    "lesjak_long_patient20": VAL,
}
"""Subject -> ``"train"`` / ``"val"``: the development split of ``shared/data/brain/README.md``. Validation subjects
give the numbers a README reports; never train on them."""

_SUBJECT_OF_STEM = (
    (re.compile(r"^tcga_([a-z]{2})_(\d+)_[a-z]+$"), lambda match: f"TCGA-{match[1].upper()}-{match[2]}"),
    (re.compile(r"^lesjak_cs_patient(\d+)$"), lambda match: f"lesjak_cs_patient{match[1]}"),
    (re.compile(r"^lesjak_long_patient(\d+)_study\d+$"), lambda match: f"lesjak_long_patient{match[1]}"),
)


def subject_of(stem: str) -> str | None:
    """Subject of a shared-data file stem (``tcga_fg_6692_native`` -> ``TCGA-FG-6692``), None if not recognised."""
    for pattern, subject in _SUBJECT_OF_STEM:
        if match := pattern.match(stem):
            return subject(match)
    return None


def split_side(path: Path) -> tuple[str, str]:
    """``(subject, "train" | "val")`` of a source file by :data:`SPLIT_SUBJECTS`, or a ValueError naming the file."""
    subject = subject_of(source_stem(path))
    if subject is None or subject not in SPLIT_SUBJECTS:
        what = f"subject {subject}" if subject else "its subject"
        raise ValueError(
            f"{path}: {what} is not in the development split of shared/data/brain/README.md "
            f"({', '.join(SPLIT_SUBJECTS)}); simulate it without --split"
        )
    return subject, SPLIT_SUBJECTS[subject]


def reference_intensity(magnitude: np.ndarray) -> float:
    """The 99th percentile of the positive voxels: the intensity mapped to 1.0 by :func:`simulate_volume`."""
    positive = magnitude[magnitude > 0]
    if positive.size == 0:
        raise ValueError("volume has no positive voxel")
    return float(np.percentile(positive, 99))


def resampled_shape(
    shape: tuple[int, int], spacing_mm: tuple[float, float], matrix: tuple[int, int]
) -> tuple[tuple[int, int], tuple[float, float]]:
    """Size and pixel spacing of a ``shape`` slice with ``spacing_mm`` (row, col) once brought into ``matrix``.

    The output pixels are square, ``max(row_mm, col_mm, rows * row_mm / H, cols * col_mm / W)`` mm (no axis
    upsampled, the whole slice fits); the returned spacing is the exact one after rounding the size.
    """
    (rows, cols), (row_mm, col_mm) = shape, spacing_mm
    pixel = max(row_mm, col_mm, rows * row_mm / matrix[0], cols * col_mm / matrix[1])
    new_rows = min(matrix[0], rows, max(1, round(rows * row_mm / pixel)))
    new_cols = min(matrix[1], cols, max(1, round(cols * col_mm / pixel)))
    return (new_rows, new_cols), (rows * row_mm / new_rows, cols * col_mm / new_cols)


def area_resample_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` weights averaging the input samples each output sample covers (exact overlap areas)."""
    edges_in = np.arange(size_in + 1, dtype=np.float64)
    edges_out = np.linspace(0.0, size_in, size_out + 1)
    low = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    high = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    overlap = np.clip(high - low, 0.0, None)
    return overlap / overlap.sum(1, keepdims=True)


def fit_to_matrix(
    volume: np.ndarray, matrix: tuple[int, int], spacing_mm: tuple[float, float] = (1.0, 1.0)
) -> np.ndarray:
    """Area-resample (only where needed, never up) to square pixels and centre zero-pad slices to ``matrix``.

    Parameters
    ----------
    volume : np.ndarray
        Real ``(slices, rows, cols)``.
    matrix : tuple[int, int]
        ``(H, W)``.
    spacing_mm : tuple[float, float]
        In-plane pixel spacing ``(row, col)`` of ``volume``; see :func:`resampled_shape`.

    Returns
    -------
    np.ndarray
        float32 ``(slices, H, W)``.
    """
    rows, cols = volume.shape[1:]
    (new_rows, new_cols), _ = resampled_shape((rows, cols), spacing_mm, matrix)
    volume = np.asarray(volume, dtype=np.float32)
    if (new_rows, new_cols) != (rows, cols):
        row_weights = area_resample_matrix(rows, new_rows).astype(np.float32)  # new_rows, rows
        col_weights = area_resample_matrix(cols, new_cols).astype(np.float32)  # new_cols, cols
        volume = row_weights @ volume @ col_weights.T  # S, new_rows, new_cols
    out = np.zeros((volume.shape[0], *matrix), dtype=np.float32)
    top, left = (matrix[0] - volume.shape[1]) // 2, (matrix[1] - volume.shape[2]) // 2
    out[:, top : top + volume.shape[1], left : left + volume.shape[2]] = volume
    return out


def normalized_grid(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` in units of half the larger side, so a square FOV spans [-1, 1]."""
    half = max(shape) / 2
    y = (np.arange(shape[0]) - (shape[0] - 1) / 2) / half
    x = (np.arange(shape[1]) - (shape[1] - 1) / 2) / half
    return np.meshgrid(y, x, indexing="ij")


def smooth_phase(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Random quadratic phase map (radians), float ``(H, W)``; see the module docstring for the distribution."""
    y, x = normalized_grid(shape)
    offset = rng.uniform(-np.pi, np.pi)
    linear_y, linear_x, yy, xy, xx = rng.normal(0.0, np.pi / 3, size=5)
    return offset + linear_y * y + linear_x * x + yy * y**2 + xy * x * y + xx * x**2


def coil_sensitivities(shape: tuple[int, int], coils: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth receive sensitivities of ``coils`` loops on a ring around the slice, ``sum_c |S_c|^2 = 1`` everywhere.

    Parameters
    ----------
    shape : tuple[int, int]
        ``(H, W)``.
    coils : int
        Number of receivers (1 gives a constant-phase uniform coil).
    rng : np.random.Generator
        Source of the ring rotation and the per-coil jitter.

    Returns
    -------
    np.ndarray
        complex64 ``(coils, H, W)``.
    """
    y, x = normalized_grid(shape)
    angles = rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(coils) / coils
    radii = rng.uniform(1.4, 1.6, size=coils)
    widths = rng.uniform(0.9, 1.1, size=coils)  # Gaussian std of the profile
    phases = rng.uniform(-np.pi, np.pi, size=coils)
    ramps = rng.uniform(-0.5, 0.5, size=coils)  # radians per half-FOV along the coil direction
    maps = np.empty((coils, *shape), dtype=np.complex128)
    for index in range(coils):
        direction_y, direction_x = np.sin(angles[index]), np.cos(angles[index])
        distance2 = (y - radii[index] * direction_y) ** 2 + (x - radii[index] * direction_x) ** 2
        along = y * direction_y + x * direction_x
        magnitude = np.exp(-distance2 / (2 * widths[index] ** 2))
        maps[index] = magnitude * np.exp(1j * (phases[index] + ramps[index] * along))
    maps /= np.sqrt((np.abs(maps) ** 2).sum(0, keepdims=True))
    return maps.astype(np.complex64)


def central_slices(indices: np.ndarray, max_slices: int | None) -> np.ndarray:
    """The ``max_slices`` middle entries of ``indices`` (all of them when ``max_slices`` is None or larger)."""
    if max_slices is None or len(indices) <= max_slices:
        return indices
    start = len(indices) // 2 - max_slices // 2
    return indices[start : start + max_slices]


def simulate_volume(
    magnitude: np.ndarray,
    *,
    coils: int = 16,
    matrix: tuple[int, int] = (256, 256),
    seed: int = 0,
    min_brain_fraction: float = 0.05,
    max_slices: int | None = None,
    progress: bool = False,
    description: str = "simulating slices",
    spacing_mm: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-coil k-space of a magnitude volume (steps in the module docstring).

    Parameters
    ----------
    magnitude : np.ndarray
        Real ``(slices, rows, cols)``, any units, finite.
    coils : int
        Number of simulated receive coils, >= 1.
    matrix : tuple[int, int]
        ``(H, W)`` of the k-space.
    seed : int
        Non-negative seed of the phase and coil draws.
    min_brain_fraction : float
        A slice is kept when at least this fraction of its pixels is foreground.
    max_slices : int, optional
        Keep at most this many central slices among those with brain.
    progress : bool
        Show a tqdm bar over slices, labelled ``description``.
    description : str
        Label of the progress bar.
    spacing_mm : tuple[float, float]
        In-plane pixel spacing ``(row, col)`` in mm, so anisotropic pixels keep the anatomy's aspect.

    Returns
    -------
    kspace : np.ndarray
        complex64 ``(kept, coils, H, W)``.
    kept_slice_indices : np.ndarray
        int ``(kept,)``, indices of the kept slices in ``magnitude``.
    """
    matrix = check_matrix(matrix)
    check_coils(coils)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed {seed!r} is not a non-negative integer")
    if max_slices is not None and (
        isinstance(max_slices, bool) or not isinstance(max_slices, int | np.integer) or max_slices < 1
    ):
        raise ValueError(f"max_slices {max_slices!r} is not a positive integer")
    if not 0.0 <= min_brain_fraction <= 1.0:
        raise ValueError(f"min_brain_fraction {min_brain_fraction!r} is not in [0, 1]")
    spacing_mm = check_voxel_size(spacing_mm, "spacing_mm", length=2)
    magnitude = np.asarray(magnitude)
    if magnitude.ndim != 3:
        raise ValueError(f"volume must be 3D (slices, rows, cols), got shape {magnitude.shape}")
    if np.iscomplexobj(magnitude) or not np.issubdtype(magnitude.dtype, np.number):
        raise TypeError(f"volume must be real magnitude, got dtype {magnitude.dtype}")
    if not np.isfinite(magnitude).all():
        raise ValueError(f"volume contains {int((~np.isfinite(magnitude)).sum())} NaN or infinite values")

    volume = np.clip(magnitude.astype(np.float32), 0.0, None)
    volume /= reference_intensity(volume)
    fractions = (volume > FOREGROUND_THRESHOLD).mean(axis=(1, 2))
    kept = np.flatnonzero(fractions >= min_brain_fraction)
    if kept.size == 0:
        raise ValueError(
            f"no slice has a foreground fraction >= min_brain_fraction {min_brain_fraction} "
            f"(largest {fractions.max():.3f})"
        )
    kept = central_slices(kept, max_slices)
    slices = fit_to_matrix(volume[kept], matrix, spacing_mm)  # kept, H, W

    sensitivities = coil_sensitivities(matrix, coils, np.random.default_rng([seed, 0]))  # C, H, W
    kspace = np.empty((len(kept), coils, *matrix), dtype=np.complex64)
    iterator = zip(kept, slices, strict=True)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(kept), desc=description, unit="slice")
    for out_index, (source_index, image) in enumerate(iterator):
        phase = smooth_phase(matrix, np.random.default_rng([seed, 1, int(source_index)]))
        complex_image = (image * np.exp(1j * phase)).astype(np.complex64)  # H, W
        kspace[out_index] = centered_fft2(sensitivities * complex_image)  # C, H, W
    return kspace, kept


def check_matrix(matrix: Sequence[int]) -> tuple[int, int]:
    """``matrix`` as a tuple of two ints >= :data:`MIN_MATRIX`, or a ValueError naming it."""
    values = tuple(matrix) if isinstance(matrix, Sequence) and not isinstance(matrix, str) else (matrix,)
    valid = len(values) == 2 and all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) and n > 0 for n in values
    )
    if not valid:
        raise ValueError(f"matrix {matrix!r} is not 2 positive integers (H, W)")
    if min(values) < MIN_MATRIX:
        raise ValueError(f"matrix {tuple(int(n) for n in values)} is too small: each side must be >= {MIN_MATRIX}")
    return int(values[0]), int(values[1])


def check_coils(coils: int) -> None:
    """ValueError naming ``coils`` unless it is an int >= 1."""
    if isinstance(coils, bool) or not isinstance(coils, int | np.integer) or coils < 1:
        raise ValueError(f"coils {coils!r} must be an integer >= 1")


def check_voxel_size(value: object, name: str = "voxel_size_mm", length: int = 3) -> tuple[float, ...]:
    """``value`` as ``length`` finite positive floats (mm), or a ValueError naming ``name`` and the value."""
    array = np.asarray(value) if not isinstance(value, str) else np.asarray([value])
    what = "(slice, row, col)" if length == 3 else "(row, col)"
    if array.dtype.kind not in "iuf" or array.shape != (length,):
        shown = array.tolist() if array.size <= 8 else f"array of shape {array.shape}"
        raise ValueError(f"{name} {shown!r} ({array.dtype}) is not {length} sizes in mm {what}")
    values = tuple(float(v) for v in array)
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"{name} {list(values)} is not {length} finite positive sizes in mm {what}")
    return values


def volume_seed(seed: int, stem: str, contrast: str) -> int:
    """Seed of one volume: distinct coils and phases per file and contrast, reproducible for a given ``seed``."""
    entropy = [seed, zlib.crc32(stem.encode()), zlib.crc32(contrast.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def source_stem(path: Path) -> str:
    """File name without its data suffix (``.npz``, ``.nii``, ``.nii.gz``)."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".npz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def output_paths(path: Path, output_dir: Path, contrasts: Sequence[str]) -> list[Path]:
    """Where :func:`simulate_npz` / :func:`simulate_nifti` write ``contrasts`` of ``path`` (distinct per source)."""
    stem = source_stem(Path(path))
    return [Path(output_dir) / source_filename(CONTRASTS[contrast], stem) for contrast in contrasts]


def check_contrasts(contrasts: Sequence[str]) -> tuple[str, ...]:
    """``contrasts`` as a tuple, or a ValueError naming an unknown or repeated one."""
    contrasts = (contrasts,) if isinstance(contrasts, str) else tuple(contrasts)
    if not contrasts:
        raise ValueError("contrasts is empty")
    for contrast in contrasts:
        if contrast not in CONTRASTS:
            raise ValueError(f"contrast {contrast!r} is not one of {tuple(CONTRASTS)}")
    if len(set(contrasts)) != len(contrasts):
        raise ValueError(f"contrasts {contrasts} has repeats")
    return contrasts


def _load_error(err: BaseException) -> str:
    """Why numpy could not load something, without numpy's advice to unpickle untrusted files."""
    text = str(err)
    if "pickle" in text:
        return "it holds pickled Python objects (object arrays), which are never loaded"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _open_npz(path: Path):
    try:
        archive = np.load(path, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as err:  # BadZipFile, pickled data, truncated files: all are user input
        raise ValueError(f"{path} is not a readable .npz archive of numeric arrays ({_load_error(err)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{path} holds a single .npy array, not a .npz archive of named arrays")
    return archive


def _read_member(archive, path: Path, key: str) -> np.ndarray:
    try:
        return archive[key]
    except MemoryError:
        raise
    except Exception as err:  # object arrays, corrupt members
        raise ValueError(f"{path}: array {key!r} cannot be read ({_load_error(err)})") from None


def check_volume(volume: np.ndarray, name: str) -> np.ndarray:
    """``volume`` if it is a real numeric, finite, non-empty 3D array; otherwise a ValueError naming ``name``."""
    volume = np.asarray(volume)
    if volume.dtype.kind not in "iuf":
        raise ValueError(f"{name} has dtype {volume.dtype}, not a real numeric (slices, rows, cols) volume")
    if volume.ndim != 3:
        raise ValueError(f"{name} has shape {volume.shape}, not 3D (slices, rows, cols)")
    if 0 in volume.shape:
        raise ValueError(f"{name} has an empty axis: shape {volume.shape}")
    if not np.isfinite(volume).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(volume)).sum())} NaN or infinite values")
    return volume


def npz_contrasts(path: Path) -> list[str]:
    """The contrasts (keys of :data:`CONTRASTS`) a ``.npz`` holds, in :data:`CONTRASTS` order."""
    with _open_npz(Path(path)) as archive:
        return [contrast for contrast in CONTRASTS if contrast in archive.files]


def load_npz(
    path: Path, contrasts: Sequence[str] | None = None
) -> tuple[dict[str, np.ndarray], dict[str, tuple[float, float, float]]]:
    """Volumes and voxel sizes ``(slice, row, col)`` mm per contrast of a ``.npz`` (see the module docstring).

    ``contrasts`` None takes every contrast the file holds (at least one); a requested contrast it lacks is an
    error naming the missing and the present ones.
    """
    path = Path(path)
    with _open_npz(path) as archive:
        files = list(archive.files)
        present = [contrast for contrast in CONTRASTS if contrast in files]
        if contrasts is None:
            if not present:
                raise ValueError(f"{path} holds none of the contrasts {tuple(CONTRASTS)} (it holds {sorted(files)})")
            contrasts = present
        missing = [contrast for contrast in contrasts if contrast not in files]
        if missing:
            raise ValueError(f"{path} lacks contrasts {missing} (it holds {sorted(files)})")
        volumes, voxels = {}, {}
        for contrast in contrasts:
            volumes[contrast] = check_volume(_read_member(archive, path, contrast), f"{path}: contrast {contrast!r}")
            key = next((k for k in (f"voxel_size_mm_{contrast}", "voxel_size_mm") if k in files), None)
            voxels[contrast] = (
                (1.0, 1.0, 1.0) if key is None else check_voxel_size(_read_member(archive, path, key), f"{path}: {key}")
            )
    return volumes, voxels


def load_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Axial ``(slices, rows, cols)`` volume (anterior at the top, radiological left-right) and voxel size in mm.

    The image is reoriented to RAS+ first, so slices run inferior to superior whatever the file's orientation.
    """
    try:
        import nibabel
    except ImportError as err:
        raise ImportError(f"reading {path} needs nibabel: pip install 'direct-nextaccel[nifti]'") from err
    try:
        image = nibabel.as_closest_canonical(nibabel.load(path))
        shape = image.shape
        data = np.asarray(image.dataobj, dtype=np.float32) if len(shape) == 3 else None  # R, A, S
        zooms = image.header.get_zooms()[:3]
    except MemoryError:
        raise
    except Exception as err:  # nibabel's ImageFileError, truncated files, bad headers
        raise ValueError(f"{path} is not a readable NIfTI volume ({type(err).__name__}: {err})") from None
    if data is None:
        raise ValueError(f"{path} holds a volume of shape {shape}, not 3D")
    zoom_x, zoom_y, zoom_z = (float(z) for z in zooms)
    volume = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])  # S, A->P rows, R->L cols
    voxel = check_voxel_size((zoom_z, zoom_y, zoom_x), f"{path}: voxel size")
    return check_volume(volume, str(path)), voxel


def simulate_npz(
    npz_path: str | Path,
    output_dir: str | Path,
    *,
    contrasts: Sequence[str] | None = None,
    coils: int = 16,
    matrix: tuple[int, int] = (256, 256),
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    min_brain_fraction: float = 0.05,
    max_slices: int | None = None,
) -> list[Path]:
    """Write one simulated fastMRI-layout file per contrast of a multi-contrast ``.npz`` volume.

    Each contrast is simulated on its own grid and voxel size (native acquisitions have different matrices and
    slice sets). Files are named ``file_brain_<ACQ>_<source token>.h5`` (module docstring); the attrs record the
    source file, its SHA-256 and contrast, the kept source slices and the seed.

    Parameters
    ----------
    npz_path : str or Path
        ``.npz`` with ``(slices, rows, cols)`` arrays named by contrast and optionally voxel sizes.
    output_dir : str or Path
        Folder of the written files (created if needed).
    contrasts : Sequence[str], optional
        Keys of :data:`CONTRASTS` to simulate; default every contrast the file holds.
    coils, matrix, seed, min_brain_fraction, max_slices
        As in :func:`simulate_volume`; ``seed`` is combined with the file stem and contrast per volume.
    overwrite : bool
        Replace existing outputs written from this same source; otherwise nothing is written when any output
        exists. An output from another source is never replaced.
    progress : bool
        Show tqdm progress bars.

    Returns
    -------
    list[Path]
        The written files, in ``contrasts`` order.
    """
    npz_path = Path(npz_path)
    if npz_path.suffix.lower() != ".npz":
        raise ValueError(f"{npz_path} is not a .npz file")
    if contrasts is not None:
        contrasts = check_contrasts(contrasts)
    volumes, voxel_sizes = load_npz(npz_path, contrasts)
    return _simulate_and_write(
        npz_path,
        Path(output_dir),
        volumes,
        voxel_sizes,
        coils=coils,
        matrix=matrix,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
        min_brain_fraction=min_brain_fraction,
        max_slices=max_slices,
    )


def simulate_nifti(
    nifti_path: str | Path,
    output_dir: str | Path,
    contrast: str,
    *,
    coils: int = 16,
    matrix: tuple[int, int] = (256, 256),
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    min_brain_fraction: float = 0.05,
    max_slices: int | None = None,
) -> list[Path]:
    """Like :func:`simulate_npz` for one NIfTI volume (``.nii`` / ``.nii.gz``, needs nibabel) of ``contrast``."""
    nifti_path = Path(nifti_path)
    if not nifti_path.name.lower().endswith(NIFTI_SUFFIXES):
        raise ValueError(f"{nifti_path} is not a NIfTI file (.nii or .nii.gz)")
    (contrast,) = check_contrasts([contrast])
    volume, voxel_size = load_nifti(nifti_path)
    return _simulate_and_write(
        nifti_path,
        Path(output_dir),
        {contrast: volume},
        {contrast: voxel_size},
        coils=coils,
        matrix=matrix,
        seed=seed,
        overwrite=overwrite,
        progress=progress,
        min_brain_fraction=min_brain_fraction,
        max_slices=max_slices,
    )


def _simulate_and_write(
    source: Path,
    output_dir: Path,
    volumes: dict[str, np.ndarray],
    voxel_sizes: dict[str, tuple[float, float, float]],
    *,
    coils: int,
    matrix: tuple[int, int],
    seed: int,
    overwrite: bool,
    progress: bool,
    min_brain_fraction: float,
    max_slices: int | None,
    sha256: str | None = None,
    extra_attrs: dict[str, object] | None = None,
) -> list[Path]:
    matrix = check_matrix(matrix)
    check_coils(coils)
    for contrast, volume in volumes.items():  # validate every volume before writing any file
        check_volume(volume, f"{source}: contrast {contrast!r}")
        check_voxel_size(voxel_sizes[contrast], f"{source}: voxel size of {contrast!r}")
    targets = output_paths(source, output_dir, list(volumes))
    sha256 = sha256 or file_sha256(source)
    existing = [target for target in targets if target.exists()]
    for target, contrast in zip(targets, volumes, strict=True):
        if target.exists():
            check_replaceable(target, source_attrs(source, sha256, contrast), overwrite=True)
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(map(str, existing))} already exist(s); pass overwrite=True (--overwrite) to replace"
        )

    stem = source_stem(source)
    written = []
    for (contrast, volume), target in zip(volumes.items(), targets, strict=True):
        slice_mm, row_mm, col_mm = voxel_sizes[contrast]
        contrast_seed = volume_seed(seed, stem, contrast)
        try:
            kspace, kept = simulate_volume(
                volume,
                coils=coils,
                matrix=matrix,
                seed=contrast_seed,
                min_brain_fraction=min_brain_fraction,
                max_slices=max_slices,
                progress=progress,
                description=f"{source.name}:{contrast}",
                spacing_mm=(row_mm, col_mm),
            )
        except ValueError as err:
            raise ValueError(f"{source}: contrast {contrast!r}: {err}") from err
        _, (pixel_row_mm, pixel_col_mm) = resampled_shape(volume.shape[1:], (row_mm, col_mm), matrix)
        written.append(
            write_fastmri_h5(
                target,
                kspace,
                CONTRASTS[contrast],
                patient_id=stem,
                overwrite=True,  # checked above: absent, or written from this same source with overwrite asked
                voxel_size_mm=(pixel_row_mm, pixel_col_mm, slice_mm),
                extra_attrs={
                    "simulated_from": f"magnitude images {source.name}:{contrast}",
                    **source_attrs(source, sha256, contrast),
                    "source_voxel_size_mm": np.array([slice_mm, row_mm, col_mm]),
                    "source_slice_indices": kept,
                    "simulation_seed": contrast_seed,
                    "intensity_reference": reference_intensity(volume),
                    **(extra_attrs or {}),
                },
            )
        )
    return written


@dataclass
class _Source:
    """One input file of a ``simulate`` run and what the run writes from it."""

    path: Path
    contrasts: tuple[str, ...]
    output_dir: Path
    subject: str | None = None
    sha256: str = ""
    targets: list[Path] = field(default_factory=list)


def expand_inputs(inputs: Sequence[Path], nifti_contrast: str | None = None) -> list[Path]:
    """Input files: each file as given, each folder's ``.npz`` and NIfTI files (sorted, not recursive).

    A NIfTI input needs ``nifti_contrast`` (one contrast per file).
    """
    files: list[Path] = []
    for entry in inputs:
        entry = Path(entry)
        if entry.is_dir():
            found = sorted(
                p for p in entry.iterdir() if p.is_file() and p.name.lower().endswith((".npz", *NIFTI_SUFFIXES))
            )
            if not found:
                raise ValueError(f"folder {entry} holds no .npz or NIfTI (.nii, .nii.gz) file")
            files.extend(found)
        else:
            if not entry.name.lower().endswith((".npz", *NIFTI_SUFFIXES)):
                raise ValueError(f"{entry} is neither .npz nor NIfTI (.nii, .nii.gz)")
            if entry.name.lower().endswith(NIFTI_SUFFIXES) and nifti_contrast is None:
                raise ValueError(f"{entry} is NIfTI: give its contrast with --contrast")
            if not entry.is_file():
                raise FileNotFoundError(f"{entry} does not exist")
            files.append(entry)
    unique, seen = [], set()
    for path in files:  # a file named twice (alone and through its folder) is simulated once
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


def _check_options(args: argparse.Namespace) -> dict:
    matrix = check_matrix(tuple(args.matrix))
    check_coils(args.coils)
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed} is not a non-negative integer")
    if args.max_slices is not None and args.max_slices < 1:
        raise ValueError(f"--max-slices {args.max_slices} is not a positive integer")
    if not 0.0 <= args.min_brain_fraction <= 1.0:
        raise ValueError(f"--min-brain-fraction {args.min_brain_fraction} is not in [0, 1]")
    if args.contrasts is not None:
        check_contrasts(args.contrasts)
    return {
        "coils": args.coils,
        "matrix": matrix,
        "seed": args.seed,
        "overwrite": args.overwrite,
        "progress": args.progress,
        "min_brain_fraction": args.min_brain_fraction,
        "max_slices": args.max_slices,
    }


def _plan(args: argparse.Namespace) -> list[_Source]:
    """Every source with its contrasts and targets, checked before anything is written."""
    sources = []
    for path in expand_inputs(args.inputs, args.contrast):
        subject, output_dir = None, args.output
        if args.split:
            subject, side = split_side(path)
            output_dir = args.output / side
        if path.name.lower().endswith(NIFTI_SUFFIXES):
            if args.contrast is None:
                raise ValueError(f"{path} is NIfTI: give its contrast with --contrast")
            contrasts = (args.contrast,)
        else:
            present = npz_contrasts(path)
            wanted = args.contrasts or list(CONTRASTS)
            contrasts = tuple(contrast for contrast in wanted if contrast in present)
            if not contrasts:
                raise ValueError(f"{path} holds none of the contrasts {list(wanted)} (it holds {present})")
            if args.contrasts is not None and len(contrasts) < len(wanted):
                lacking = [contrast for contrast in wanted if contrast not in present]
                print(
                    f"direct-nextaccel simulate: note: {path} lacks {lacking}; simulating {list(contrasts)}",
                    file=sys.stderr,
                )
        sources.append(_Source(path, contrasts, output_dir, subject, targets=output_paths(path, output_dir, contrasts)))

    planned: dict[Path, Path] = {}
    for source in sources:
        for target in source.targets:
            if target in planned:
                raise ValueError(f"{planned[target]} and {source.path} would both write {target}")
            planned[target] = source.path

    for source in sources:  # read and check every volume before writing anything
        if source.path.name.lower().endswith(NIFTI_SUFFIXES):
            load_nifti(source.path)
        else:
            load_npz(source.path, source.contrasts)
        source.sha256 = file_sha256(source.path)
        for contrast, target in zip(source.contrasts, source.targets, strict=True):
            check_replaceable(target, source_attrs(source.path, source.sha256, contrast), overwrite=True)
    existing = [str(target) for target in planned if target.exists()]
    if existing and not args.overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
    _check_no_copies(sources, planned)
    return sources


def _check_no_copies(sources: list[_Source], planned: dict[Path, Path]) -> None:
    """Refuse when an output folder already holds one of this run's volumes under another name.

    That happens with files of an older naming, or, with ``--split``, with a file on the other side: keeping it
    would train twice on a volume or train on a validation subject.
    """
    wanted = {(source.path.name, contrast): source for source in sources for contrast in source.contrasts}
    folders = {target.parent for target in planned} | {
        source.output_dir.parent / side for source in sources if source.subject for side in (TRAIN, VAL)
    }
    import h5py

    for folder in sorted(folders):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.h5")):
            if path in planned:
                continue
            try:
                with h5py.File(path, "r") as file:
                    name, contrast = file.attrs.get("source_file"), file.attrs.get("source_contrast")
                    older = file.attrs.get("simulated_from")
            except (OSError, ValueError):
                continue
            if name is None and isinstance(older, str) and older.startswith("magnitude images "):
                name, _, contrast = older.removeprefix("magnitude images ").rpartition(":")
            if (name, contrast) in wanted:
                raise FileExistsError(
                    f"{path} already holds {name}:{contrast}, which this run writes elsewhere; remove it so the "
                    "volume is not used twice (or on the wrong side of the split)"
                )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``direct-nextaccel simulate``."""
    parser.add_argument(
        "inputs", nargs="+", type=Path, metavar="INPUT", help=".npz volumes, NIfTI files or folders of them"
    )
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="folder of the fastMRI .h5 files")
    parser.add_argument(
        "--split",
        action="store_true",
        help="write DIR/train and DIR/val by the subject split of shared/data/brain/README.md",
    )
    parser.add_argument("--coils", type=int, default=16, help="simulated receive coils (default 16)")
    parser.add_argument("--matrix", type=int, nargs=2, default=(256, 256), metavar=("H", "W"), help="default 256 256")
    parser.add_argument(
        "--contrasts",
        nargs="+",
        choices=list(CONTRASTS),
        help=".npz contrasts (default: every contrast each file holds)",
    )
    parser.add_argument("--contrast", choices=list(CONTRASTS), help="contrast of NIfTI inputs (required for them)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the coil and phase draws (default 0)")
    parser.add_argument("--min-brain-fraction", type=float, default=0.05, help="drop slices below (default 0.05)")
    parser.add_argument("--max-slices", type=int, help="keep the N central brain slices of each volume")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs written from the same source"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Simulate every input and print the written paths; a user error prints one line and returns 2."""
    try:
        options = _check_options(args)
        check_output_folder(args.output, "--output")
        sources = _plan(args)
        counts: dict[str, dict[str, list[int]]] = {}
        for source in sources:
            load_options = dict(options, sha256=source.sha256)
            if source.subject:
                load_options["extra_attrs"] = {"subject": source.subject}
            if source.path.name.lower().endswith(NIFTI_SUFFIXES):
                volume, voxel = load_nifti(source.path)
                volumes, voxels = {source.contrasts[0]: volume}, {source.contrasts[0]: voxel}
            else:
                volumes, voxels = load_npz(source.path, source.contrasts)
            written = _simulate_and_write(source.path, source.output_dir, volumes, voxels, **load_options)
            for path in written:
                print(path)
                if source.subject:
                    import h5py

                    with h5py.File(path, "r") as file:
                        slices = file["kspace"].shape[0]
                    side = counts.setdefault(source.output_dir.name, {})
                    side.setdefault(source.subject, [0, 0])
                    side[source.subject][0] += 1
                    side[source.subject][1] += slices
        for side, subjects in counts.items():
            files = sum(n for n, _ in subjects.values())
            slices = sum(s for _, s in subjects.values())
            detail = ", ".join(f"{subject} {n}/{s}" for subject, (n, s) in sorted(subjects.items()))
            print(
                f"direct-nextaccel simulate: {side}: {files} files, {slices} slices (files/slices: {detail})",
                file=sys.stderr,
            )
    except (ValueError, TypeError, OSError, ImportError, MemoryError) as err:
        message = str(err) if not isinstance(err, MemoryError) else "out of memory (try a smaller --matrix or --coils)"
        print(f"direct-nextaccel simulate: error: {message}", file=sys.stderr)
        return 2
    return 0

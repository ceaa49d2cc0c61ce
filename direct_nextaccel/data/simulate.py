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
3. Matrix: a slice that fits the matrix is zero-padded around its centre (no interpolation, native voxel size); a
   larger one is first shrunk by one factor for both axes (aspect kept) with exact area averaging, then padded.
   Nothing is upsampled, so no resolution is invented.
4. Phase: a random quadratic polynomial per slice (offset uniform in [-pi, pi), linear and quadratic coefficients
   normal with std pi/3 on coordinates in [-1, 1]): smooth like B0/RF phase, shifts the k-space peak < 1 sample.
5. Coils: ``coils`` Gaussian-profile receivers on a ring of radius ~1.5 (half-FOV units) around the slice, each with
   a constant phase and a gentle linear phase, normalised so ``sum_c |S_c|^2 = 1`` everywhere.
6. k-space: orthonormal centred FFT, the convention DIRECT's fastMRI pipeline inverts with
   ``ifft2(centered=True, normalized=True)``.

Random draws are seeded by ``seed`` and the source slice index, so a slice looks the same whichever others are kept.
"""

import argparse
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from direct_nextaccel.data.fastmri_h5 import centered_fft2, fastmri_filename, subject_id_from_stem, write_fastmri_h5

CONTRASTS = {"t1": "AXT1", "t1c": "AXT1POST", "t2": "AXT2", "flair": "AXFLAIR"}
"""Contrast key of the ``.npz`` volumes -> fastMRI acquisition name."""

FOREGROUND_THRESHOLD = 0.1
"""Foreground level as a fraction of the volume's 99th percentile."""

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def reference_intensity(magnitude: np.ndarray) -> float:
    """The 99th percentile of the positive voxels: the intensity mapped to 1.0 by :func:`simulate_volume`."""
    positive = magnitude[magnitude > 0]
    if positive.size == 0:
        raise ValueError("volume has no positive voxel")
    return float(np.percentile(positive, 99))


def fit_scale(shape: tuple[int, int], matrix: tuple[int, int]) -> float:
    """Shrink factor (<= 1) that makes a ``shape`` slice fit in ``matrix`` with its aspect ratio kept."""
    return min(1.0, matrix[0] / shape[0], matrix[1] / shape[1])


def area_resample_matrix(size_in: int, size_out: int) -> np.ndarray:
    """``(size_out, size_in)`` weights averaging the input samples each output sample covers (exact overlap areas)."""
    edges_in = np.arange(size_in + 1, dtype=np.float64)
    edges_out = np.linspace(0.0, size_in, size_out + 1)
    low = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    high = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    overlap = np.clip(high - low, 0.0, None)
    return overlap / overlap.sum(1, keepdims=True)


def fit_to_matrix(volume: np.ndarray, matrix: tuple[int, int]) -> np.ndarray:
    """Area-shrink (only if too large) and centre zero-pad slices to ``matrix``.

    Parameters
    ----------
    volume : np.ndarray
        Real ``(slices, rows, cols)``.
    matrix : tuple[int, int]
        ``(H, W)``.

    Returns
    -------
    np.ndarray
        float32 ``(slices, H, W)``.
    """
    rows, cols = volume.shape[1:]
    scale = fit_scale((rows, cols), matrix)
    if scale < 1.0:
        new_rows = min(matrix[0], max(1, round(rows * scale)))
        new_cols = min(matrix[1], max(1, round(cols * scale)))
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
    slices = fit_to_matrix(volume[kept], matrix)  # kept, H, W

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
    """``matrix`` as a tuple of two positive ints, or a ValueError naming it."""
    values = tuple(matrix) if isinstance(matrix, Sequence) and not isinstance(matrix, str) else (matrix,)
    valid = len(values) == 2 and all(
        isinstance(n, int | np.integer) and not isinstance(n, bool) and n > 0 for n in values
    )
    if not valid:
        raise ValueError(f"matrix {matrix!r} is not 2 positive integers (H, W)")
    return int(values[0]), int(values[1])


def check_coils(coils: int) -> None:
    """ValueError naming ``coils`` unless it is an int >= 1."""
    if isinstance(coils, bool) or not isinstance(coils, int | np.integer) or coils < 1:
        raise ValueError(f"coils {coils!r} must be an integer >= 1")


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
    """Where :func:`simulate_npz` / :func:`simulate_nifti` write ``contrasts`` of ``path``."""
    subject_id = subject_id_from_stem(source_stem(path))
    return [output_dir / fastmri_filename(CONTRASTS[contrast], subject_id) for contrast in contrasts]


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


def load_npz(path: Path, contrasts: Sequence[str]) -> tuple[dict[str, np.ndarray], tuple[float, float, float]]:
    """Volumes of ``contrasts`` and the voxel size ``(slice, row, col)`` mm (1 mm when absent) from a ``.npz``."""
    with np.load(path) as archive:
        present = sorted(archive.files)
        missing = [contrast for contrast in contrasts if contrast not in present]
        if missing:
            raise ValueError(f"{path} lacks contrasts {missing} (it holds {present})")
        volumes = {contrast: archive[contrast] for contrast in contrasts}
        voxel = tuple(float(v) for v in archive["voxel_size_mm"]) if "voxel_size_mm" in present else (1.0, 1.0, 1.0)
    return volumes, voxel


def load_nifti(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Axial ``(slices, rows, cols)`` volume (anterior at the top, radiological left-right) and voxel size in mm.

    The image is reoriented to RAS+ first, so slices run inferior to superior whatever the file's orientation.
    """
    try:
        import nibabel
    except ImportError as err:
        raise ImportError(f"reading {path} needs nibabel: pip install 'direct-nextaccel[nifti]'") from err
    image = nibabel.as_closest_canonical(nibabel.load(path))
    if len(image.shape) != 3:
        raise ValueError(f"{path} holds a volume of shape {image.shape}, not 3D")
    data = np.asarray(image.dataobj, dtype=np.float32)  # R, A, S
    zoom_x, zoom_y, zoom_z = (float(z) for z in image.header.get_zooms()[:3])
    volume = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])  # S, A->P rows, R->L cols
    return volume, (zoom_z, zoom_y, zoom_x)


def simulate_npz(
    npz_path: str | Path,
    output_dir: str | Path,
    *,
    contrasts: Sequence[str] = ("t1", "t1c", "t2", "flair"),
    coils: int = 16,
    matrix: tuple[int, int] = (256, 256),
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    min_brain_fraction: float = 0.05,
    max_slices: int | None = None,
) -> list[Path]:
    """Write one simulated fastMRI-layout file per contrast of a multi-contrast ``.npz`` volume.

    Each contrast is simulated on its own (the native acquisitions have different matrices and slice sets). Files
    are named ``file_brain_<ACQ>_<site>_<digits>.h5`` (:func:`~direct_nextaccel.data.fastmri_h5.subject_id_from_stem`,
    acquisitions from :data:`CONTRASTS`); the attrs record the source, the kept source slices and the seed.

    Parameters
    ----------
    npz_path : str or Path
        ``.npz`` with ``(slices, rows, cols)`` arrays named by contrast and optionally ``voxel_size_mm``.
    output_dir : str or Path
        Folder of the written files (created if needed).
    contrasts : Sequence[str]
        Keys of :data:`CONTRASTS` to simulate.
    coils, matrix, seed, min_brain_fraction, max_slices
        As in :func:`simulate_volume`; ``seed`` is combined with the file stem and contrast per volume.
    overwrite : bool
        Replace existing outputs; otherwise nothing is written when any output exists.
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
    contrasts = check_contrasts(contrasts)
    volumes, voxel_size = load_npz(npz_path, contrasts)
    return _simulate_and_write(
        npz_path,
        Path(output_dir),
        volumes,
        voxel_size,
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
        voxel_size,
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
    voxel_size: tuple[float, float, float],
    *,
    coils: int,
    matrix: tuple[int, int],
    seed: int,
    overwrite: bool,
    progress: bool,
    min_brain_fraction: float,
    max_slices: int | None,
) -> list[Path]:
    matrix = check_matrix(matrix)
    check_coils(coils)
    targets = output_paths(source, output_dir, list(volumes))
    existing = [str(path) for path in targets if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already exist(s); pass overwrite=True (--overwrite) to replace")
    for contrast, volume in volumes.items():  # validate every volume before writing any file
        if np.asarray(volume).ndim != 3:
            raise ValueError(f"{source}: contrast {contrast!r} has shape {np.shape(volume)}, not 3D")
        if not np.isfinite(volume).all():
            raise ValueError(f"{source}: contrast {contrast!r} contains NaN or infinite values")

    stem = source_stem(source)
    slice_mm, row_mm, col_mm = voxel_size
    written = []
    for (contrast, volume), target in zip(volumes.items(), targets, strict=True):
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
            )
        except ValueError as err:
            raise ValueError(f"{source}: contrast {contrast!r}: {err}") from err
        scale = fit_scale(volume.shape[1:], matrix)
        written.append(
            write_fastmri_h5(
                target,
                kspace,
                CONTRASTS[contrast],
                patient_id=stem,
                overwrite=overwrite,
                voxel_size_mm=(row_mm / scale, col_mm / scale, slice_mm),
                extra_attrs={
                    "simulated_from": f"magnitude images {source.name}:{contrast}",
                    "source_slice_indices": kept,
                    "simulation_seed": contrast_seed,
                    "intensity_reference": reference_intensity(volume),
                },
            )
        )
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``direct-nextaccel simulate``."""
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help=".npz volumes or NIfTI files")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="folder of the fastMRI .h5 files")
    parser.add_argument("--coils", type=int, default=16, help="simulated receive coils (default 16)")
    parser.add_argument("--matrix", type=int, nargs=2, default=(256, 256), metavar=("H", "W"), help="default 256 256")
    parser.add_argument(
        "--contrasts", nargs="+", default=list(CONTRASTS), choices=list(CONTRASTS), help=".npz contrasts (default all)"
    )
    parser.add_argument("--contrast", choices=list(CONTRASTS), help="contrast of NIfTI inputs (required for them)")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the coil and phase draws (default 0)")
    parser.add_argument("--min-brain-fraction", type=float, default=0.05, help="drop slices below (default 0.05)")
    parser.add_argument("--max-slices", type=int, help="keep the N central brain slices of each volume")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Simulate every input and print the written paths; a user error prints one line and returns 2."""
    try:
        check_matrix(tuple(args.matrix))
        check_coils(args.coils)
        planned: dict[Path, Path] = {}
        for source in args.inputs:
            if source.name.lower().endswith(NIFTI_SUFFIXES):
                if args.contrast is None:
                    raise ValueError(f"{source} is NIfTI: give its contrast with --contrast")
                contrasts = [args.contrast]
            elif source.suffix.lower() == ".npz":
                contrasts = args.contrasts
            else:
                raise ValueError(f"{source} is neither .npz nor NIfTI (.nii, .nii.gz)")
            if not source.is_file():
                raise FileNotFoundError(f"{source} does not exist")
            for target in output_paths(source, args.output, check_contrasts(contrasts)):
                if target in planned:
                    raise ValueError(f"{planned[target]} and {source} would both write {target}")
                planned[target] = source
        existing = [str(target) for target in planned if target.exists()]
        if existing and not args.overwrite:
            raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
        options = {
            "coils": args.coils,
            "matrix": tuple(args.matrix),
            "seed": args.seed,
            "overwrite": args.overwrite,
            "progress": args.progress,
            "min_brain_fraction": args.min_brain_fraction,
            "max_slices": args.max_slices,
        }
        for source in args.inputs:
            if source.suffix.lower() == ".npz":
                written = simulate_npz(source, args.output, contrasts=args.contrasts, **options)
            else:
                written = simulate_nifti(source, args.output, args.contrast, **options)
            for path in written:
                print(path)
    except (ValueError, TypeError, OSError, ImportError) as err:
        print(f"direct-nextaccel simulate: error: {err}", file=sys.stderr)
        return 2
    return 0

"""Convert the real raw multi-coil brain k-space in ``shared/data/kspace`` to the fastMRI layout.

Two public acquisitions are supported (both axial brains, 8 coils, k-space centred as DIRECT's
``ifft2(centered=True, normalized=True)`` expects; the coil-combined images were checked to show a centred brain):

- ``.mat`` (MATLAB v5, variable ``DATA`` of shape ``(readout, phase encode, coils)``, Lustig's ESPIRiT example
  ``brain_alias_8ch.mat``): only a contiguous block of phase-encode lines holds data (44..211 of 256), fully
  sampled; that block is kept, giving a fully sampled reduced-FOV acquisition (aliased by design), written as one
  slice ``(1, 8, 320, 168)`` with ``reconstruction_rss``.
- ``.npy`` complex ``(coils, H, W)`` prospectively undersampled without a reference (sigpy's Poisson-disc brain,
  ``sigpy_brain_8ch_poisson.npy``): written as one slice with a ``mask`` dataset, bool ``(H, W)``, true where any
  coil has a non-zero sample; no ``reconstruction_rss``/``max``/``norm`` (the zero-filled RSS is no reference).

Values are kept in scanner units (DIRECT normalises by a scaling factor). Outputs are named
``file_brain_AXT1_<source token>.h5`` from the source stem (:func:`~direct_nextaccel.data.fastmri_h5.source_filename`)
and carry ``source_file`` and ``source_sha256`` attrs; an existing output is replaced only with ``overwrite`` and only
when it came from the same source. k-space that is not finite, or all zero, is refused.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from direct_nextaccel.core.user_paths import check_output_folder
from direct_nextaccel.data.fastmri_h5 import (
    check_replaceable,
    file_sha256,
    source_attrs,
    source_filename,
    write_fastmri_h5,
)

RAW_ACQUISITION = "AXT1"
"""fastMRI acquisition name written for both sources (the ESPIRiT brain is an axial T1; sigpy's is T1-like)."""


def load_mat_kspace(path: str | Path, variable: str = "DATA") -> tuple[np.ndarray, tuple[int, int]]:
    """Fully sampled k-space of a MATLAB ``(readout, phase encode, coils)`` array, cropped to its acquired lines.

    Parameters
    ----------
    path : str or Path
        MATLAB v5 file.
    variable : str
        Name of the complex array in the file.

    Returns
    -------
    kspace : np.ndarray
        complex64 ``(1, coils, readout, acquired lines)``.
    lines : tuple[int, int]
        First and last (inclusive) acquired phase-encode line of the original array.
    """
    from scipy.io import loadmat

    path = Path(path)
    try:
        contents = loadmat(path, variable_names=[variable])
    except NotImplementedError as err:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise ValueError(f"{path} is not a MATLAB v5 file: {err}") from err
    except MemoryError:
        raise
    except Exception as err:  # corrupt or truncated files: MatReadError, ValueError, OSError, zlib errors, ...
        raise ValueError(f"{path} is not a readable MATLAB v5 file ({type(err).__name__}: {err})") from None
    if variable not in contents:
        raise ValueError(f"{path} has no variable {variable!r}")
    data = np.asarray(contents[variable])
    if data.ndim != 3 or not np.iscomplexobj(data):
        raise ValueError(
            f"{path}: {variable} must be complex (readout, phase encode, coils), got {data.dtype} {data.shape}"
        )
    check_finite(data, f"{path}: {variable}")
    acquired = np.flatnonzero(np.abs(data).sum(axis=(0, 2)) > 0)
    if acquired.size == 0:
        raise ValueError(f"{path}: {variable} holds only zeros")
    first, last = int(acquired[0]), int(acquired[-1])
    if acquired.size != last - first + 1:
        raise ValueError(f"{path}: acquired phase-encode lines {first}..{last} are not contiguous (undersampled data)")
    kspace = np.transpose(data[:, first : last + 1, :], (2, 0, 1))[None]  # 1, C, readout, lines
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by check_finite below
        kspace = kspace.astype(np.complex64)
    check_finite(kspace, f"{path}: {variable} as complex64")
    return kspace, (first, last)


def load_undersampled_npy(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Prospectively undersampled ``(coils, H, W)`` k-space and its sampling pattern.

    Parameters
    ----------
    path : str or Path
        ``.npy`` with a complex ``(coils, H, W)`` array, zero where not sampled.

    Returns
    -------
    kspace : np.ndarray
        complex64 ``(1, coils, H, W)``.
    mask : np.ndarray
        bool ``(H, W)``, true where any coil has a non-zero sample.
    """
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except MemoryError:
        raise
    except Exception as err:  # garbage, truncated files, object arrays
        reason = (
            "it holds pickled Python objects (object arrays), which are never loaded"
            if "pickle" in str(err)
            else f"{type(err).__name__}: {err}"
        )
        raise ValueError(f"{path} is not a readable .npy array ({reason})") from None
    if not isinstance(data, np.ndarray):
        data.close()
        raise ValueError(f"{path} is a .npz archive, not a .npy array")
    if data.ndim != 3 or not np.iscomplexobj(data):
        raise ValueError(f"{path} must hold a complex (coils, H, W) array, got {data.dtype} {data.shape}")
    if 0 in data.shape:
        raise ValueError(f"{path} has an empty axis: shape {data.shape}")
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by check_finite below
        kspace = data[None].astype(np.complex64)
    check_finite(kspace, f"{path} (as complex64)")
    mask = (np.abs(data) > 0).any(axis=0)
    if not mask.any():
        raise ValueError(f"{path} holds only zeros")
    if mask.all():
        raise ValueError(f"{path} has no unsampled k-space location: not prospectively undersampled")
    return kspace, mask


def check_finite(kspace: np.ndarray, name: str) -> None:
    """ValueError naming ``name`` and the count when ``kspace`` holds NaN or infinite values."""
    bad = int((~np.isfinite(kspace)).sum())
    if bad:
        raise ValueError(f"{name} holds {bad} NaN or infinite values")


def output_path(path: str | Path, output_dir: str | Path) -> Path:
    """Where :func:`import_raw` writes ``path``: ``file_brain_AXT1_<source token>.h5`` (distinct per source stem)."""
    return Path(output_dir) / source_filename(RAW_ACQUISITION, Path(path).stem)


def load_raw(path: str | Path) -> dict:
    """The arguments of :func:`~direct_nextaccel.data.fastmri_h5.write_fastmri_h5` for one raw source file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix.lower() == ".mat":
        kspace, (first, last) = load_mat_kspace(path)
        return {
            "kspace": kspace,
            "extra_attrs": {
                "source": f"real raw k-space {path.name}",
                "phase_encode_lines": np.array([first, last]),
                "note": "fully sampled reduced field of view in phase encode: aliased by design",
            },
        }
    if path.suffix.lower() == ".npy":
        kspace, mask = load_undersampled_npy(path)
        return {
            "kspace": kspace,
            "fully_sampled": False,
            "extra_datasets": {"mask": mask},
            "extra_attrs": {
                "source": f"real raw k-space {path.name}",
                "prospectively_undersampled": True,
                "note": "prospectively undersampled (2D pattern in 'mask'); no fully sampled reference exists",
                "acceleration": float(mask.size / mask.sum()),
            },
        }
    raise ValueError(f"{path} is neither .mat nor .npy raw k-space")


def import_raw(path: str | Path, output_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write one raw k-space file (``.mat`` or ``.npy``, see the module docstring) as a fastMRI-layout ``.h5``.

    Parameters
    ----------
    path : str or Path
        Source file.
    output_dir : str or Path
        Folder of the output (:func:`output_path`).
    overwrite : bool
        Replace an existing output written from this same source; one from another source is never replaced.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    contents = load_raw(path)
    return _write(path, output_path(path, output_dir), contents, file_sha256(path), overwrite)


def _write(path: Path, target: Path, contents: dict, sha256: str, overwrite: bool) -> Path:
    identity = source_attrs(path, sha256)
    check_replaceable(target, identity, overwrite)
    contents = dict(contents, extra_attrs={**contents["extra_attrs"], **identity})
    return write_fastmri_h5(target, acquisition=RAW_ACQUISITION, patient_id=path.stem, overwrite=True, **contents)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``direct-nextaccel import-raw``."""
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="raw k-space (.mat or .npy)")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="folder of the fastMRI .h5 files")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing outputs written from the same source"
    )


def run(args: argparse.Namespace) -> int:
    """Convert every input and print the written paths; a user error prints one line and returns 2.

    Every input is read and checked, and every output name and existing file, before anything is written.
    """
    try:
        check_output_folder(args.output, "--output")
        planned: dict[Path, Path] = {}
        for source in args.inputs:
            target = output_path(source, args.output)
            if target in planned:
                raise ValueError(f"{planned[target]} and {source} would both write {target}")
            planned[target] = source
        jobs = []
        for target, source in planned.items():
            contents, sha256 = load_raw(source), file_sha256(source)
            check_replaceable(target, source_attrs(source, sha256), args.overwrite)
            jobs.append((source, target, contents, sha256))
        for source, target, contents, sha256 in jobs:
            print(_write(source, target, contents, sha256, args.overwrite))
    except (ValueError, OSError, MemoryError) as err:
        print(f"direct-nextaccel import-raw: error: {err}", file=sys.stderr)
        return 2
    return 0

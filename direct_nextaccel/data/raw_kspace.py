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

Values are kept in scanner units (DIRECT normalises by a scaling factor).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from direct_nextaccel.data.fastmri_h5 import fastmri_filename, subject_id_from_stem, write_fastmri_h5

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
    if variable not in contents:
        raise ValueError(f"{path} has no variable {variable!r}")
    data = np.asarray(contents[variable])
    if data.ndim != 3 or not np.iscomplexobj(data):
        raise ValueError(
            f"{path}: {variable} must be complex (readout, phase encode, coils), got {data.dtype} {data.shape}"
        )
    acquired = np.flatnonzero(np.abs(data).sum(axis=(0, 2)) > 0)
    if acquired.size == 0:
        raise ValueError(f"{path}: {variable} holds only zeros")
    first, last = int(acquired[0]), int(acquired[-1])
    if acquired.size != last - first + 1:
        raise ValueError(f"{path}: acquired phase-encode lines {first}..{last} are not contiguous (undersampled data)")
    kspace = np.transpose(data[:, first : last + 1, :], (2, 0, 1))[None]  # 1, C, readout, lines
    return kspace.astype(np.complex64), (first, last)


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
    data = np.load(path)
    if data.ndim != 3 or not np.iscomplexobj(data):
        raise ValueError(f"{path} must hold a complex (coils, H, W) array, got {data.dtype} {data.shape}")
    mask = (np.abs(data) > 0).any(axis=0)
    if mask.all():
        raise ValueError(f"{path} has no unsampled k-space location: not prospectively undersampled")
    return data[None].astype(np.complex64), mask


def import_raw(path: str | Path, output_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write one raw k-space file (``.mat`` or ``.npy``, see the module docstring) as a fastMRI-layout ``.h5``.

    Parameters
    ----------
    path : str or Path
        Source file.
    output_dir : str or Path
        Folder of the output; the name is ``file_brain_AXT1_<site>_<digits>.h5`` derived from the source stem.
    overwrite : bool
        Replace an existing output.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    target = Path(output_dir) / fastmri_filename(RAW_ACQUISITION, subject_id_from_stem(path.stem))
    if path.suffix.lower() == ".mat":
        kspace, (first, last) = load_mat_kspace(path)
        return write_fastmri_h5(
            target,
            kspace,
            RAW_ACQUISITION,
            patient_id=path.stem,
            overwrite=overwrite,
            extra_attrs={
                "source": f"real raw k-space {path.name}",
                "phase_encode_lines": np.array([first, last]),
                "note": "fully sampled reduced field of view in phase encode: aliased by design",
            },
        )
    if path.suffix.lower() == ".npy":
        kspace, mask = load_undersampled_npy(path)
        return write_fastmri_h5(
            target,
            kspace,
            RAW_ACQUISITION,
            patient_id=path.stem,
            overwrite=overwrite,
            fully_sampled=False,
            extra_datasets={"mask": mask},
            extra_attrs={
                "source": f"real raw k-space {path.name}",
                "prospectively_undersampled": True,
                "note": "prospectively undersampled (2D pattern in 'mask'); no fully sampled reference exists",
                "acceleration": float(mask.size / mask.sum()),
            },
        )
    raise ValueError(f"{path} is neither .mat nor .npy raw k-space")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``direct-nextaccel import-raw``."""
    parser.add_argument("inputs", nargs="+", type=Path, metavar="FILE", help="raw k-space (.mat or .npy)")
    parser.add_argument("--output", type=Path, required=True, metavar="DIR", help="folder of the fastMRI .h5 files")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def run(args: argparse.Namespace) -> int:
    """Convert every input and print the written paths; a user error prints one line and returns 2."""
    try:
        for source in args.inputs:
            print(import_raw(source, args.output, overwrite=args.overwrite))
    except (ValueError, OSError) as err:
        print(f"direct-nextaccel import-raw: error: {err}", file=sys.stderr)
        return 2
    return 0

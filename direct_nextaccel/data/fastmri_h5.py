"""Write k-space in the fastMRI brain HDF5 layout, so DIRECT's ``FastMRIDataset`` reads our data like fastMRI's.

The layout (one file per volume) is the one of the fastMRI multicoil brain release:

- ``kspace``: complex64 ``(slices, coils, H, W)``, H the readout (ISMRMRD x), W the phase encode (ISMRMRD y), centred
  so that ``direct.data.transforms.ifft2(centered=True, normalized=True)`` over ``(H, W)`` gives the coil images;
- ``ismrmrd_header``: ISMRMRD XML from which DIRECT's ``_parse_fastmri_header`` reads the encoding and
  reconstruction sizes and the phase-encode padding (none here: ``padding_left=0``, ``padding_right=W``);
- ``reconstruction_rss``: float32 ``(slices, rh, rw)``, root-sum-of-squares of the coil images centre-cropped to the
  reconstruction size (crop start ``(N - n) // 2``, DIRECT's and fastMRI's convention);
- attrs ``max`` and ``norm`` (maximum and Frobenius norm of ``reconstruction_rss``), ``acquisition``, ``patient_id``.
"""

import hashlib
import os
import re
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

ACQUISITIONS = ("AXT1", "AXT1PRE", "AXT1POST", "AXT2", "AXFLAIR")
"""Acquisition names of the fastMRI brain release (the ``acquisition`` attr and the file-name token)."""

ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"
GYROMAGNETIC_RATIO_HZ_PER_T = 42.577478e6

_RESERVED_DATASETS = ("kspace", "ismrmrd_header", "reconstruction_rss")
_RESERVED_ATTRS = ("max", "norm", "acquisition", "patient_id")
_SUBJECT_ID = re.compile(r"^\d+_\d+$")


def fastmri_filename(acquisition: str, subject_id: str) -> str:
    """File name following the fastMRI brain naming, ``file_brain_<ACQUISITION>_<digits>_<digits>.h5``.

    Parameters
    ----------
    acquisition : str
        One of :data:`ACQUISITIONS`.
    subject_id : str
        Two groups of digits joined by ``_`` (in fastMRI: site and exam), e.g. from :func:`subject_id_from_stem`.

    Returns
    -------
    str
        For example ``file_brain_AXT1_201_6002717.h5``.
    """
    _check_acquisition(acquisition)
    if not _SUBJECT_ID.match(subject_id):
        raise ValueError(f"subject id {subject_id!r} is not two groups of digits joined by '_' (e.g. '201_6002717')")
    return f"file_brain_{acquisition}_{subject_id}.h5"


def subject_id_from_stem(stem: str) -> str:
    """Stable fastMRI-style subject id ``<site>_<exam>`` for a source file stem such as ``tcga_du_7294_skullstripped``.

    The exam group is the stem's longest run of digits (``7294``; the first if tied; a CRC of the stem when there is
    none), so contrast tokens such as ``t1`` do not leak into it. The three-digit site group
    is a CRC of the whole stem, so two files of one subject (``tcga_fg_6692_native`` and
    ``tcga_fg_6692_skullstripped``) do not collide in one output folder. The full stem is kept in the
    ``patient_id`` attr.

    Parameters
    ----------
    stem : str
        Source file name without suffixes.

    Returns
    -------
    str
        For example ``'412_7294'``.
    """
    checksum = zlib.crc32(stem.lower().encode())
    runs = re.findall(r"\d+", stem)
    digits = max(runs, key=len) if runs else str(checksum % 10_000_000)
    return f"{100 + checksum % 900}_{digits}"


def source_token(stem: str) -> str:
    """Name token of a source file stem, distinct for distinct stems: ``tcga_fg_6692_native`` -> itself.

    A stem already made of lowercase letters, digits and single inner ``_`` is used unchanged (readable names for the
    shared data); any other stem is slugged and gets the first 8 hex digits of its SHA-256, so ``Scan-1`` and
    ``scan_1`` (or two stems that slug alike) keep distinct names. Unlike :func:`subject_id_from_stem`, no CRC modulo
    a small number is involved, so two subjects never share a name.
    """
    slug = re.sub(r"[^a-z0-9]+", "_", stem.lower()).strip("_")
    if slug == stem:
        return slug
    digest = hashlib.sha256(stem.encode()).hexdigest()[:8]
    return f"{slug}_{digest}" if slug else digest


def source_filename(acquisition: str, stem: str) -> str:
    """``file_brain_<ACQUISITION>_<source token>.h5``: the fastMRI name pattern with :func:`source_token` as subject.

    Sibling contrasts of one source share the token, as the fastMRI release's sibling acquisitions share their
    subject id (``reference.reference_filename`` relies on it).
    """
    _check_acquisition(acquisition)
    return f"file_brain_{acquisition}_{source_token(stem)}.h5"


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def source_attrs(source: str | os.PathLike, sha256: str, contrast: str = "") -> dict[str, str]:
    """The provenance attrs a written file carries: ``source_file`` (name), ``source_sha256``, ``source_contrast``."""
    return {"source_file": Path(source).name, "source_sha256": sha256, "source_contrast": contrast}


def check_replaceable(target: Path, attrs: Mapping[str, str], overwrite: bool) -> None:
    """Raise unless writing ``target`` for the source described by ``attrs`` (:func:`source_attrs`) is safe.

    An absent ``target`` is always fine. An existing one needs ``overwrite`` and must have been written from the same
    source: same file name, same contents (SHA-256) and same contrast. A file from another source, or one without
    these attrs, is never replaced: ``FileExistsError`` naming both sources, in one line.
    """
    if not target.exists():
        return
    wanted = f"{attrs['source_file']}" + (f":{attrs['source_contrast']}" if attrs.get("source_contrast") else "")
    try:
        with h5py.File(target, "r") as file:
            held = {key: file.attrs.get(key) for key in ("source_file", "source_sha256", "source_contrast")}
    except (OSError, ValueError) as err:
        raise FileExistsError(
            f"refusing to replace {target} with {wanted}: it is not a readable HDF5 file ({err}); remove it by hand"
        ) from None
    held = {key: value.decode() if isinstance(value, bytes) else value for key, value in held.items()}
    if held["source_file"] is None or held["source_sha256"] is None:
        raise FileExistsError(
            f"refusing to replace {target} with {wanted}: it records no source file (written by something else); "
            "remove it by hand"
        )
    have = f"{held['source_file']}" + (f":{held['source_contrast']}" if held.get("source_contrast") else "")
    same = (
        held["source_file"] == attrs["source_file"]
        and held["source_sha256"] == attrs["source_sha256"]
        and (held["source_contrast"] or "") == (attrs.get("source_contrast") or "")
    )
    if not same:
        detail = " (same name, different contents)" if have == wanted else ""
        raise FileExistsError(f"refusing to replace {target}: it came from {have}, not {wanted}{detail}")
    if not overwrite:
        raise FileExistsError(f"{target} already exists (from {have}); pass --overwrite to replace it")


def centered_ifft2(kspace: np.ndarray) -> np.ndarray:
    """Orthonormal centred inverse FFT over the last two axes, as ``direct.data.transforms.ifft2`` computes it."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(kspace, axes=axes), axes=axes, norm="ortho"), axes=axes)


def centered_fft2(image: np.ndarray) -> np.ndarray:
    """Orthonormal centred FFT over the last two axes, the inverse of :func:`centered_ifft2`."""
    axes = (-2, -1)
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image, axes=axes), axes=axes, norm="ortho"), axes=axes)


def center_crop(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Crop the last two axes to ``shape`` starting at ``(N - n) // 2``, as DIRECT and fastMRI do."""
    height, width = array.shape[-2:]
    top, left = (height - shape[0]) // 2, (width - shape[1]) // 2
    return array[..., top : top + shape[0], left : left + shape[1]]


def rss_reconstruction(kspace: np.ndarray, reconstruction_size: tuple[int, int]) -> np.ndarray:
    """Root-sum-of-squares of the coil images, centre-cropped to ``reconstruction_size``.

    Parameters
    ----------
    kspace : np.ndarray
        Complex ``(slices, coils, H, W)``.
    reconstruction_size : tuple[int, int]
        ``(rh, rw)``, each not larger than ``(H, W)``.

    Returns
    -------
    np.ndarray
        float32 ``(slices, rh, rw)``.
    """
    out = np.empty((kspace.shape[0], *reconstruction_size), dtype=np.float32)
    for index, slice_kspace in enumerate(kspace):  # one slice at a time: whole volumes can be gigabytes
        coil_images = centered_ifft2(slice_kspace)  # C, H, W
        out[index] = center_crop(np.sqrt((np.abs(coil_images) ** 2).sum(0)), reconstruction_size)
    return out


def ismrmrd_header(
    encoding_size: tuple[int, int],
    reconstruction_size: tuple[int, int],
    num_slices: int,
    num_coils: int,
    *,
    acquisition: str,
    patient_id: str = "",
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    field_strength_t: float = 3.0,
) -> str:
    """ISMRMRD XML header (schema version 2 element order) describing fully sampled Cartesian 2D slices.

    Parameters
    ----------
    encoding_size : tuple[int, int]
        ``(H, W)`` of the stored k-space: ISMRMRD encoded matrix ``x`` (readout) and ``y`` (phase encode).
    reconstruction_size : tuple[int, int]
        ``(rh, rw)``: ISMRMRD recon matrix ``x`` and ``y``.
    num_slices, num_coils : int
        Slice count (``encodingLimits/slice``) and receiver channels.
    acquisition : str
        Written as ``protocolName``.
    patient_id : str
        Written as ``subjectInformation/patientID``.
    voxel_size_mm : tuple[float, float, float]
        Voxel size along ``(x, y, z)`` = ``(H, W, slice)``; fields of view are matrix size times voxel size.
    field_strength_t : float
        Nominal field strength, written as the proton resonance frequency the schema requires.

    Returns
    -------
    str
        The XML document.
    """

    def element(parent: ET.Element, tag: str, text: object | None = None) -> ET.Element:
        node = ET.SubElement(parent, tag)  # inherits the default namespace of the root
        if text is not None:
            node.text = str(text)
        return node

    def xyz(parent: ET.Element, tag: str, values: tuple) -> None:
        node = element(parent, tag)
        for axis, value in zip("xyz", values, strict=True):
            element(node, axis, value)

    def limits(parent: ET.Element, tag: str, maximum: int, center: int) -> None:
        node = element(parent, tag)
        element(node, "minimum", 0)
        element(node, "maximum", maximum)
        element(node, "center", center)

    root = ET.Element("ismrmrdHeader", xmlns=ISMRMRD_NAMESPACE)
    element(root, "version", 2)
    if patient_id:
        element(element(root, "subjectInformation"), "patientID", patient_id)
    measurement = element(root, "measurementInformation")
    element(measurement, "patientPosition", "HFS")
    element(measurement, "protocolName", acquisition)
    system = element(root, "acquisitionSystemInformation")
    element(system, "systemFieldStrength_T", f"{field_strength_t:g}")
    element(system, "receiverChannels", num_coils)
    larmor_hz = round(field_strength_t * GYROMAGNETIC_RATIO_HZ_PER_T)
    element(element(root, "experimentalConditions"), "H1resonanceFrequency_Hz", larmor_hz)

    encoding = element(root, "encoding")
    for tag, (rows, cols) in (("encodedSpace", encoding_size), ("reconSpace", reconstruction_size)):
        space = element(encoding, tag)
        xyz(space, "matrixSize", (rows, cols, 1))
        xyz(space, "fieldOfView_mm", tuple(f"{n * mm:g}" for n, mm in zip((rows, cols, 1), voxel_size_mm, strict=True)))
    encoding_limits = element(encoding, "encodingLimits")
    # DIRECT: padding_left = y // 2 - center = 0 and padding_right = padding_left + maximum + 1 = W (nothing padded).
    limits(encoding_limits, "kspace_encoding_step_1", encoding_size[1] - 1, encoding_size[1] // 2)
    limits(encoding_limits, "kspace_encoding_step_2", 0, 0)
    limits(encoding_limits, "slice", num_slices - 1, num_slices // 2)
    element(encoding, "trajectory", "cartesian")
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def write_fastmri_h5(
    path: str | os.PathLike,
    kspace: np.ndarray,
    acquisition: str,
    *,
    reconstruction_size: tuple[int, int] | None = None,
    patient_id: str = "",
    overwrite: bool = False,
    extra_attrs: Mapping[str, object] | None = None,
    extra_datasets: Mapping[str, np.ndarray] | None = None,
    voxel_size_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
    fully_sampled: bool = True,
) -> Path:
    """Write one volume in the fastMRI brain layout (see the module docstring).

    The file is written to a temporary name in the same folder and renamed at the end, so an interrupted run never
    leaves a truncated file under ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.h5`` file; its folder is created if needed.
    kspace : np.ndarray
        Complex ``(slices, coils, H, W)``, centred (see the module docstring); stored as complex64.
    acquisition : str
        One of :data:`ACQUISITIONS`.
    reconstruction_size : tuple[int, int], optional
        ``(rh, rw)`` of ``reconstruction_rss`` and of the header's recon matrix; default ``(H, W)``.
    patient_id : str
        Stored as the ``patient_id`` attr and in the header.
    overwrite : bool
        Replace an existing ``path``; otherwise an existing file raises ``FileExistsError``.
    extra_attrs : Mapping[str, object], optional
        More file attrs (e.g. provenance); may not redefine ``max``, ``norm``, ``acquisition``, ``patient_id``.
    extra_datasets : Mapping[str, np.ndarray], optional
        More datasets (e.g. a sampling ``mask``); may not redefine the layout's datasets.
    voxel_size_mm : tuple[float, float, float]
        Voxel size along ``(H, W, slice)``, for the header's fields of view.
    fully_sampled : bool
        False for prospectively undersampled k-space: no ``reconstruction_rss``, ``max`` or ``norm`` is written
        (like fastMRI's test split), because the RSS of zero-filled data is no reference.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
    _check_acquisition(acquisition)
    kspace = np.asarray(kspace)
    if kspace.ndim != 4:
        raise ValueError(f"kspace must be (slices, coils, H, W), got shape {kspace.shape}")
    if not np.iscomplexobj(kspace):
        raise TypeError(f"kspace must be complex, got dtype {kspace.dtype}")
    if 0 in kspace.shape:
        raise ValueError(f"kspace has an empty axis: shape {kspace.shape}")
    num_slices, num_coils, height, width = kspace.shape
    if reconstruction_size is None:
        reconstruction_size = (height, width)
    reconstruction_size = tuple(int(n) for n in reconstruction_size)
    rh, rw = reconstruction_size if len(reconstruction_size) == 2 else (0, 0)
    if not (0 < rh <= height and 0 < rw <= width):
        raise ValueError(f"reconstruction_size {reconstruction_size} is not 2 sizes within k-space {(height, width)}")
    extra_attrs = dict(extra_attrs or {})
    extra_datasets = dict(extra_datasets or {})
    if clash := sorted(set(extra_attrs) & set(_RESERVED_ATTRS)):
        raise ValueError(f"extra_attrs may not redefine {clash}")
    if clash := sorted(set(extra_datasets) & set(_RESERVED_DATASETS)):
        raise ValueError(f"extra_datasets may not redefine {clash}")

    header = ismrmrd_header(
        (height, width),
        reconstruction_size,
        num_slices,
        num_coils,
        acquisition=acquisition,
        patient_id=patient_id,
        voxel_size_mm=voxel_size_mm,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not matched by DIRECT's ``*.h5`` glob while being written.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with h5py.File(temporary, "w") as file:
            file.create_dataset("kspace", data=kspace.astype(np.complex64, copy=False))
            # fastMRI stores the header as a byte string scalar; DIRECT passes its bytes to ElementTree.
            file.create_dataset("ismrmrd_header", data=np.bytes_(header.encode()))
            if fully_sampled:
                rss = rss_reconstruction(kspace, reconstruction_size)
                file.create_dataset("reconstruction_rss", data=rss)
                file.attrs["max"] = float(rss.max())
                file.attrs["norm"] = float(np.linalg.norm(rss))
            for name, value in extra_datasets.items():
                file.create_dataset(name, data=value)
            file.attrs["acquisition"] = acquisition
            file.attrs["patient_id"] = patient_id
            for name, value in extra_attrs.items():
                file.attrs[name] = value
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def _check_acquisition(acquisition: str) -> None:
    if acquisition not in ACQUISITIONS:
        raise ValueError(f"acquisition {acquisition!r} is not one of the fastMRI brain acquisitions {ACQUISITIONS}")

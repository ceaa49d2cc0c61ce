"""fastMRI slices paired with the same slice of another acquisition of the subject: MIAR's multi-contrast input.

MIAR's multimodal setup (paper section 4.1.1) super-resolves a T2 slice guided by the fully sampled T1 slice of the
same subject. :class:`FastMRIReferenceDataset` is DIRECT's :class:`~direct.data.datasets.FastMRIDataset` restricted to
the target acquisitions (``target_acquisitions``), whose samples also carry ``reference_image``: the root-sum-of-squares
image (H, W) of the same slice of the sibling file, the file whose name has ``reference_acquisition`` in place of the
target's (``file_brain_AXT2_398_7294.h5`` -> ``file_brain_AXT1_398_7294.h5``, as ``direct-nextaccel simulate`` and the
fastMRI brain release name the acquisitions of one exam).

How the reference meets DIRECT's transforms
    DIRECT's transforms only know their own keys: ``ToTensor`` would leave an extra key a NumPy array, masking, coil
    compression, sensitivity estimation and normalisation ignore it, but random rotations, flips, reversals, rescaling,
    padding and random crops would move the target's pixels and not the reference's. The reference is therefore
    attached *after* DIRECT's transform, as a float32 tensor centre-cropped or zero-padded to the transformed k-space's
    matrix (DIRECT's own centre crop, ``cropping.image_center_crop: true``, takes the same ``(N - n) // 2`` offset, so
    it stays aligned), and a transform that would misalign it is refused when the dataset is built. Its intensity is
    left as stored: DIRECT's scaling factor belongs to the target's k-space, and the model normalises the reference by
    its own maximum (:meth:`direct_nextaccel.miar.miar.MIAR.context`).

Usable from YAML as ``name: FastMRIReference`` through the ``direct.datasets`` entry point of this package.
"""

import pathlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

# DIRECT's datasets_config imports itself back through direct.config.defaults unless that module is loaded first.
import direct.config.defaults  # noqa: F401
import h5py
import numpy as np
import torch
from direct.data import mri_transforms
from direct.data.datasets import FastMRIDataset
from direct.data.datasets_config import FastMRIConfig

from direct_nextaccel.core.images import center_crop_or_pad
from direct_nextaccel.data.fastmri_h5 import rss_reconstruction

__all__ = ["FastMRIReferenceConfig", "FastMRIReferenceDataset", "reference_filename"]

_FASTMRI_NAME = re.compile(r"^file_brain_(?P<acquisition>[^_]+)_(?P<subject>.+)\.h5$")

# DIRECT transforms that change the k-space's pixel grid in a way the reference cannot follow after the fact.
_MISALIGNING = (
    mri_transforms.RandomRotation,
    mri_transforms.RandomFlip,
    mri_transforms.RandomReverse,
    mri_transforms.RescaleKspace,
    mri_transforms.PadKspace,
)


@dataclass
class FastMRIReferenceConfig(FastMRIConfig):
    """Keys of ``name: FastMRIReference`` datasets, besides DIRECT's FastMRI keys."""

    reference_acquisition: str = "AXT1"
    target_acquisitions: list[str] = field(default_factory=lambda: ["AXT2"])


def reference_filename(path: pathlib.Path, reference_acquisition: str) -> pathlib.Path:
    """The sibling file of ``path`` holding ``reference_acquisition`` of the same subject, in the same folder."""
    match = _FASTMRI_NAME.match(path.name)
    if match is None:
        raise ValueError(f"file name {path.name!r} does not follow fastMRI's file_brain_<ACQUISITION>_<subject>.h5")
    return path.with_name(f"file_brain_{reference_acquisition}_{match['subject']}.h5")


def _transform_steps(transform: Any) -> Iterator[Any]:
    """Every step of a (nested) DIRECT transform: ``Compose.transforms`` and the modules inside ``ModuleWrapper``."""
    if transform is None:
        return
    yield transform
    for step in getattr(transform, "transforms", None) or ():
        yield from _transform_steps(step)
    inner = getattr(transform, "_transform", None)
    if inner is not None:
        yield from _transform_steps(inner)


def check_transform(transform: Any) -> None:
    """Refuse DIRECT transforms that would move the target's pixels but not the reference's.

    Raises
    ------
    ValueError
        Naming the transform: a random rotation, flip or reversal, a rescale, a k-space pad or a random crop.
    """
    for step in _transform_steps(transform):
        random_crop = isinstance(step, mri_transforms.CropKspace) and not step.image_space_center_crop
        if random_crop or isinstance(step, _MISALIGNING):
            raise ValueError(
                f"transform {type(step).__name__} would misalign reference_image with the target: FastMRIReference "
                "needs no random augmentation, rescale or pad, and cropping.image_center_crop: true when cropping"
            )


class FastMRIReferenceDataset(FastMRIDataset):
    """fastMRI slices of the target acquisitions with the fully sampled RSS image of a reference acquisition.

    Parameters
    ----------
    data_root : pathlib.Path
        Folder of the target files and their reference siblings.
    transform : Callable, optional
        DIRECT's transform; it runs before ``reference_image`` is attached (see the module docstring).
    reference_acquisition : str
        Acquisition token of the guiding contrast (default ``AXT1``).
    target_acquisitions : Sequence[str]
        Acquisition tokens whose files become samples (default ``("AXT2",)``); other files, the references included,
        are not samples.
    **kwargs
        DIRECT's :class:`FastMRIDataset` arguments (``filenames_filter``, ``regex_filter``, ``pass_mask``, ...).

    Raises
    ------
    ValueError
        If the reference acquisition is one of the targets, a target file's name is not fastMRI's, its sibling file is
        missing or differs in slice count or matrix, or the transform would misalign the reference.
    """

    config_class = FastMRIReferenceConfig

    def __init__(
        self,
        data_root: pathlib.Path,
        transform: Any = None,
        reference_acquisition: str = "AXT1",
        target_acquisitions: Sequence[str] = ("AXT2",),
        **kwargs: Any,
    ) -> None:
        if isinstance(target_acquisitions, str):
            raise TypeError(f"target_acquisitions {target_acquisitions!r} must be a list of acquisitions, not a string")
        self.reference_acquisition = str(reference_acquisition)
        self.target_acquisitions = tuple(str(acquisition) for acquisition in target_acquisitions)
        if not self.target_acquisitions:
            raise ValueError("target_acquisitions is empty: name the acquisition(s) to super-resolve, e.g. ['AXT2']")
        if self.reference_acquisition in self.target_acquisitions:
            raise ValueError(
                f"reference_acquisition {self.reference_acquisition!r} is one of the target_acquisitions "
                f"{list(self.target_acquisitions)}: the reference must be another acquisition"
            )
        check_transform(transform)
        super().__init__(data_root=data_root, transform=transform, **kwargs)

    def parse_filenames_data(self, filenames, extra_h5s=None, filter_slice=None) -> None:
        """Keep the target acquisitions' files and check each has a matching reference sibling, then DIRECT's."""
        targets = []
        for filename in map(pathlib.Path, filenames):
            match = _FASTMRI_NAME.match(filename.name)
            if match is None or match["acquisition"] not in self.target_acquisitions:
                continue
            self._check_sibling(filename)
            targets.append(filename)
        super().parse_filenames_data(targets, extra_h5s=extra_h5s, filter_slice=filter_slice)

    def _check_sibling(self, filename: pathlib.Path) -> None:
        sibling = reference_filename(filename, self.reference_acquisition)
        if not sibling.is_file():
            raise ValueError(f"reference file {sibling.name!r} of {filename.name!r} does not exist in {sibling.parent}")
        with h5py.File(filename, "r") as target, h5py.File(sibling, "r") as reference:
            target_shape, reference_shape = target["kspace"].shape, reference["kspace"].shape
        if target_shape[0] != reference_shape[0]:
            raise ValueError(
                f"reference file {sibling.name!r} has {reference_shape[0]} slices, {filename.name!r} has "
                f"{target_shape[0]}"
            )
        if target_shape[-2:] != reference_shape[-2:]:
            raise ValueError(
                f"reference file {sibling.name!r} has matrix {tuple(reference_shape[-2:])}, {filename.name!r} has "
                f"{tuple(target_shape[-2:])}"
            )

    def reference_image(self, filename: pathlib.Path, slice_no: int) -> np.ndarray:
        """Fully sampled RSS image (H, W) of slice ``slice_no`` of ``filename``'s reference sibling."""
        with h5py.File(reference_filename(filename, self.reference_acquisition), "r") as reference:
            kspace = reference["kspace"][slice_no : slice_no + 1]  # 1, C, H, W (1, H, W single-coil)
        if kspace.ndim == 3:
            kspace = kspace[:, None]
        return rss_reconstruction(kspace, kspace.shape[-2:])[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        """DIRECT's sample after its transform, plus ``reference_image`` (H, W) at the transformed matrix."""
        sample = super().__getitem__(index)
        filename, slice_no = self.data[index]
        image = torch.from_numpy(self.reference_image(pathlib.Path(filename), slice_no))
        sample["reference_image"] = center_crop_or_pad(image, _matrix(sample))
        return sample


def _matrix(sample: dict[str, Any]) -> tuple[int, int]:
    """(H, W) of the sample's k-space: DIRECT's tensors are (C, H, W, 2), untransformed arrays (C, H, W) complex."""
    kspace = sample["masked_kspace"] if "masked_kspace" in sample else sample["kspace"]
    return tuple(kspace.shape[-3:-1]) if isinstance(kspace, torch.Tensor) else tuple(kspace.shape[-2:])

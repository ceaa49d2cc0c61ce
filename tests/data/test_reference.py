"""FastMRIReference: target slices carry the sibling acquisition's fully sampled RSS slice, through DIRECT's
transforms, and bad folders or settings fail with one line naming the value."""

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from direct_nextaccel.data.fastmri_h5 import fastmri_filename, rss_reconstruction, write_fastmri_h5
from direct_nextaccel.data.reference import FastMRIReferenceConfig, FastMRIReferenceDataset, reference_filename
from direct_nextaccel.data.simulate import simulate_volume

SIZE = 32


def volume(slices: int, size: int = SIZE, shift: float = 0.0) -> np.ndarray:
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    return np.stack(
        [((xx - shift) ** 2 / 0.5 + yy**2 / 0.7 < 1) * (1.0 + 0.3 * i + 0.2 * np.sin(9 * xx)) for i in range(slices)]
    ).astype(np.float32)


def write(root: Path, acquisition: str, subject: str, slices: int = 2, size: int = SIZE, seed: int = 0) -> Path:
    kspace, _ = simulate_volume(volume(slices, size, shift=0.1 * seed), coils=2, matrix=(size, size), seed=seed)
    return write_fastmri_h5(root / fastmri_filename(acquisition, subject), kspace, acquisition)


@pytest.fixture
def root(tmp_path) -> Path:
    """Subject 900_0001 with T1, T2 and FLAIR; subject 900_0002 with T1 and T2."""
    for seed, (acquisition, subject) in enumerate(
        [
            ("AXT1", "900_0001"),
            ("AXT2", "900_0001"),
            ("AXFLAIR", "900_0001"),
            ("AXT1", "900_0002"),
            ("AXT2", "900_0002"),
        ]
    ):
        write(tmp_path, acquisition, subject, seed=seed)
    return tmp_path


def sibling_rss(path: Path, slice_no: int) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        kspace = handle["kspace"][()]
    return rss_reconstruction(kspace, kspace.shape[-2:])[slice_no]


def test_reference_slice_is_the_sibling_files_rss(root):
    dataset = FastMRIReferenceDataset(root)
    assert len(dataset) == 4  # the two AXT2 volumes of two slices; T1 and FLAIR files are not samples
    for index in range(len(dataset)):
        sample = dataset[index]
        target = Path(sample["filename"])
        assert "_AXT2_" in target.name
        reference = sample["reference_image"]
        assert reference.dtype == torch.float32 and reference.shape == (SIZE, SIZE)
        expected = sibling_rss(root / target.name.replace("AXT2", "AXT1"), sample["slice_no"])
        np.testing.assert_allclose(reference.numpy(), expected, rtol=1e-5, atol=1e-6 * expected.max())


def test_other_targets_and_reference(root):
    dataset = FastMRIReferenceDataset(root, reference_acquisition="AXT2", target_acquisitions=["AXT1", "AXFLAIR"])
    names = sorted({Path(name).name for name, _ in dataset.data})
    assert names == [
        fastmri_filename(a, s) for a, s in (("AXFLAIR", "900_0001"), ("AXT1", "900_0001"), ("AXT1", "900_0002"))
    ]
    assert reference_filename(root / names[0], "AXT2").name == fastmri_filename("AXT2", "900_0001")


def direct_transforms(**transforms):
    """DIRECT's transforms of a 4 x 4 super-resolution dataset, built from YAML-like keys as `direct train` does."""
    from direct.common.subsample import build_masking_function
    from direct.data.mri_transforms import build_mri_transforms
    from direct.data.transforms import fft2, ifft2
    from direct.utils import dict_flatten, remove_keys

    yaml = {"masking": {"name": "SuperResolution", "accelerations": [16]}, "delete_kspace": False, **transforms}
    config = OmegaConf.merge(OmegaConf.structured(FastMRIReferenceConfig), {"name": "x", "transforms": yaml})
    mask_func = build_masking_function(**config.transforms.masking)
    keys = dict_flatten(dict(remove_keys(config.transforms, "masking")))
    return build_mri_transforms(forward_operator=fft2, backward_operator=ifft2, mask_func=mask_func, **keys)


def test_reference_survives_directs_transforms_and_centre_crop(root):
    """Masking, sensitivity estimation and normalisation leave the reference as stored; DIRECT's image-space centre
    crop and the reference's crop take the same window, so the T2 target and the T1 reference stay aligned."""
    plain = FastMRIReferenceDataset(root)[0]
    transformed = FastMRIReferenceDataset(root, transform=direct_transforms())[0]
    assert {"masked_kspace", "sensitivity_map", "target", "scaling_factor"} <= set(transformed)
    assert torch.equal(transformed["reference_image"], plain["reference_image"])

    crop = {"cropping": {"crop": "(24, 20)", "image_center_crop": True}}
    cropped = FastMRIReferenceDataset(root, transform=direct_transforms(**crop))[0]
    assert cropped["masked_kspace"].shape[1:3] == (24, 20)
    assert torch.equal(cropped["reference_image"], plain["reference_image"][4:28, 6:26])


@pytest.mark.parametrize(
    ("transforms", "name"),
    [
        ({"cropping": {"crop": "(24, 20)", "image_center_crop": False}}, "CropKspace"),
        ({"random_augmentations": {"random_flip_probability": 0.5}}, "RandomFlip"),
        ({"random_augmentations": {"random_rotation_probability": 0.5}}, "RandomRotation"),
    ],
)
def test_transforms_that_would_misalign_the_reference_are_refused(root, transforms, name):
    with pytest.raises(ValueError, match=rf"^transform {name} would misalign reference_image with the target"):
        FastMRIReferenceDataset(root, transform=direct_transforms(**transforms))


def test_missing_sibling(root):
    (root / fastmri_filename("AXT1", "900_0002")).unlink()
    with pytest.raises(
        ValueError, match=r"^reference file 'file_brain_AXT1_900_0002.h5' of 'file_brain_AXT2_900_0002.h5' "
    ):
        FastMRIReferenceDataset(root)


def test_sibling_with_other_slice_count_or_matrix(root):
    path = root / fastmri_filename("AXT1", "900_0002")
    path.unlink()
    write(root, "AXT1", "900_0002", slices=3)
    with pytest.raises(ValueError, match=r"^reference file 'file_brain_AXT1_900_0002.h5' has 3 slices, .* has 2$"):
        FastMRIReferenceDataset(root)
    path.unlink()
    write(root, "AXT1", "900_0002", size=24)
    with pytest.raises(ValueError, match=r"has matrix \(24, 24\), 'file_brain_AXT2_900_0002.h5' has \(32, 32\)$"):
        FastMRIReferenceDataset(root)


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"reference_acquisition": "AXT2"}, ValueError, r"^reference_acquisition 'AXT2' is one of the target_acq"),
        ({"target_acquisitions": []}, ValueError, r"^target_acquisitions is empty"),
        ({"target_acquisitions": "AXT2"}, TypeError, r"^target_acquisitions 'AXT2' must be a list"),
    ],
)
def test_bad_settings_name_the_value(root, settings, error, message):
    with pytest.raises(error, match=message):
        FastMRIReferenceDataset(root, **settings)

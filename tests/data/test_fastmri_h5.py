"""The fastMRI-layout writer: round trip, header, DIRECT's reader, overwrite protection, bad input."""

import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
from direct.data import transforms as T
from direct.data.datasets import FastMRIDataset, _parse_fastmri_header

from direct_nextaccel.data.fastmri_h5 import (
    ISMRMRD_NAMESPACE,
    fastmri_filename,
    subject_id_from_stem,
    write_fastmri_h5,
)


def random_kspace(shape=(2, 3, 16, 12), seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


def direct_rss(kspace: np.ndarray) -> np.ndarray:
    """RSS of DIRECT's ``ifft2(centered=True, normalized=True)`` of ``(coils, H, W)`` complex k-space."""
    images = T.ifft2(T.to_tensor(kspace), dim=(1, 2), centered=True, normalized=True)  # C, H, W, 2
    return T.root_sum_of_squares(images, dim=0).numpy()


def test_round_trip_layout_and_reconstruction(tmp_path):
    kspace = random_kspace()
    path = write_fastmri_h5(
        tmp_path / "file_brain_AXT2_201_7.h5", kspace, "AXT2", reconstruction_size=(10, 8), patient_id="subject-7"
    )
    with h5py.File(path, "r") as file:
        assert set(file) == {"kspace", "ismrmrd_header", "reconstruction_rss"}
        assert file["kspace"].dtype == np.complex64
        np.testing.assert_array_equal(file["kspace"][()], kspace)
        rss = file["reconstruction_rss"][()]
        attrs = dict(file.attrs)
    assert rss.dtype == np.float32 and rss.shape == (2, 10, 8)
    for index in range(2):
        # Centre crop of 16x12 to 10x8 starts at (3, 2), DIRECT's (N - n) // 2.
        np.testing.assert_allclose(rss[index], direct_rss(kspace[index])[3:13, 2:10], rtol=1e-5, atol=1e-6)
    assert attrs["acquisition"] == "AXT2" and attrs["patient_id"] == "subject-7"
    assert attrs["max"] == pytest.approx(rss.max())
    assert attrs["norm"] == pytest.approx(np.linalg.norm(rss), rel=1e-6)


def test_header_parsed_by_direct(tmp_path):
    path = write_fastmri_h5(
        tmp_path / "a.h5", random_kspace(), "AXT1", reconstruction_size=(10, 8), voxel_size_mm=(0.5, 0.75, 5.0)
    )
    with h5py.File(path, "r") as file:
        header = file["ismrmrd_header"][()]
    assert _parse_fastmri_header(header) == {
        "padding_left": 0,
        "padding_right": 12,
        "encoding_size": (16, 12, 1),
        "reconstruction_size": (10, 8, 1),
    }
    root = ET.fromstring(header)
    ns = {"m": ISMRMRD_NAMESPACE}
    fov = [float(root.find(f"m:encoding/m:encodedSpace/m:fieldOfView_mm/m:{axis}", ns).text) for axis in "xyz"]
    assert fov == [8.0, 9.0, 5.0]
    assert root.find("m:encoding/m:trajectory", ns).text == "cartesian"
    assert root.find("m:measurementInformation/m:protocolName", ns).text == "AXT1"
    assert root.find("m:acquisitionSystemInformation/m:receiverChannels", ns).text == "3"


def test_direct_fastmri_dataset_reads_the_file_unchanged(tmp_path):
    kspace = random_kspace(seed=1)
    write_fastmri_h5(tmp_path / fastmri_filename("AXFLAIR", "201_42"), kspace, "AXFLAIR")
    dataset = FastMRIDataset(tmp_path, transform=None)
    assert len(dataset) == 2
    sample = dataset[1]
    np.testing.assert_array_equal(sample["kspace"], kspace[1])
    assert (sample["padding_left"], sample["padding_right"]) == (0, 12)
    assert sample["reconstruction_size"] == (16, 12, 1)
    with h5py.File(tmp_path / fastmri_filename("AXFLAIR", "201_42"), "r") as file:
        assert sample["scaling_factor"] == file.attrs["max"]
        np.testing.assert_allclose(direct_rss(sample["kspace"]), file["reconstruction_rss"][1], rtol=1e-5, atol=1e-6)


def test_existing_file_is_not_overwritten(tmp_path):
    path = write_fastmri_h5(tmp_path / "a.h5", random_kspace(seed=0), "AXT1")
    with pytest.raises(FileExistsError, match=str(path)):
        write_fastmri_h5(path, random_kspace(seed=1), "AXT1")
    with h5py.File(path, "r") as file:
        np.testing.assert_array_equal(file["kspace"][()], random_kspace(seed=0))
    write_fastmri_h5(path, random_kspace(seed=1), "AXT1", overwrite=True)
    with h5py.File(path, "r") as file:
        np.testing.assert_array_equal(file["kspace"][()], random_kspace(seed=1))
    assert [p.name for p in tmp_path.iterdir()] == ["a.h5"]  # no temporary file left behind


def test_undersampled_file_has_no_reference_and_keeps_extras(tmp_path):
    mask = np.zeros((16, 12), dtype=bool)
    mask[::2] = True
    path = write_fastmri_h5(
        tmp_path / "u.h5",
        random_kspace() * mask,
        "AXT1",
        fully_sampled=False,
        extra_datasets={"mask": mask},
        extra_attrs={"prospectively_undersampled": True},
    )
    with h5py.File(path, "r") as file:
        assert set(file) == {"kspace", "ismrmrd_header", "mask"}
        np.testing.assert_array_equal(file["mask"][()], mask)
        assert "max" not in file.attrs and "norm" not in file.attrs
        assert file.attrs["prospectively_undersampled"]


def test_fastmri_filename():
    assert fastmri_filename("AXT1POST", "201_6002717") == "file_brain_AXT1POST_201_6002717.h5"
    with pytest.raises(ValueError, match="'AXPD'"):
        fastmri_filename("AXPD", "201_1")
    with pytest.raises(ValueError, match="'7294'"):
        fastmri_filename("AXT1", "7294")


def test_subject_id_from_stem_separates_variants_of_one_subject():
    native, stripped = subject_id_from_stem("tcga_fg_6692_native"), subject_id_from_stem("tcga_fg_6692_skullstripped")
    assert native != stripped
    assert native.endswith("_6692") and stripped.endswith("_6692")
    assert subject_id_from_stem("tcga_fg_6692_t1").endswith("_6692")  # the contrast token does not leak in
    assert subject_id_from_stem("tcga_fg_6692_native") == native  # stable across runs
    fastmri_filename("AXT1", subject_id_from_stem("no_digits_here"))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kspace": np.ones((2, 3, 16, 12), dtype=np.float32)}, TypeError, "float32"),
        ({"kspace": random_kspace()[0]}, ValueError, r"\(3, 16, 12\)"),
        ({"reconstruction_size": (20, 8)}, ValueError, r"\(20, 8\)"),
        ({"acquisition": "T1"}, ValueError, "'T1'"),
        ({"extra_attrs": {"max": 1.0}}, ValueError, "max"),
        ({"extra_datasets": {"kspace": np.zeros(1)}}, ValueError, "kspace"),
    ],
)
def test_bad_input(tmp_path, kwargs, error, match):
    arguments = {"kspace": random_kspace(), "acquisition": "AXT1"} | kwargs
    with pytest.raises(error, match=match):
        write_fastmri_h5(tmp_path / "bad.h5", **arguments)
    assert not list(tmp_path.iterdir())

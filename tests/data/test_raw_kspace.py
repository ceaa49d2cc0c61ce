"""Conversion of real raw k-space to the fastMRI layout: the two shared files and small synthetic stand-ins."""

from pathlib import Path

import h5py
import numpy as np
import pytest
from direct.data import transforms as T
from direct.data.datasets import FastMRIDataset
from scipy.io import savemat

from direct_nextaccel.cli import main
from direct_nextaccel.data.raw_kspace import import_raw, load_mat_kspace, load_undersampled_npy

KSPACE_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kspace"
ESPIRIT_BRAIN = KSPACE_DIR / "brain_alias_8ch.mat"
SIGPY_BRAIN = KSPACE_DIR / "sigpy_brain_8ch_poisson.npy"


def require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"real raw k-space {path} is absent (shared data folder not present)")
    return path


def rss(kspace: np.ndarray) -> np.ndarray:
    """RSS image of ``(coils, H, W)`` k-space through DIRECT's centred orthonormal ifft2."""
    images = T.ifft2(T.to_tensor(kspace), dim=(1, 2), centered=True, normalized=True)
    return T.root_sum_of_squares(images, dim=0).numpy()


def assert_centred_brain(kspace: np.ndarray) -> None:
    """k-space peak at the centre and an image bright in the middle, dark in the corners (not shifted by FOV/2)."""
    height, width = kspace.shape[-2:]
    peak = np.unravel_index(np.abs(kspace).sum(0).argmax(), (height, width))
    assert abs(peak[0] - height // 2) <= 2 and abs(peak[1] - width // 2) <= 2
    image = rss(kspace)
    middle = image[height // 2 - 30 : height // 2 + 30, width // 2 - 30 : width // 2 + 30].mean()
    corners = np.mean([image[:20, :20].mean(), image[:20, -20:].mean(), image[-20:, :20].mean()])
    assert middle > 4 * corners


def test_espirit_brain_is_cropped_to_its_fully_sampled_lines(tmp_path):
    kspace, lines = load_mat_kspace(require(ESPIRIT_BRAIN))
    assert lines == (44, 211)
    assert kspace.shape == (1, 8, 320, 168) and kspace.dtype == np.complex64
    assert (np.abs(kspace[0]).sum(axis=(0, 1)) > 0).all()  # every kept line holds data
    assert_centred_brain(kspace[0])

    path = import_raw(ESPIRIT_BRAIN, tmp_path)
    sample = FastMRIDataset(tmp_path, transform=None)[0]
    np.testing.assert_array_equal(sample["kspace"], kspace[0])
    assert (sample["padding_left"], sample["padding_right"]) == (0, 168)
    with h5py.File(path, "r") as file:
        np.testing.assert_allclose(file["reconstruction_rss"][0], rss(kspace[0]), rtol=1e-4, atol=1e-3)
        assert file.attrs["acquisition"] == "AXT1"
        np.testing.assert_array_equal(file.attrs["phase_encode_lines"], [44, 211])


def test_sigpy_brain_keeps_its_prospective_pattern_without_reference(tmp_path):
    kspace, mask = load_undersampled_npy(require(SIGPY_BRAIN))
    assert kspace.shape == (1, 8, 230, 180) and mask.shape == (230, 180)
    assert 0.11 < mask.mean() < 0.14  # about 12 % sampled
    assert mask[105:125, 80:100].all()  # fully sampled calibration centre
    assert not kspace[0][:, ~mask].any()
    assert_centred_brain(kspace[0])

    path = import_raw(SIGPY_BRAIN, tmp_path)
    with h5py.File(path, "r") as file:
        assert "reconstruction_rss" not in file and "max" not in file.attrs
        np.testing.assert_array_equal(file["mask"][()], mask)
        assert file.attrs["prospectively_undersampled"]
        assert file.attrs["acceleration"] == pytest.approx(1 / mask.mean())
    np.testing.assert_array_equal(FastMRIDataset(tmp_path, transform=None)[0]["kspace"], kspace[0])


def test_synthetic_mat_crop_and_non_contiguous_lines(tmp_path):
    rng = np.random.default_rng(0)
    data = np.zeros((12, 10, 3), dtype=np.complex128)
    data[:, 3:8] = rng.normal(size=(12, 5, 3)) + 1j * rng.normal(size=(12, 5, 3))
    savemat(tmp_path / "toy_1.mat", {"DATA": data})
    kspace, lines = load_mat_kspace(tmp_path / "toy_1.mat")
    assert lines == (3, 7)
    np.testing.assert_array_equal(kspace[0], np.transpose(data[:, 3:8], (2, 0, 1)).astype(np.complex64))

    data[:, 5] = 0
    savemat(tmp_path / "toy_2.mat", {"DATA": data})
    with pytest.raises(ValueError, match=r"3\.\.7 are not contiguous"):
        load_mat_kspace(tmp_path / "toy_2.mat")
    savemat(tmp_path / "toy_3.mat", {"kspace": data})
    with pytest.raises(ValueError, match="'DATA'"):
        load_mat_kspace(tmp_path / "toy_3.mat")


def test_synthetic_npy_mask_and_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(2, 8, 6)) + 1j * rng.normal(size=(2, 8, 6))).astype(np.complex64)
    np.save(tmp_path / "full.npy", data)
    with pytest.raises(ValueError, match="not prospectively undersampled"):
        load_undersampled_npy(tmp_path / "full.npy")
    data[:, ::2] = 0
    data[0, 1, 1] = 0  # sampled by the other coil: still in the mask
    np.save(tmp_path / "under.npy", data)
    _, mask = load_undersampled_npy(tmp_path / "under.npy")
    np.testing.assert_array_equal(mask, np.arange(8)[:, None].repeat(6, 1) % 2 == 1)
    np.save(tmp_path / "real.npy", np.abs(data))
    with pytest.raises(ValueError, match="float32"):
        load_undersampled_npy(tmp_path / "real.npy")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        import_raw(tmp_path / "notes.txt", tmp_path / "out")


def test_cli_import_raw(tmp_path, capsys):
    data = np.zeros((2, 8, 6), dtype=np.complex64)
    data[:, 2:6, 1:5] = 1 + 1j
    np.save(tmp_path / "scan_7.npy", data)
    out = tmp_path / "out"
    assert main(["import-raw", str(tmp_path / "scan_7.npy"), "--output", str(out)]) == 0
    (printed,) = capsys.readouterr().out.split()
    assert Path(printed).is_file() and printed.endswith("_7.h5")
    assert main(["import-raw", str(tmp_path / "scan_7.npy"), "--output", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "already exists" in error
    assert main(["import-raw", str(tmp_path / "missing.mat"), "--output", str(out)]) == 2
    assert "missing.mat" in capsys.readouterr().err

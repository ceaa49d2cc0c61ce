"""Simulation of multi-coil k-space from magnitude volumes: physics, files DIRECT reads, CLI, bad input."""

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from direct.common.subsample import FastMRIRandomMaskFunc
from direct.data import transforms as T
from direct.data.datasets import FastMRIDataset
from direct.data.mri_transforms import build_mri_transforms

from direct_nextaccel.cli import main
from direct_nextaccel.data.fastmri_h5 import centered_ifft2
from direct_nextaccel.data.simulate import (
    CONTRASTS,
    area_resample_matrix,
    coil_sensitivities,
    fit_to_matrix,
    simulate_nifti,
    simulate_npz,
    simulate_volume,
)

BRAIN_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "brain"


def phantom(slices=6, rows=40, cols=36, seed=0) -> np.ndarray:
    """int16 volume: an ellipse of random 'tissue' in the middle slices, empty first and last slice."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:rows, :cols]
    ellipse = ((y - rows / 2) / (0.4 * rows)) ** 2 + ((x - cols / 2) / (0.4 * cols)) ** 2 < 1
    volume = np.zeros((slices, rows, cols), dtype=np.int16)
    volume[1:-1] = (ellipse * rng.uniform(200, 900, size=(slices - 2, rows, cols))).astype(np.int16)
    volume[1:-1, 0, 0] = -5  # resampling undershoot, clipped by the simulation
    return volume


@pytest.fixture
def npz_path(tmp_path) -> Path:
    path = tmp_path / "tcga_xx_1234_toy.npz"
    volumes = {name: phantom(seed=index) for index, name in enumerate(CONTRASTS)}
    np.savez(path, **volumes, voxel_size_mm=np.array([2.0, 1.0, 1.0], dtype=np.float32))
    return path


def test_rss_of_simulated_kspace_is_the_scaled_magnitude():
    volume = phantom()
    kspace, kept = simulate_volume(volume, coils=4, matrix=(48, 40), seed=3)
    assert kspace.dtype == np.complex64 and kspace.shape == (4, 4, 48, 40)
    np.testing.assert_array_equal(kept, [1, 2, 3, 4])  # the empty first and last slices are dropped
    rss = np.sqrt((np.abs(centered_ifft2(kspace)) ** 2).sum(1))
    positive = volume[volume > 0]
    expected = np.clip(volume[kept], 0, None) / np.percentile(positive, 99)
    # 40x36 fits in 48x40: centre zero-padding by (4, 2), no interpolation.
    np.testing.assert_allclose(rss[:, 4:44, 2:38], expected, atol=1e-5)
    assert np.abs(rss[:, :4]).max() < 1e-5 and np.abs(rss[:, :, :2]).max() < 1e-5


def test_phase_and_coils_make_the_data_complex_and_coil_dependent():
    kspace, _ = simulate_volume(phantom(), coils=4, matrix=(40, 36), seed=0)
    images = centered_ifft2(kspace[1])  # C, H, W
    inside = np.abs(images).sum(0) > 0.1
    # Coil images differ in magnitude and phase; the combined image is not real-valued.
    assert np.abs(np.abs(images[0]) - np.abs(images[2]))[inside].mean() > 0.05
    assert np.std(np.angle(images[0][inside])) > 0.2
    peak = np.unravel_index(np.abs(kspace[1]).sum(0).argmax(), (40, 36))
    assert abs(peak[0] - 20) <= 1 and abs(peak[1] - 18) <= 1  # centred k-space: smooth phase keeps DC central


def test_coil_sensitivities_are_normalised_and_smooth():
    maps = coil_sensitivities((32, 24), 8, np.random.default_rng(0))
    assert maps.shape == (8, 32, 24) and maps.dtype == np.complex64
    np.testing.assert_allclose((np.abs(maps) ** 2).sum(0), 1.0, rtol=1e-5)
    assert np.abs(np.diff(maps, axis=1)).max() < 0.2  # no jumps between neighbouring pixels
    single = coil_sensitivities((8, 8), 1, np.random.default_rng(0))
    np.testing.assert_allclose(np.abs(single), 1.0, rtol=1e-6)


def test_downsampling_is_area_averaging_and_padding_centres():
    np.testing.assert_allclose(area_resample_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    np.testing.assert_allclose(area_resample_matrix(3, 2).sum(1), 1.0)
    volume = np.arange(2 * 8 * 4, dtype=np.float32).reshape(2, 8, 4)
    fitted = fit_to_matrix(volume, (4, 4))  # shrink by 2 to 4x2, then pad one column each side
    expected = volume.reshape(2, 4, 2, 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(fitted[:, :, 1:3], expected)
    assert not fitted[:, :, [0, 3]].any()


def test_seeded_and_slice_independent():
    volume = phantom()
    first, _ = simulate_volume(volume, coils=2, matrix=(40, 36), seed=5)
    again, _ = simulate_volume(volume, coils=2, matrix=(40, 36), seed=5)
    other, _ = simulate_volume(volume, coils=2, matrix=(40, 36), seed=6)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    central, central_kept = simulate_volume(volume, coils=2, matrix=(40, 36), seed=5, max_slices=2)
    np.testing.assert_array_equal(central_kept, [2, 3])
    np.testing.assert_array_equal(central, first[1:3])  # a slice is simulated the same whichever others are kept


def test_simulate_npz_files_are_read_by_direct_unchanged(npz_path, tmp_path):
    written = simulate_npz(npz_path, tmp_path / "out", coils=3, matrix=(40, 36), progress=False)
    assert [path.name.split("_")[2] for path in written] == ["AXT1", "AXT1POST", "AXT2", "AXFLAIR"]
    assert all(path.name.endswith("_1234.h5") for path in written)
    dataset = FastMRIDataset(tmp_path / "out", transform=None)
    assert len(dataset) == 4 * 4
    for index in range(len(dataset)):
        sample = dataset[index]
        with h5py.File(sample["filename"], "r") as file:
            np.testing.assert_array_equal(sample["kspace"], file["kspace"][sample["slice_no"]])
            reference = file["reconstruction_rss"][sample["slice_no"]]
            assert file.attrs["patient_id"] == "tcga_xx_1234_toy"
            np.testing.assert_array_equal(file.attrs["source_slice_indices"], [1, 2, 3, 4])
        images = T.ifft2(T.to_tensor(sample["kspace"]), dim=(1, 2), centered=True, normalized=True)
        np.testing.assert_allclose(T.root_sum_of_squares(images, dim=0).numpy(), reference, atol=1e-5)


def test_direct_training_transforms_give_reconstruction_rss_as_target(npz_path, tmp_path):
    (path,) = simulate_npz(npz_path, tmp_path, contrasts=["t2"], coils=3, matrix=(40, 36), progress=False)
    transforms = build_mri_transforms(
        forward_operator=T.fft2,
        backward_operator=T.ifft2,
        mask_func=FastMRIRandomMaskFunc(accelerations=[4], center_fractions=[0.08]),
        crop="reconstruction_size",
        scaling_key="masked_kspace",
    )
    sample = FastMRIDataset(tmp_path, transform=transforms)[2]
    with h5py.File(path, "r") as file:
        reference = file["reconstruction_rss"][2]
    target = sample["target"].numpy() * sample["scaling_factor"].numpy()
    np.testing.assert_allclose(target, reference, atol=1e-5 * reference.max())


def test_overwrite_protection(npz_path, tmp_path):
    out = tmp_path / "out"
    simulate_npz(npz_path, out, contrasts=["t1"], coils=1, matrix=(40, 36), progress=False)
    stamps = {path: path.stat().st_mtime_ns for path in out.iterdir()}
    with pytest.raises(FileExistsError, match="file_brain_AXT1_"):
        simulate_npz(npz_path, out, contrasts=["t1", "t2"], coils=1, matrix=(40, 36), progress=False)
    assert {path: path.stat().st_mtime_ns for path in out.iterdir()} == stamps  # nothing written, not even t2
    written = simulate_npz(npz_path, out, contrasts=["t1", "t2"], coils=1, matrix=(40, 36), overwrite=True)
    assert len(written) == 2 and len(list(out.iterdir())) == 2


def test_npz_missing_contrasts_names_missing_and_present(tmp_path):
    path = tmp_path / "subject_1.npz"
    np.savez(path, t1=phantom(), flair=phantom())
    with pytest.raises(ValueError, match=r"\['t1c', 't2'\].*\['flair', 't1'\]"):
        simulate_npz(path, tmp_path / "out", progress=False)


def test_nan_volume_names_file_and_contrast(tmp_path):
    path = tmp_path / "subject_2.npz"
    bad = phantom().astype(np.float32)
    bad[2, 5, 5] = np.nan
    np.savez(path, t1=phantom(), t2=bad)
    with pytest.raises(ValueError, match=r"subject_2\.npz.*'t2'.*NaN"):
        simulate_npz(path, tmp_path / "out", contrasts=["t1", "t2"], progress=False)
    assert not (tmp_path / "out").exists()  # validated before anything was written


def test_non_3d_volume(tmp_path):
    path = tmp_path / "subject_3.npz"
    np.savez(path, t1=phantom()[0])
    with pytest.raises(ValueError, match=r"'t1'.*\(40, 36\)"):
        simulate_npz(path, tmp_path / "out", contrasts=["t1"], progress=False)
    with pytest.raises(ValueError, match=r"\(40, 36\)"):
        simulate_volume(phantom()[0])


@pytest.mark.parametrize("matrix", [(64,), (64, 0), (64, -2), (64, 64, 1), (64.0, 64), "64"])
def test_bad_matrix(matrix):
    with pytest.raises(ValueError, match="matrix"):
        simulate_volume(phantom(), matrix=matrix)


@pytest.mark.parametrize("coils", [0, -1])
def test_bad_coils(coils):
    with pytest.raises(ValueError, match=f"coils {coils}"):
        simulate_volume(phantom(), coils=coils)


def test_unknown_contrast_and_empty_volume(npz_path, tmp_path):
    with pytest.raises(ValueError, match="'pd'"):
        simulate_npz(npz_path, tmp_path, contrasts=["pd"], progress=False)
    with pytest.raises(ValueError, match="positive"):
        simulate_volume(np.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match=r"min_brain_fraction 0\.9"):
        simulate_volume(phantom(), min_brain_fraction=0.9)


def test_nifti_without_nibabel_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "nibabel", None)  # makes `import nibabel` fail
    path = tmp_path / "subject_4_t1.nii.gz"
    path.write_bytes(b"")
    with pytest.raises(ImportError, match=r"subject_4_t1\.nii\.gz.*nibabel"):
        simulate_nifti(path, tmp_path / "out", "t1", progress=False)


def test_nifti_round_trip(tmp_path):
    nibabel = pytest.importorskip("nibabel", reason="nibabel (extra 'nifti') is not installed")
    volume = phantom()
    ras = volume.transpose(2, 1, 0)[::-1, ::-1, :]  # rows anterior-first, cols patient-right-first -> RAS+
    path = tmp_path / "subject_5_t2.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(ras), np.diag([1.0, 1.0, 2.0, 1.0])), path)
    (written,) = simulate_nifti(path, tmp_path / "out", "t2", coils=2, matrix=(40, 36), progress=False)
    expected, _ = simulate_volume(volume, coils=2, matrix=(40, 36), seed=0)
    with h5py.File(written, "r") as file:
        assert file.attrs["acquisition"] == "AXT2"
        rss = file["reconstruction_rss"][()]
    np.testing.assert_allclose(rss, np.sqrt((np.abs(centered_ifft2(expected)) ** 2).sum(1)), atol=1e-5)


def test_cli_writes_and_reports_errors_in_one_line(npz_path, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["simulate", str(npz_path), "--output", str(out), "--coils", "2", "--matrix", "40", "36"]
    assert main([*arguments, "--contrasts", "t1", "flair", "--max-slices", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out.split()
    assert [Path(line).name.split("_")[2] for line in printed] == ["AXT1", "AXFLAIR"]
    assert all(Path(line).is_file() for line in printed)
    with h5py.File(printed[0], "r") as file:
        assert file["kspace"].shape == (2, 2, 40, 36)

    assert main([*arguments, "--contrasts", "t1", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "already exist" in error and "Traceback" not in error

    assert main(["simulate", str(tmp_path / "brain.nii"), "--output", str(out)]) == 2
    assert "--contrast" in capsys.readouterr().err
    assert main([*arguments, "--coils", "0"]) == 2
    assert "coils 0" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tcga_du_7294_skullstripped.npz", "tcga_fg_6692_native.npz"])
def test_real_brain_volumes(name, tmp_path):
    path = BRAIN_DIR / name
    if not path.is_file():
        pytest.skip(f"real brain volume {path} is absent (shared data folder not present)")
    written = simulate_npz(path, tmp_path, coils=4, matrix=(64, 64), max_slices=2, progress=False)
    assert len(written) == 4
    for file_path in written:
        with h5py.File(file_path, "r") as file:
            assert file["kspace"].shape == (2, 4, 64, 64)
            rss = file["reconstruction_rss"][()]
            kept = file.attrs["source_slice_indices"]
        assert 0.5 < np.percentile(rss, 99.5) < 3  # tissue scaled to about [0, 1]
        assert rss[:, 24:40, 24:40].mean() > 5 * rss[:, :4, :4].mean() + 1e-3  # brain in the centre, air in corners
        assert 5 < kept[0] and kept[1] == kept[0] + 1  # central slices, not the empty ends
    assert len(FastMRIDataset(tmp_path, transform=None)) == 8

"""Simulation of multi-coil k-space from magnitude volumes: physics, files DIRECT reads, CLI, bad input."""

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest
from direct.common.subsample import FastMRIRandomMaskFunc
from direct.data import transforms as T
from direct.data.datasets import FastMRIDataset
from direct.data.mri_transforms import build_mri_transforms

from direct_nextaccel.cli import main
from direct_nextaccel.data.fastmri_h5 import ISMRMRD_NAMESPACE, centered_ifft2, subject_id_from_stem
from direct_nextaccel.data.simulate import (
    CONTRASTS,
    SPLIT_SUBJECTS,
    area_resample_matrix,
    coil_sensitivities,
    fit_to_matrix,
    simulate_nifti,
    simulate_npz,
    simulate_volume,
    split_side,
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
    assert all(path.name.endswith("_tcga_xx_1234_toy.h5") for path in written)
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
        simulate_npz(path, tmp_path / "out", contrasts=list(CONTRASTS), progress=False)
    # By default every contrast the scan holds, and only those.
    written = simulate_npz(path, tmp_path / "out", coils=1, matrix=(40, 36), progress=False)
    assert [p.name.split("_")[2] for p in written] == ["AXT1", "AXFLAIR"]


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


@pytest.mark.parametrize("matrix", [(64,), (64, 0), (64, -2), (64, 64, 1), (64.0, 64), "64", (1, 1), (8, 64)])
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


# --- data loss: names never collide, --overwrite never replaces another source's file ---------------------------------


def run_cli(capsys, *arguments) -> tuple[int, str, str]:
    code = main(["simulate", *map(str, arguments), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("direct-nextaccel simulate: error: "), err
    assert "Traceback" not in err and "allow_pickle" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_stems_that_shared_a_name_under_the_crc_scheme_get_distinct_files(tmp_path, capsys):
    # The old name was a CRC of the stem modulo 900 plus its longest digit run: find two subjects it merged.
    seen, pair = {}, None
    for index in range(5000):
        letters = "".join(chr(ord("a") + int(digit)) for digit in str(index))  # no digits but the exam's
        stem = f"subject_{letters}_1234"
        old = subject_id_from_stem(stem)
        if old in seen:
            pair = (seen[old], stem)
            break
        seen[old] = stem
    assert pair is not None
    for stem in pair:
        np.savez(tmp_path / f"{stem}.npz", t1=phantom())
    out = tmp_path / "out"
    code, printed, _ = run_cli(
        capsys, *(tmp_path / f"{stem}.npz" for stem in pair), "--output", out, "--matrix", 40, 36
    )
    assert code == 0
    names = sorted(Path(line).name for line in printed.split())
    assert names == sorted(f"file_brain_AXT1_{stem}.h5" for stem in pair)
    for stem in pair:
        with h5py.File(out / f"file_brain_AXT1_{stem}.h5", "r") as file:
            assert file.attrs["source_file"] == f"{stem}.npz" and file.attrs["source_contrast"] == "t1"
            assert len(file.attrs["source_sha256"]) == 64


def test_overwrite_never_replaces_a_file_from_another_source(tmp_path, capsys):
    first, second = tmp_path / "a" / "scan_1.npz", tmp_path / "b" / "scan_1.npz"
    for path, seed in ((first, 0), (second, 1)):
        path.parent.mkdir()
        np.savez(path, t1=phantom(seed=seed))
    out = tmp_path / "out"
    assert run_cli(capsys, first, "--output", out, "--matrix", 40, 36)[0] == 0
    (target,) = out.iterdir()
    before = target.read_bytes()
    # Same file name, other contents: refused even with --overwrite, naming both.
    code, _, err = run_cli(capsys, second, "--output", out, "--matrix", 40, 36, "--overwrite")
    assert_one_line_error(code, err, str(target), "scan_1.npz:t1", "different contents")
    assert target.read_bytes() == before
    # The same source is replaced with --overwrite (new settings), and only with it.
    assert_one_line_error(*run_cli(capsys, first, "--output", out, "--matrix", 40, 36)[::2], "--overwrite")
    assert run_cli(capsys, first, "--output", out, "--matrix", 48, 48, "--overwrite")[0] == 0
    with h5py.File(target, "r") as file:
        assert file["kspace"].shape[-2:] == (48, 48)
    # A file that records no source (written by something else) is never replaced.
    target.write_bytes(b"not hdf5")
    code, _, err = run_cli(capsys, first, "--output", out, "--matrix", 40, 36, "--overwrite")
    assert_one_line_error(code, err, str(target), "remove it by hand")
    assert target.read_bytes() == b"not hdf5"


def test_a_copy_under_an_older_name_is_refused(tmp_path, capsys):
    source = tmp_path / "tcga_xx_1234_toy.npz"
    np.savez(source, t1=phantom())
    out = tmp_path / "out"
    assert run_cli(capsys, source, "--output", out, "--matrix", 40, 36)[0] == 0
    (written,) = out.iterdir()
    written.rename(out / "file_brain_AXT1_412_1234.h5")  # as the CRC naming called it
    code, _, err = run_cli(capsys, source, "--output", out, "--matrix", 40, 36)
    assert_one_line_error(code, err, "file_brain_AXT1_412_1234.h5", "tcga_xx_1234_toy.npz:t1")
    assert [p.name for p in out.iterdir()] == ["file_brain_AXT1_412_1234.h5"]


# --- the documented subject split ---------------------------------------------------------------------------------


def small_native(rows: int, cols: int, mm: float, slices: int = 4) -> np.ndarray:
    """An int16 head of fixed physical size (radii 80 x 64 mm) on a ``rows x cols`` grid of ``mm`` pixels."""
    y = (np.arange(rows) - (rows - 1) / 2) * mm
    x = (np.arange(cols) - (cols - 1) / 2) * mm
    yy, xx = np.meshgrid(y, x, indexing="ij")
    head = ((yy / 80) ** 2 + (xx / 64) ** 2 < 1).astype(np.int16) * 500
    return np.repeat(head[None], slices, axis=0)


def lesjak_long_like(path: Path, contrasts: dict[str, tuple[int, int, float]]) -> None:
    """A file shaped like ``lesjak_long_*.npz``: per-contrast grids and voxel sizes, string keys, contrasts lacking."""
    arrays = {}
    for contrast, (rows, cols, mm) in contrasts.items():
        arrays[contrast] = small_native(rows, cols, mm)
        arrays[f"voxel_size_mm_{contrast}"] = np.array([3.0, mm, mm], dtype=np.float32)
    np.savez(path, **arrays, subject_id=np.str_(path.stem), dataset=np.str_("Lesjak 2016"), source=np.str_("{}"))


def test_split_writes_train_and_val_by_subject(tmp_path, capsys):
    brain = tmp_path / "brain"
    brain.mkdir()
    volume = phantom()
    for stem in ("tcga_du_7294_skullstripped", "tcga_fg_6692_skullstripped", "tcga_fg_6692_native"):
        np.savez(brain / f"{stem}.npz", t1=volume, t2=volume, voxel_size_mm=np.ones(3, dtype=np.float32))
    cross = np.clip(volume.astype(np.float32) - 3.5, -2, None)  # float with small negatives
    np.savez(brain / "lesjak_cs_patient19.npz", t1=cross, subject_id=np.str_("lesjak_cs_patient19"))
    lesjak_long_like(brain / "lesjak_long_patient03_study2.npz", {"t1": (60, 60, 3.0), "t2": (90, 80, 2.0)})
    lesjak_long_like(brain / "lesjak_long_patient19_study1.npz", {"flair": (60, 50, 3.0)})
    out = tmp_path / "small"
    code, printed, err = run_cli(capsys, brain, "--split", "--output", out, "--matrix", 40, 36, "--coils", 2)
    assert code == 0, err
    train = sorted(p.name for p in (out / "train").iterdir())
    val = sorted(p.name for p in (out / "val").iterdir())
    assert train == [
        "file_brain_AXT1_lesjak_long_patient03_study2.h5",
        "file_brain_AXT1_tcga_du_7294_skullstripped.h5",
        "file_brain_AXT2_lesjak_long_patient03_study2.h5",
        "file_brain_AXT2_tcga_du_7294_skullstripped.h5",
    ]
    assert val == [
        "file_brain_AXFLAIR_lesjak_long_patient19_study1.h5",
        "file_brain_AXT1_lesjak_cs_patient19.h5",
        "file_brain_AXT1_tcga_fg_6692_native.h5",
        "file_brain_AXT1_tcga_fg_6692_skullstripped.h5",
        "file_brain_AXT2_tcga_fg_6692_native.h5",
        "file_brain_AXT2_tcga_fg_6692_skullstripped.h5",
    ]
    assert len(printed.split()) == 10
    assert "train: 4 files" in err and "val: 6 files" in err and "TCGA-FG-6692 4/" in err
    with h5py.File(out / "val" / "file_brain_AXT1_tcga_fg_6692_native.h5", "r") as file:
        assert file.attrs["subject"] == "TCGA-FG-6692"
    assert len(FastMRIDataset(out / "train", transform=None)) == 4 * 4


def test_split_refuses_a_subject_outside_the_table_and_writes_nothing(tmp_path, capsys):
    brain = tmp_path / "brain"
    brain.mkdir()
    np.savez(brain / "tcga_du_7294_skullstripped.npz", t1=phantom())
    np.savez(brain / "lesjak_long_patient05_study1.npz", t1=phantom())
    code, _, err = run_cli(capsys, brain, "--split", "--output", tmp_path / "out", "--matrix", 40, 36)
    assert_one_line_error(code, err, "lesjak_long_patient05_study1.npz", "lesjak_long_patient05", "not in the")
    np.savez(brain / "lesjak_long_patient05_study1.npz", t1=phantom())
    (brain / "lesjak_long_patient05_study1.npz").rename(brain / "other_scan.npz")
    code, _, err = run_cli(capsys, brain, "--split", "--output", tmp_path / "out", "--matrix", 40, 36)
    assert_one_line_error(code, err, "other_scan.npz")
    assert not (tmp_path / "out").exists()


def test_split_refuses_a_validation_volume_already_in_train(tmp_path, capsys):
    source = tmp_path / "tcga_fg_6692_native.npz"
    np.savez(source, t1=phantom())
    out = tmp_path / "out"
    assert run_cli(capsys, source, "--output", out / "train", "--matrix", 40, 36)[0] == 0  # by hand, wrong side
    code, _, err = run_cli(capsys, source, "--split", "--output", out, "--matrix", 40, 36)
    assert_one_line_error(code, err, str(out / "train"), "tcga_fg_6692_native.npz:t1")
    assert not (out / "val").exists()


def test_split_table_is_the_readme_split():
    train = {subject for subject, side in SPLIT_SUBJECTS.items() if side == "train"}
    val = {subject for subject, side in SPLIT_SUBJECTS.items() if side == "val"}
    assert train == {
        "TCGA-DU-7294",
        "lesjak_cs_patient07",
        "lesjak_cs_patient26",
        *(f"lesjak_long_patient{n}" for n in ("01", "03", "04", "09", "12")),
    }
    assert val == {"TCGA-FG-6692", "lesjak_cs_patient19", "lesjak_long_patient19", "lesjak_long_patient20"}
    assert split_side(Path("tcga_fg_6692_native.npz")) == ("TCGA-FG-6692", "val")
    assert split_side(Path("lesjak_long_patient12_study2.npz")) == ("lesjak_long_patient12", "train")


def test_every_shared_brain_file_has_a_side():
    if not BRAIN_DIR.is_dir():
        pytest.skip(f"shared brain folder {BRAIN_DIR} is absent (shared data folder not present)")
    sides = {path.name: split_side(path) for path in sorted(BRAIN_DIR.glob("*.npz"))}
    assert len(sides) == 17
    assert {subject for subject, _ in sides.values()} == set(SPLIT_SUBJECTS)
    assert sides["tcga_fg_6692_native.npz"] == sides["tcga_fg_6692_skullstripped.npz"] == ("TCGA-FG-6692", "val")


# --- per-contrast grids and voxel sizes ----------------------------------------------------------------------------


def header_fov_mm(path: Path) -> tuple[float, float]:
    with h5py.File(path, "r") as file:
        root = ET.fromstring(file["ismrmrd_header"][()])
    fov = root.find(f".//{{{ISMRMRD_NAMESPACE}}}encodedSpace/{{{ISMRMRD_NAMESPACE}}}fieldOfView_mm")
    return float(fov.find(f"{{{ISMRMRD_NAMESPACE}}}x").text), float(fov.find(f"{{{ISMRMRD_NAMESPACE}}}y").text)


def extent(image: np.ndarray) -> tuple[int, int]:
    """Rows and columns of ``image`` holding foreground."""
    foreground = image > 0.5 * image.max()
    return int(foreground.any(1).sum()), int(foreground.any(0).sum())


def test_per_contrast_grids_give_one_anatomy_size(tmp_path):
    # The same 160 x 128 mm head on three grids, as the native scans of one session are.
    path = tmp_path / "lesjak_long_patient01_study1.npz"
    lesjak_long_like(path, {"t1": (80, 80, 2.5), "t2": (200, 180, 1.0), "flair": (100, 100, 2.0)})
    written = simulate_npz(path, tmp_path / "out", coils=1, matrix=(32, 32), progress=False)
    assert [p.name.split("_")[2] for p in written] == ["AXT1", "AXT2", "AXFLAIR"]
    extents = []
    for target in written:
        with h5py.File(target, "r") as file:
            extents.append(extent(file["reconstruction_rss"][1]))
    for rows, cols in extents:  # 160 / (200 / 32 mm pixels) = 25.6 rows, 128 / 6.25 = 20.5 columns
        assert abs(rows - 25.6) <= 1.5 and abs(cols - 20.5) <= 1.5
    fovs = [header_fov_mm(target) for target in written]
    # All three at the pixel that fits the largest field of view (200 mm in 32): 6.25 mm, up to rounding the size
    # (t2's 180 mm columns become 29 pixels of 6.21 mm).
    np.testing.assert_allclose(fovs, [(200.0, 200.0)] * 3, rtol=0.01)


def test_anisotropic_pixels_keep_the_anatomy_round(tmp_path):
    # A 100 mm disc in a 120 x 120 mm field sampled with 0.5 mm rows and 1 mm columns (240 x 120 pixels): round only
    # in millimetres. In 64 x 64 it gets 120 / 64 = 1.875 mm square pixels: 53.3 across, in both directions.
    rows, cols = 240, 120
    y = (np.arange(rows) - (rows - 1) / 2) * 0.5
    x = (np.arange(cols) - (cols - 1) / 2) * 1.0
    yy, xx = np.meshgrid(y, x, indexing="ij")
    disc = np.repeat(((yy**2 + xx**2) < 50**2)[None].astype(np.float32) * 100, 3, axis=0)
    path = tmp_path / "scan_2.npz"
    np.savez(path, t2=disc, voxel_size_mm=np.array([3.0, 0.5, 1.0]))
    (target,) = simulate_npz(path, tmp_path / "out", coils=1, matrix=(64, 64), progress=False)
    with h5py.File(target, "r") as file:
        image = file["reconstruction_rss"][1]
    height, width = extent(image)
    assert abs(height - width) <= 1 and abs(height - 53.3) <= 1.5  # not a 2:1 ellipse
    np.testing.assert_allclose(header_fov_mm(target), (120.0, 120.0))


# --- bad input: one line naming the file or value, never a traceback or numpy's pickle advice ---------------------


def write_bad(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"bad_{kind}.npz"
    volume = phantom()
    if kind == "voxel_zero_negative_nan":
        np.savez(path, t1=volume, voxel_size_mm=np.array([0.0, -1.0, np.nan]))
    elif kind == "voxel_length_2":
        np.savez(path, t1=volume, voxel_size_mm=np.array([1.0, 1.0]))
    elif kind == "voxel_string":
        np.savez(path, t1=volume, voxel_size_mm=np.array(["1", "1", "1"]))
    elif kind == "contrast_voxel_bad":
        np.savez(path, t1=volume, voxel_size_mm_t1=np.array([3.0, 0.0, 1.0]))
    elif kind == "garbage":
        path.write_bytes(b"\x00garbage" * 50)
    elif kind == "truncated":
        np.savez(path, t1=volume)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "object_array":
        np.savez(path, t1=np.array([{"slice": 1}], dtype=object))
    elif kind == "string_array":
        np.savez(path, t1=np.full((2, 4, 4), "x"))
    elif kind == "single_npy":
        with open(path, "wb") as file:
            np.save(file, volume)
    elif kind == "no_contrast":
        np.savez(path, pd=volume)
    return path


BAD_INPUTS = {
    "voxel_zero_negative_nan": "[0.0, -1.0, nan]",
    "voxel_length_2": "voxel_size_mm [1.0, 1.0]",
    "voxel_string": "voxel_size_mm ['1', '1', '1']",
    "contrast_voxel_bad": "voxel_size_mm_t1 [3.0, 0.0, 1.0]",
    "garbage": "not a readable .npz",
    "truncated": "not a readable .npz",
    "object_array": "pickled Python objects",
    "string_array": "dtype <U1",
    "single_npy": "single .npy array",
    "no_contrast": "holds none of the contrasts",
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_npz_is_one_line_naming_file_and_value(kind, tmp_path, capsys):
    path = write_bad(tmp_path, kind)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, path, "--output", out, "--matrix", 40, 36)
    assert_one_line_error(code, err, path.name, BAD_INPUTS[kind])
    assert not out.exists()


@pytest.mark.parametrize(
    ("option", "fragment"),
    [
        (["--matrix", "1", "1"], "matrix (1, 1) is too small"),
        (["--matrix", "0", "64"], "matrix (0, 64)"),
        (["--max-slices", "0"], "--max-slices 0"),
        (["--seed", "-1"], "--seed -1"),
        (["--min-brain-fraction", "nan"], "--min-brain-fraction nan"),
    ],
)
def test_bad_options_are_one_line(option, fragment, npz_path, tmp_path, capsys):
    code, _, err = run_cli(capsys, npz_path, "--output", tmp_path / "out", *option)
    assert_one_line_error(code, err, fragment)


def test_bad_voxel_size_in_the_api():
    with pytest.raises(ValueError, match=r"spacing_mm \[0\.0, 1\.0\]"):
        simulate_volume(phantom(), spacing_mm=(0.0, 1.0))


# --- every kind of file in the shared brain folder ----------------------------------------------------------------

REAL_KINDS = {
    "tcga_du_7294_skullstripped.npz": ["AXT1", "AXT1POST", "AXT2", "AXFLAIR"],  # int16 1 mm, skull-stripped
    "tcga_fg_6692_native.npz": ["AXT1", "AXT1POST", "AXT2", "AXFLAIR"],  # native grids per contrast, with skull
    "lesjak_cs_patient07.npz": ["AXT1", "AXT1POST", "AXT2", "AXFLAIR"],  # float32 with negatives, string keys
    "lesjak_long_patient01_study1.npz": ["AXT1", "AXT2", "AXFLAIR"],  # voxel_size_mm_<contrast>, no t1c
}


@pytest.mark.parametrize("name", sorted(REAL_KINDS))
def test_real_brain_file_kinds(name, tmp_path, capsys):
    path = BRAIN_DIR / name
    if not path.is_file():
        pytest.skip(f"real brain volume {path} is absent (shared data folder not present)")
    out = tmp_path / "out"
    code, printed, err = run_cli(capsys, path, "--output", out, "--matrix", 32, 32, "--coils", 2, "--max-slices", 2)
    assert code == 0, err
    written = [Path(line) for line in printed.split()]
    assert [p.name.split("_")[2] for p in written] == REAL_KINDS[name]
    fovs = set()
    for file_path in written:
        with h5py.File(file_path, "r") as file:
            assert file["kspace"].shape == (2, 2, 32, 32)
            rss = file["reconstruction_rss"][()]
            kept = file.attrs["source_slice_indices"]
            assert file.attrs["source_file"] == name
        assert 0.5 < np.percentile(rss, 99.5) < 3  # tissue scaled to about [0, 1]
        assert rss[:, 12:20, 12:20].mean() > 5 * rss[:, :2, :2].mean() + 1e-3  # brain in the centre, air in corners
        assert 2 < kept[0] and kept[1] == kept[0] + 1  # central slices, not the empty ends
        fovs.add(max(header_fov_mm(file_path)))
    # Contrasts on different grids of one session cover one field of view: one pixel size for all.
    assert max(fovs) - min(fovs) < 0.02 * max(fovs)
    assert len(FastMRIDataset(out, transform=None)) == 2 * len(written)

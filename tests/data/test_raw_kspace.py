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


# --- data loss: two inputs to one output, --overwrite and another source's file ----------------------------------


def undersampled(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = (rng.normal(size=(2, 8, 6)) + 1j * rng.normal(size=(2, 8, 6))).astype(np.complex64)
    data[:, ::2] = 0
    return data


def fully_sampled_mat(path: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    savemat(path, {"DATA": rng.normal(size=(12, 10, 3)) + 1j * rng.normal(size=(12, 10, 3))})


def import_cli(capsys, *arguments) -> tuple[int, str, str]:
    code = main(["import-raw", *map(str, arguments)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("direct-nextaccel import-raw: error: "), err
    assert "Traceback" not in err and "allow_pickle" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_two_inputs_mapping_to_one_output_write_nothing(tmp_path, capsys):
    fully_sampled_mat(tmp_path / "X.mat")
    np.save(tmp_path / "X.npy", undersampled())
    out = tmp_path / "out"
    code, _, err = import_cli(capsys, tmp_path / "X.mat", tmp_path / "X.npy", "--output", out, "--overwrite")
    assert_one_line_error(code, err, "X.mat", "X.npy", "would both write")
    assert not out.exists()


def test_overwrite_never_replaces_a_file_from_another_source(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    np.save(tmp_path / "a" / "scan_7.npy", undersampled(0))
    np.save(tmp_path / "b" / "scan_7.npy", undersampled(1))
    out = tmp_path / "out"
    assert import_cli(capsys, tmp_path / "a" / "scan_7.npy", "--output", out)[0] == 0
    (target,) = out.iterdir()
    before = target.read_bytes()
    code, _, err = import_cli(capsys, tmp_path / "b" / "scan_7.npy", "--output", out, "--overwrite")
    assert_one_line_error(code, err, str(target), "scan_7.npy", "different contents")
    assert target.read_bytes() == before
    code, _, err = import_cli(capsys, tmp_path / "a" / "scan_7.npy", "--output", out, "--overwrite")
    assert code == 0, err  # the same source may be rewritten
    with h5py.File(target, "r") as file:
        assert file.attrs["source_file"] == "scan_7.npy" and len(file.attrs["source_sha256"]) == 64
    target.write_bytes(b"someone else's file")
    code, _, err = import_cli(capsys, tmp_path / "a" / "scan_7.npy", "--output", out, "--overwrite")
    assert_one_line_error(code, err, str(target), "remove it by hand")
    with pytest.raises(FileExistsError, match="remove it by hand"):
        import_raw(tmp_path / "a" / "scan_7.npy", out, overwrite=True)
    assert target.read_bytes() == b"someone else's file"


# --- silent wrong results and tracebacks: one line naming the file ----------------------------------------------


def write_bad_raw(tmp_path: Path, kind: str) -> Path:
    if kind == "nan_npy":
        data = undersampled()
        data[0, 1, 1] = np.nan
        np.save(path := tmp_path / "nan.npy", data)
    elif kind == "inf_after_cast_npy":
        data = undersampled().astype(np.complex128)
        data[0, 1, 1] = 1e300
        np.save(path := tmp_path / "huge.npy", data)
    elif kind == "zero_npy":
        np.save(path := tmp_path / "zero.npy", np.zeros((2, 8, 6), dtype=np.complex64))
    elif kind == "garbage_npy":
        (path := tmp_path / "garbage.npy").write_bytes(b"\x93NUMPY garbage" * 20)
    elif kind == "object_npy":
        np.save(path := tmp_path / "object.npy", np.array([{"k": 1}], dtype=object), allow_pickle=True)
    elif kind == "string_npy":
        np.save(path := tmp_path / "string.npy", np.full((2, 8, 6), "x"))
    elif kind == "npz_as_npy":
        with open(path := tmp_path / "archive.npy", "wb") as file:
            np.savez(file, data=undersampled())
    elif kind == "nan_mat":
        data = np.zeros((12, 10, 3), dtype=np.complex128)
        data[:, 3:8] = 1 + 1j
        data[0, 5, 0] = np.nan
        savemat(path := tmp_path / "nan.mat", {"DATA": data})
    elif kind == "zero_mat":
        savemat(path := tmp_path / "zero.mat", {"DATA": np.zeros((12, 10, 3), dtype=np.complex128)})
    elif kind == "corrupt_mat":
        (path := tmp_path / "corrupt.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage" + b"\x00" * 200)
    elif kind == "truncated_mat":
        fully_sampled_mat(tmp_path / "whole.mat")
        (path := tmp_path / "truncated.mat").write_bytes((tmp_path / "whole.mat").read_bytes()[:300])
    elif kind == "string_mat":
        savemat(path := tmp_path / "string.mat", {"DATA": "not k-space"})
    return path


BAD_RAW = {
    "nan_npy": "1 NaN or infinite",
    "inf_after_cast_npy": "NaN or infinite",
    "zero_npy": "only zeros",
    "garbage_npy": "not a readable .npy",
    "object_npy": "pickled Python objects",
    "string_npy": "<U1",
    "npz_as_npy": ".npz archive",
    "nan_mat": "1 NaN or infinite",
    "zero_mat": "only zeros",
    "corrupt_mat": "not a readable MATLAB v5 file",
    "truncated_mat": "not a readable MATLAB v5 file",
    "string_mat": "must be complex",
}


@pytest.mark.parametrize("kind", sorted(BAD_RAW))
def test_bad_raw_input_is_one_line_naming_the_file(kind, tmp_path, capsys):
    path = write_bad_raw(tmp_path, kind)
    out = tmp_path / "out"
    code, _, err = import_cli(capsys, path, "--output", out)
    assert_one_line_error(code, err, path.name, BAD_RAW[kind])
    assert not out.exists()

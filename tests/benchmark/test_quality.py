"""The benchmark end to end: fake models in ``--predictions`` mode, and one real tiny DIRECT run in ``--run`` mode."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from direct_nextaccel.benchmark.figures import GridLayout, panel_shape
from direct_nextaccel.benchmark.quality import (
    ZERO_FILLED,
    Method,
    find_volumes,
    parse_method,
    resolve_run,
    run_benchmark,
)
from direct_nextaccel.cli import main
from direct_nextaccel.data.fastmri_h5 import rss_reconstruction, write_fastmri_h5
from direct_nextaccel.data.simulate import simulate_volume
from direct_nextaccel.masks.nested import level_map
from direct_nextaccel.metrics import WEIGHTS_UNAVAILABLE, psnr
from direct_nextaccel.weights import WEIGHTS_DIR_ENV

REPO = Path(__file__).resolve().parents[2]
ACQUISITIONS = {"AXT1": "100_1", "AXT1POST": "100_2", "AXT2": "100_3"}


def phantom(slices: int = 2, size: int = 64) -> np.ndarray:
    """Ellipses standing in for a head: a different inner ellipse per slice."""
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    volume = np.zeros((slices, size, size), dtype=np.float32)
    for index in range(slices):
        volume[index] = 600.0 * ((xx / 0.7) ** 2 + (yy / 0.85) ** 2 < 1)
        volume[index] += 400.0 * (((xx - 0.2) / 0.15) ** 2 + ((yy + 0.1 * index) / 0.3) ** 2 < 1)
    return volume


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Two T1 volumes (AXT1, AXT1POST) and one T2, 64 x 64, 4 coils, 2 slices, in the fastMRI layout."""
    root = tmp_path_factory.mktemp("benchmark") / "data"
    for seed, (acquisition, subject) in enumerate(ACQUISITIONS.items()):
        kspace, _ = simulate_volume(phantom()[:, :, ::-1] if seed else phantom(), coils=4, matrix=(64, 64), seed=seed)
        write_fastmri_h5(root / f"file_brain_{acquisition}_{subject}.h5", kspace, acquisition)
    return root


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No pretrained perceptual weights anywhere this test can see."""
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path / "no_weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "no_weights").mkdir()
    return tmp_path / "no_weights"


def targets(data_root: Path) -> dict[str, np.ndarray]:
    out = {}
    for path in sorted(data_root.glob("*.h5")):
        with h5py.File(path, "r") as file:
            out[path.name] = file["reconstruction_rss"][()]
    return out


def write_predictions(folder: Path, volumes: dict[str, np.ndarray], **extra: dict[str, np.ndarray]) -> Path:
    """One ``direct predict``-style file per volume: ``reconstruction`` plus optional datasets per file."""
    folder.mkdir(parents=True)
    for name, volume in volumes.items():
        with h5py.File(folder / name, "w") as file:
            file.create_dataset("reconstruction", data=volume.astype(np.float32))
            for key, per_file in extra.items():
                file.create_dataset(key, data=per_file[name])
    return folder


def noisy(volumes: dict[str, np.ndarray], scale: float = 0.05) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: np.abs(v + scale * v.max() * rng.standard_normal(v.shape)) for name, v in volumes.items()}


def zero_filled_by_hand(path: Path, seed_text: str) -> np.ndarray:
    """RSS of the k-space under the nested Cartesian-Y R=32 mask that DIRECT draws for ``seed_text``."""
    with h5py.File(path, "r") as file:
        kspace, target = file["kspace"][()], file["reconstruction_rss"][()]
    mask = level_map("cartesian_y", kspace.shape[-2:], tuple(map(ord, seed_text)), 1 / 64) <= 0  # level 0: R32
    return rss_reconstruction(kspace * mask, target.shape[-2:])


def test_predictions_mode_scores_per_contrast_with_reference_and_failures(data_root, tmp_path, no_weights, capsys):
    truth = targets(data_root)
    perfect = write_predictions(
        tmp_path / "perfect", truth, uncertainty={name: np.ones_like(v) for name, v in truth.items()}
    )
    rough = write_predictions(tmp_path / "noisy", noisy(truth))
    output = tmp_path / "out"
    argv = ["benchmark", "--predictions", f"perfect={perfect}", f"noisy={rough}", f"missing={tmp_path / 'nothing'}"]
    argv += ["--data", str(data_root), "--output", str(output), "--metrics", "psnr", "ssim", "lpips", "dists"]
    argv += ["haarpsi", "--weights-dir", str(no_weights)]
    assert main(argv) == 1  # one method failed; the others are complete

    document = json.loads((output / "benchmark.json").read_text())
    table = document["families"]["cartesian_y"]
    assert table["contrasts"] == ["T1", "T2"] and table["volume_counts"] == {"T1": 2, "T2": 1}
    rows = {row["method"]: row for row in table["rows"]}
    assert list(rows) == [ZERO_FILLED, "perfect", "noisy", "missing"]
    assert rows["perfect"]["scores"]["psnr"] == {"T1": "inf", "T2": "inf"}
    assert rows["perfect"]["scores"]["ssim"] == {"T1": 1.0, "T2": 1.0}
    for contrast in ("T1", "T2"):
        assert 15 < rows["noisy"]["scores"]["psnr"][contrast] < 40
        assert rows["noisy"]["scores"]["ssim"][contrast] < 1.0
        assert rows["noisy"]["scores"]["haarpsi"][contrast] < rows["perfect"]["scores"]["haarpsi"][contrast]
        for metric in ("lpips", "dists"):
            assert rows["noisy"]["scores"][metric][contrast] == WEIGHTS_UNAVAILABLE
    # T1 is the mean of the AXT1 and AXT1POST volumes, each scored with its own volume's data range.
    rough_volumes = noisy(truth)
    t1_names = [name for name in truth if "_AXT1" in name]
    expected = np.mean([psnr(truth[name], rough_volumes[name].astype(np.float32)) for name in t1_names])
    assert rows["noisy"]["scores"]["psnr"]["T1"] == pytest.approx(expected, rel=1e-6)
    assert {v["acquisition"] for v in rows["noisy"]["volumes"] if v["contrast"] == "T1"} == {"AXT1", "AXT1POST"}
    # The zero-filled reference is the RSS of the k-space under DIRECT's seeded nested mask.
    name = t1_names[0]
    by_hand = zero_filled_by_hand(data_root / name, str(data_root / name))
    scored = next(v for v in rows[ZERO_FILLED]["volumes"] if v["file"] == name)
    assert scored["psnr"] == pytest.approx(psnr(truth[name], by_hand))
    assert rows["missing"]["status"] == "failed"
    assert rows["missing"]["error"] == f"predictions folder {tmp_path / 'nothing'} does not exist"
    assert rows["perfect"]["seconds_per_slice"] is None

    markdown = (output / "benchmark.md").read_text()
    assert "| PSNR ↑ T1 | PSNR ↑ T2 | SSIM ↑ T1 |" in markdown
    assert f"| missing | failed: predictions folder {tmp_path / 'nothing'} does not exist |" in markdown
    assert markdown.count(WEIGHTS_UNAVAILABLE) >= 12  # 2 metrics x 2 contrasts x 3 methods, plus the note
    assert "| perfect | **inf** | **inf** | **1.000** | **1.000** |" in markdown
    assert markdown == capsys.readouterr().out.split(str(output / "benchmark.md"))[0].rstrip("\n") + "\n"
    assert (output / "benchmark.csv").read_text().count("\n") == 5

    # Columns: target, zero-filled, perfect, noisy, and the perfect model's uncertainty map.
    figure = Image.open(output / "figure_cartesian_y.png")
    assert figure.size == GridLayout(columns=5, panel=panel_shape((64, 64))).size


def test_prediction_of_another_size_fails_with_both_shapes(data_root, tmp_path):
    truth = targets(data_root)
    cropped = write_predictions(tmp_path / "cropped", {name: v[:, 8:-8, 8:-8] for name, v in truth.items()})
    good = write_predictions(tmp_path / "good", truth)
    methods = [Method("cropped", predictions=cropped), Method("good", predictions=good)]
    result = run_benchmark(data_root, methods, tmp_path / "out", metrics=["psnr"])
    rows = {row.name: row for row in result.tables[0].rows}
    assert rows["cropped"].error == (
        "prediction file_brain_AXT1POST_100_2.h5 has shape (2, 48, 48) but the target reconstruction_rss has "
        "(2, 64, 64): predict with inference.crop: header"
    )
    assert rows["good"].error is None and rows["good"].scores["psnr"]["T2"] == math.inf
    assert result.failed == ["cropped"] and result.figures == {}


def test_run_directory_without_checkpoint_keeps_the_other_rows(data_root, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model: {}\n")
    good = write_predictions(tmp_path / "good", targets(data_root))
    methods = [Method("untrained", run=str(tmp_path / "run")), Method("good", predictions=good)]
    result = run_benchmark(data_root, methods, tmp_path / "out", metrics=["psnr", "ssim"])
    rows = {row.name: row for row in result.tables[0].rows}
    assert rows["untrained"].error == f"run directory {tmp_path / 'run'} has no checkpoint (model_<iteration>.pt)"
    assert rows["good"].scores["ssim"] == {"T1": 1.0, "T2": 1.0}
    assert rows[ZERO_FILLED].error is None


def test_resolve_run_picks_the_latest_checkpoint(tmp_path):
    for iteration in (2, 10, 9):
        (tmp_path / f"model_{iteration}.pt").write_bytes(b"")
    (tmp_path / "config.yaml").write_text("model: {}\n")
    assert resolve_run(str(tmp_path)) == (tmp_path / "config.yaml", tmp_path / "model_10.pt")
    other = tmp_path / "other.yml"
    other.write_text("model: {}\n")
    assert resolve_run(f"{other}:{tmp_path / 'model_2.pt'}") == (other, tmp_path / "model_2.pt")
    with pytest.raises(ValueError, match=r"^config .*missing.yaml does not exist$"):
        resolve_run(f"{tmp_path / 'missing.yaml'}:{tmp_path}")
    with pytest.raises(ValueError, match=r"^checkpoint .*model_3.pt does not exist$"):
        resolve_run(f"{other}:{tmp_path / 'model_3.pt'}")


def test_saved_sampling_mask_that_differs_from_the_reference_is_flagged(data_root, tmp_path):
    truth = targets(data_root)
    empty_masks = {name: np.zeros_like(v) for name, v in truth.items()}
    flagged = write_predictions(tmp_path / "flagged", truth, sampling_mask=empty_masks)
    result = run_benchmark(data_root, [Method("flagged", predictions=flagged)], tmp_path / "out", metrics=["nmse"])
    row = result.tables[0].rows[1]
    assert row.error is None and row.scores["nmse"]["T1"] == 0.0
    assert row.warnings == [
        "its saved sampling_mask differs from the zero-filled reference's (other mask or --data-root spelling)"
    ]


def test_bad_inputs_are_one_line_errors(data_root, tmp_path, capsys):
    good = write_predictions(tmp_path / "good", targets(data_root))
    common = ["--data", str(data_root), "--output", str(tmp_path / "out")]
    assert main(["benchmark", "--predictions", f"a={good}", "--contrasts", "FLAIR", *common]) == 2
    assert (
        capsys.readouterr().err
        == f"direct-nextaccel benchmark: error: no FLAIR volume in {data_root} (it has T1, T2)\n"
    )
    assert main(["benchmark", "--predictions", f"a={good}", f"a={good}", *common]) == 2
    assert capsys.readouterr().err == "direct-nextaccel benchmark: error: method name(s) ['a'] given more than once\n"
    assert main(["benchmark", "--predictions", f"a@spiral={good}", *common]) == 2
    assert "unknown mask family 'spiral'" in capsys.readouterr().err
    assert main(["benchmark", "--predictions", f"a={good}", "--data", str(tmp_path / "none"), *common[2:]]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["benchmark", "--predictions", "no-equals-sign", *common])
    assert "is not NAME[@FAMILY]=VALUE" in capsys.readouterr().err
    with pytest.raises(ValueError, match="is neither 'run' nor 'predictions'"):
        parse_method(f"a={good}", "checkpoint")


def test_files_without_a_known_contrast_or_target_are_skipped(data_root, tmp_path):
    kspace, _ = simulate_volume(phantom(), coils=2, matrix=(64, 64), seed=0)
    folder = tmp_path / "mixed"
    write_fastmri_h5(folder / "file_brain_AXT2_1_1.h5", kspace, "AXT2")
    write_fastmri_h5(folder / "file_brain_AXT1_1_2.h5", kspace, "AXT1", fully_sampled=False)
    assert [v.path.name for v in find_volumes(folder)] == ["file_brain_AXT2_1_1.h5"]
    (folder / "file_brain_AXT2_1_1.h5").unlink()
    with pytest.raises(ValueError, match=r"^no fully sampled T1/T2/FLAIR fastMRI volume in .*mixed \(skipped: "):
        find_volumes(folder)


@pytest.mark.slow
def test_run_mode_reconstructs_with_direct_predict_and_measures_it(data_root, tmp_path, no_weights):
    """Train the tiny E2EVarNet baseline for 6 iterations, then benchmark it next to a config that cannot build."""
    config = OmegaConf.load(REPO / "direct_nextaccel" / "configs" / "tiny_varnet_cartesian_y.yaml")
    config.training.num_iterations = 6
    config.training.checkpointer.checkpoint_steps = 6
    config.training.validation_steps = 6
    config.logging.log_interval = 1
    config_path = tmp_path / "tiny_varnet.yaml"
    OmegaConf.save(config, config_path)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    train = [Path(sys.executable).parent / "direct", "train", tmp_path / "runs", "--cfg", config_path, "--name", "t"]
    train += ["--training-root", data_root, "--validation-root", data_root, "--device", "cpu", "--num-gpus", "0"]
    done = subprocess.run(
        [str(part) for part in [*train, "--num-workers", "0"]], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    config.model.model_name = "varnet.varnet.NoSuchNet"
    broken_path = tmp_path / "broken.yaml"
    OmegaConf.save(config, broken_path)

    output = tmp_path / "out"
    argv = ["benchmark", "--run", f"varnet={config_path}:{tmp_path / 'runs' / 't'}"]
    argv += [f"broken={broken_path}:{tmp_path / 'runs' / 't'}", "--data", str(data_root), "--output", str(output)]
    assert main([*argv, "--metrics", "psnr", "ssim", "lpips"]) == 1
    rows = {
        row["method"]: row
        for row in json.loads((output / "benchmark.json").read_text())["families"]["cartesian_y"]["rows"]
    }
    varnet = rows["varnet"]
    assert varnet["status"] == "ok" and varnet["warnings"] == []  # DIRECT's mask is the zero-filled reference's
    assert 0 < varnet["seconds_per_slice"] < 30 and 100 < varnet["peak_memory_mib"] < 8000
    assert all(math.isfinite(varnet["scores"]["psnr"][c]) for c in ("T1", "T2"))
    assert varnet["scores"]["lpips"]["T1"] == WEIGHTS_UNAVAILABLE
    assert sorted(p.name for p in (output / "predictions" / "varnet").glob("*.h5")) == sorted(targets(data_root))
    assert rows["broken"]["error"].startswith("direct predict failed: Path direct.nn.varnet.varnet for model_name ")
    assert "NoSuchNet does not exist" in rows["broken"]["error"] and "\n" not in rows["broken"]["error"]
    assert (output / "figure_cartesian_y.png").is_file()

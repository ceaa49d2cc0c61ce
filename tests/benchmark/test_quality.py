"""The benchmark end to end: fake models in ``--predictions`` mode, and one real tiny DIRECT run in ``--run`` mode."""

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
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
    expand_bound,
    find_volumes,
    inference_masking,
    parse_method,
    resolve_run,
    run_benchmark,
    run_direct_predict,
)
from direct_nextaccel.benchmark.results import SCHEMA_VERSION, Result, Row
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
    # The result schema both commands write: the common keys, then the per-family tables.
    assert (document["benchmark"], document["schema"]) == ("direct-nextaccel benchmark", SCHEMA_VERSION)
    assert set(Result.__annotations__) <= set(document) and document["environment"]["device_type"] == "cpu"
    assert all(set(Row.__annotations__) <= set(row) for row in document["rows"])
    assert [(row["method"], row["family"], row["status"]) for row in document["rows"]] == [
        (ZERO_FILLED, "cartesian_y", "ok"),
        ("perfect", "cartesian_y", "ok"),
        ("noisy", "cartesian_y", "ok"),
        ("missing", "cartesian_y", "failed"),
    ]
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
    # The zero-filled reference is the RSS of the k-space under the nested mask seeded from the file name.
    name = t1_names[0]
    by_hand = zero_filled_by_hand(data_root / name, name)
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
    (tmp_path / "last_model.txt").write_text("9")  # DIRECT's pointer to the checkpoint it saved last
    assert resolve_run(str(tmp_path)) == (tmp_path / "config.yaml", tmp_path / "model_9.pt")
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
        "its saved sampling_mask is neither the zero-filled reference's nor DIRECT's draw for this data path "
        "(another mask family, acceleration or --data-root spelling)"
    ]
    # DIRECT's own draw (seeded from the full path as given to --data-root) is not flagged: the notes explain it.
    path_masks = {}
    for name in truth:
        with h5py.File(data_root / name, "r") as file:
            shape = file["kspace"].shape
        path_masks[name] = np.broadcast_to(
            level_map("cartesian_y", shape[-2:], tuple(map(ord, str(data_root / name))), 1 / 64) <= 0, shape[-2:]
        ).astype(np.float32)[None]
    direct_draw = write_predictions(tmp_path / "direct_draw", truth, sampling_mask=path_masks)
    result = run_benchmark(data_root, [Method("direct", predictions=direct_draw)], tmp_path / "out2", metrics=["nmse"])
    assert result.tables[0].rows[1].warnings == []


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
    with pytest.raises(ValueError, match="is neither 'run', 'predictions' nor 'bound'"):
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
    """Train the tiny E2EVarNet baseline for 6 iterations, then benchmark it (with its config and as a run directory,
    whose config.yaml DIRECT wrote) next to a config that cannot build."""
    config = OmegaConf.load(tiny_config("tiny_varnet_cartesian_y.yaml"))
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
    argv = [
        "benchmark",
        "--run",
        f"varnet={config_path}:{tmp_path / 'runs' / 't'}",
        f"rundir={tmp_path / 'runs' / 't'}",
    ]
    argv += [f"broken={broken_path}:{tmp_path / 'runs' / 't'}", "--data", str(data_root), "--output", str(output)]
    assert main([*argv, "--metrics", "psnr", "ssim", "lpips"]) == 1
    rows = {
        row["method"]: row
        for row in json.loads((output / "benchmark.json").read_text())["families"]["cartesian_y"]["rows"]
    }
    varnet = rows["varnet"]
    assert varnet["status"] == "ok" and varnet["warnings"] == []  # DIRECT's draw of the reference's family and R
    assert "mode: STATIC" in (tmp_path / "runs" / "t" / "config.yaml").read_text()  # issue 15's failing spelling
    assert rows["rundir"]["status"] == "ok" and rows["rundir"]["scores"] == varnet["scores"]
    assert 0 < varnet["seconds_per_slice"] < 30 and 100 < varnet["peak_memory_mib"] < 8000
    assert all(math.isfinite(varnet["scores"]["psnr"][c]) for c in ("T1", "T2"))
    assert varnet["scores"]["lpips"]["T1"] == WEIGHTS_UNAVAILABLE
    assert sorted(p.name for p in (output / "predictions" / "varnet").glob("*.h5")) == sorted(targets(data_root))
    assert rows["broken"]["error"].startswith("direct predict failed: Path direct.nn.varnet.varnet for model_name ")
    assert "NoSuchNet does not exist" in rows["broken"]["error"] and "\n" not in rows["broken"]["error"]
    assert (output / "figure_cartesian_y.png").is_file()


# ---- issue 15: data loss first -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "-x", "a/b", "a b", "", "x" * 101])
def test_unsafe_method_names_are_refused_before_anything_is_deleted(data_root, tmp_path, capsys, name):
    """``--run ..=CFG:CKPT`` used to make predictions/.. = --output, whose every .h5 the cleanup deleted."""
    output = tmp_path / "out"
    (output / "predictions").mkdir(parents=True)
    precious = [output / "precious.h5", output / "predictions" / "precious.h5", output / data_root.name / "x.h5"]
    for path in precious:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"keep me")
    config = tmp_path / "c.yaml"
    config.write_text("model: {}\n")
    (tmp_path / "model_1.pt").write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["benchmark", "--run", f"{name}={config}:{tmp_path / 'model_1.pt'}", "--data", str(data_root),
              "--output", str(output)])  # fmt: skip
    err = capsys.readouterr().err  # argparse itself takes "-x=..." for an option and "=..." for no name
    assert "is not a safe folder name" in err or "is not NAME[@FAMILY]=VALUE" in err or name.startswith("-")
    with pytest.raises(ValueError, match="is not a safe folder name"):
        run_benchmark(data_root, [Method(name, run=f"{config}:{tmp_path / 'model_1.pt'}")], output)
    with pytest.raises(ValueError, match="is not a safe folder name"):
        run_benchmark(data_root, [Method(name, predictions=tmp_path)], output)
    assert all(path.read_bytes() == b"keep me" for path in precious)
    assert sorted(path.name for path in data_root.glob("*.h5")) == sorted(ACQUISITIONS_FILES)


ACQUISITIONS_FILES = [f"file_brain_{acquisition}_{subject}.h5" for acquisition, subject in ACQUISITIONS.items()]


class FailedChild:
    """Stands in for ``subprocess.Popen`` of the ``direct predict`` child: it fails with a ValueError."""

    returncode = 1

    def __init__(self):
        self.stdout = iter(["Traceback (most recent call last):\n", "ValueError: model_name 'x' is unknown\n", "\n"])

    def wait(self):
        return self.returncode


def test_direct_predict_cleanup_removes_only_the_data_volumes_predictions(data_root, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(subprocess, "Popen", lambda command, **_: calls.append(command) or FailedChild())
    folder = tmp_path / "predictions" / "m"
    folder.mkdir(parents=True)
    (folder / "unrelated.h5").write_bytes(b"keep me")
    (folder / ACQUISITIONS_FILES[0]).write_bytes(b"stale prediction")
    outside = tmp_path / "outside.h5"
    outside.write_bytes(b"keep me too")
    (folder / ACQUISITIONS_FILES[1]).symlink_to(outside)
    with pytest.raises(RuntimeError, match="direct predict failed: ValueError: model_name 'x' is unknown \\(log: "):
        run_direct_predict(tmp_path / "c.yaml", tmp_path / "m.pt", data_root, folder, "cpu")
    assert calls[0][:3] == [sys.executable, "-P", "-c"] and "predict_child" in calls[0][3]
    assert calls[0][4:6] == [str(folder / "predict_stats.json"), str(folder)]
    assert (folder / "unrelated.h5").read_bytes() == b"keep me" and outside.read_bytes() == b"keep me too"
    assert not (folder / ACQUISITIONS_FILES[0]).exists() and not (folder / ACQUISITIONS_FILES[1]).is_symlink()
    assert len(calls) == 1
    with pytest.raises(ValueError, match="is the data folder"):
        run_direct_predict(tmp_path / "c.yaml", tmp_path / "m.pt", data_root, data_root / "." / "", "cpu")
    assert sorted(path.name for path in data_root.glob("*.h5")) == sorted(ACQUISITIONS_FILES) and len(calls) == 1


# ---- issue 15: silent wrong results ---------------------------------------------------------------------------------


def test_an_all_zero_prediction_is_flagged_and_never_bold(data_root, tmp_path):
    truth = targets(data_root)
    zeros = write_predictions(tmp_path / "zeros", {name: np.zeros_like(v) for name, v in truth.items()})
    rough = write_predictions(tmp_path / "rough", noisy(truth, scale=0.5))
    methods = [Method("zeros", predictions=zeros), Method("rough", predictions=rough)]
    result = run_benchmark(data_root, methods, tmp_path / "out", metrics=["ssim", "psnr"])
    rows = {row.name: row for row in result.tables[0].rows}
    # The trap: the empty image out-scores a rough but real reconstruction in SSIM (mostly background) ...
    assert rows["zeros"].scores["ssim"]["T1"] > rows["rough"].scores["ssim"]["T1"]
    # ... so it is counted, said, and kept out of the bold best values.
    assert rows["zeros"].flat_slices == 6 and rows["rough"].flat_slices == 0
    assert rows["zeros"].warnings == [
        "6 of 6 slices are flat where the target is not (standard deviation at most 1% of the target's, e.g. all "
        "zero): such images can score well (SSIM of an empty image), so this row is never bold"
    ]
    markdown = (tmp_path / "out" / "benchmark.md").read_text()
    zeros_line = next(line for line in markdown.splitlines() if line.startswith("| zeros |"))
    table_lines = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert "**" not in zeros_line and sum(line.count("**") for line in table_lines) == 2 * 4  # a best per column
    assert "- zeros: 6 of 6 slices are flat" in markdown
    volumes = json.loads((tmp_path / "out" / "benchmark.json").read_text())["families"]["cartesian_y"]["rows"][1]
    assert volumes["flat_slices"] == 6 and [v["flat_slices"] for v in volumes["volumes"]] == [2, 2, 2]


def test_zero_filled_reference_does_not_depend_on_where_the_data_sits(data_root, tmp_path):
    """Two copies of the same data in folders of different depth give the same reference, seeded by file name."""
    import shutil

    rows = []
    for index, folder in enumerate([tmp_path / "a", tmp_path / "much" / "deeper" / "folder" / "elsewhere"]):
        shutil.copytree(data_root, folder)
        perfect = write_predictions(tmp_path / f"perfect{index}", targets(folder))
        result = run_benchmark(folder, [Method("p", predictions=perfect)], tmp_path / f"out{index}", metrics=["psnr"])
        rows.append(result.tables[0].rows[0])
    assert rows[0].volumes == rows[1].volumes and rows[0].scores == rows[1].scores
    name = ACQUISITIONS_FILES[2]
    by_hand = zero_filled_by_hand(data_root / name, name)
    assert next(v for v in rows[0].volumes if v["file"] == name)["psnr"] == pytest.approx(
        psnr(targets(data_root)[name], by_hand)
    )


# ---- issue 15: one-line errors naming the file -------------------------------------------------------------------


def test_a_garbage_h5_in_data_or_predictions_is_one_line_naming_the_file(data_root, tmp_path, capsys):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    good = write_predictions(tmp_path / "good", targets(data_root))
    (data / "file_brain_AXT2_999_1.h5").write_bytes(b"\x00garbage, not HDF5")
    common = ["--output", str(tmp_path / "out"), "--no-figures"]
    assert main(["benchmark", "--predictions", f"a={good}", "--data", str(data), *common]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"direct-nextaccel benchmark: error: data file {data / 'file_brain_AXT2_999_1.h5'} cannot ")
    assert err.count("\n") == 1

    (data / "file_brain_AXT2_999_1.h5").unlink()
    with h5py.File(data / "file_brain_AXT2_999_1.h5", "w") as file:  # readable, but no k-space to zero-fill
        file.attrs["acquisition"] = "AXT2"
        file.create_dataset("reconstruction_rss", data=np.zeros((2, 64, 64), np.float32))
    assert main(["benchmark", "--predictions", f"a={good}", "--data", str(data), *common]) == 2
    err = capsys.readouterr().err
    assert f"data file {data / 'file_brain_AXT2_999_1.h5'} is not in the fastMRI layout: kspace None" in err

    broken = write_predictions(tmp_path / "broken", targets(data_root))
    (broken / ACQUISITIONS_FILES[1]).write_bytes(b"garbage")
    strings = write_predictions(tmp_path / "strings", {})
    for name in ACQUISITIONS_FILES:
        with h5py.File(strings / name, "w") as file:
            file.create_dataset("reconstruction", data=np.array([b"a", b"b"]))
    methods = [Method("broken", predictions=broken), Method("strings", predictions=strings)]
    result = run_benchmark(data_root, methods, tmp_path / "out2", metrics=["psnr"])
    rows = {row.name: row for row in result.tables[0].rows}
    assert rows["broken"].error.startswith(f"prediction {broken / ACQUISITIONS_FILES[1]} cannot be read as HDF5: ")
    assert (
        rows["strings"].error
        == f"prediction {strings / sorted(ACQUISITIONS_FILES)[0]}: 'reconstruction' holds |S1, not numbers"
    )
    assert "\n" not in rows["broken"].error and rows[ZERO_FILLED].error is None

    training = tmp_path / "train"
    training.mkdir()
    (training / "bad.h5").write_bytes(b"garbage")
    assert main(["benchmark", "--predictions", f"a={good}", "--data", str(data_root), "--training-root",
                 str(training), *common]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith(f"direct-nextaccel benchmark: error: training file {training / 'bad.h5'} cannot be read")
    assert err.count("\n") == 1


def direct_style_masking(**masking) -> dict:
    """A masking section as ``direct train`` writes it into a run directory's config.yaml: DIRECT's structured
    MaskingConfig with its enum members spelled by name (``mode: STATIC``)."""
    from direct.common.subsample_config import MaskingConfig

    return OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(OmegaConf.merge(MaskingConfig, masking))))


def fake_predict(behaviour: dict[str, Callable[[np.ndarray], np.ndarray]], seen: list):
    """Stand-in for :func:`run_direct_predict`: writes ``behaviour[name](target)`` for every data volume, where name
    is the predictions folder's name, and records the config it was given."""
    from direct_nextaccel.benchmark.quality import PredictStats

    def run(config: Path, checkpoint: Path, data: Path, output: Path, device: str) -> PredictStats:
        seen.append((output.name, OmegaConf.load(config), checkpoint))
        output.mkdir(parents=True, exist_ok=True)
        for name, volume in targets(data).items():
            with h5py.File(output / name, "w") as file:
                file.create_dataset("reconstruction", data=behaviour[output.name](volume).astype(np.float32))
        return PredictStats(0.5, 100.0)

    return run


def test_run_directory_form_scores_against_a_reference_built_from_its_saved_config(data_root, tmp_path, monkeypatch):
    """``--run NAME=RUN_DIR`` reads the config.yaml direct train wrote (``mode: STATIC``), which the plugin's masks
    used to refuse when the reference was built ('mask mode 'STATIC' is not supported')."""
    from direct_nextaccel.benchmark.quality import prediction

    run_dir = tmp_path / "runs" / "varnet"
    run_dir.mkdir(parents=True)
    masking = direct_style_masking(name="NestedCartesianY", accelerations=[32], center_fractions=[0.015625])
    assert masking["mode"] == "STATIC" and masking["range_mode"] == "DISCRETE"
    OmegaConf.save(OmegaConf.create({"inference": {"dataset": {"transforms": {"masking": masking}}}}),
                   run_dir / "config.yaml")  # fmt: skip
    (run_dir / "model_4.pt").write_bytes(b"")
    seen = []
    monkeypatch.setattr(prediction, "run_direct_predict", fake_predict({"varnet": lambda v: v}, seen))
    output = tmp_path / "out"
    assert main(["benchmark", "--run", f"varnet={run_dir}", "--data", str(data_root), "--output", str(output),
                 "--metrics", "psnr", "--no-figures"]) == 0  # fmt: skip
    rows = json.loads((output / "benchmark.json").read_text())["families"]["cartesian_y"]["rows"]
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert rows[1]["scores"]["psnr"] == {"T1": "inf", "T2": "inf"} and rows[1]["seconds_per_slice"] == 0.5
    assert seen[0][2] == run_dir / "model_4.pt"
    # The same masking with plain strings, and an unknown mode, as one line.
    parsed = inference_masking(run_dir / "config.yaml")
    assert parsed["mode"] == "static" and parsed["range_mode"] == "discrete"
    masking["mode"] = "SOMETIMES"
    OmegaConf.save(OmegaConf.create({"inference": {"dataset": {"transforms": {"masking": masking}}}}),
                   run_dir / "config.yaml")  # fmt: skip
    with pytest.raises(ValueError, match=r"masking mode 'SOMETIMES' is not one of static, dynamic, multislice$"):
        inference_masking(run_dir / "config.yaml")


# ---- issue 12: tokenizer bounds and the memorisation column ---------------------------------------------------------


def tiny_config(name: str) -> Path:
    """A shipped tiny config wherever this checkout keeps them (direct_nextaccel/configs or configs)."""
    for folder in (REPO / "direct_nextaccel" / "configs", REPO / "configs"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(name)


def test_bound_expands_a_tokenizer_into_its_rows(tmp_path):
    checkpoint = tmp_path / "model_3.pt"
    checkpoint.write_bytes(b"")
    aqvae = f"{tiny_config('tiny_aqvae.yaml')}:{checkpoint}"
    rows = expand_bound(parse_method(f"aq={aqvae}", "bound"), "cartesian_x")
    assert [(row.name, row.family, row.kind, row.error) for row in rows] == [
        ("aq-all-levels", "cartesian_x", "bound", None),
        ("aq-R32-tokens", "cartesian_x", "bound", None),
    ]
    assert dict(rows[0].overrides) == {
        "model.mask_families": ["cartesian_x"],
        "inference.dataset.transforms.masking.name": "NestedCartesianX",
        "model.output_levels": [0, 1, 2, 3, 4, 5],
    }
    assert dict(rows[1].overrides)["model.output_levels"] == [0]
    assert expand_bound(parse_method(f"aq@radial={aqvae}", "bound"), "cartesian_x")[0].family == "radial"

    narrow = OmegaConf.load(tiny_config("tiny_aqvae.yaml"))
    narrow.model.mask_families = ["cartesian_y"]
    OmegaConf.save(narrow, tmp_path / "narrow.yaml")
    (failed,) = expand_bound(Method("aq", "radial", bound=f"{tmp_path / 'narrow.yaml'}:{checkpoint}"), "cartesian_y")
    assert (
        failed.error
        == f"the tokenizer of {tmp_path / 'narrow.yaml'} was trained on the families ['cartesian_y'], not radial"
    )

    (msvq,) = expand_bound(Method("msvq", bound=f"{tiny_config('tiny_msvqvae.yaml')}:{checkpoint}"), "cartesian_y")
    assert (msvq.name, msvq.overrides, msvq.kind, msvq.error) == ("msvq-all-scales", (), "bound", None)
    (varnet,) = expand_bound(Method("v", bound=f"{tiny_config('tiny_varnet_cartesian_y.yaml')}:{checkpoint}"), "radial")
    assert varnet.error.startswith("--bound needs a tokenizer config (model_name nextaccel.aqvae.AQVAE or ")
    assert varnet.error.endswith("has varnet.varnet.EndToEndVarNet")
    (missing,) = expand_bound(Method("m", bound=f"{tmp_path / 'none.yaml'}:{checkpoint}"), "radial")
    assert missing.error == f"config {tmp_path / 'none.yaml'} does not exist"


def test_bound_rows_run_the_derived_config_and_are_marked_not_ranked(data_root, tmp_path, monkeypatch):
    from direct_nextaccel.benchmark.quality import prediction

    checkpoint = tmp_path / "model_3.pt"
    checkpoint.write_bytes(b"")
    seen = []
    behaviour = {
        "aq-all-levels": lambda v: v,  # a perfect ceiling: inf PSNR, yet never bold
        "aq-R32-tokens": lambda v: noisy({"v": v}, 0.2)["v"],
        "model": lambda v: noisy({"v": v}, 0.05)["v"],
    }
    monkeypatch.setattr(prediction, "run_direct_predict", fake_predict(behaviour, seen))
    output = tmp_path / "out"
    varnet = tiny_config("tiny_varnet_radial.yaml")
    argv = ["benchmark", "--run", f"model={varnet}:{checkpoint}", "--bound", f"aq={tiny_config('tiny_aqvae.yaml')}:"
            f"{checkpoint}", "--family", "radial", "--data", str(data_root), "--output", str(output), "--metrics",
            "psnr", "ssim"]  # fmt: skip
    assert main(argv) == 0
    configs = {name: config for name, config, _ in seen}
    assert list(configs) == ["model", "aq-all-levels", "aq-R32-tokens"]
    for name, levels in (("aq-all-levels", [0, 1, 2, 3, 4, 5]), ("aq-R32-tokens", [0])):
        assert list(configs[name].model.output_levels) == levels and list(configs[name].model.mask_families) == [
            "radial"
        ]
        assert configs[name].inference.dataset.transforms.masking.name == "NestedRadial"
        assert OmegaConf.load(output / "configs" / f"{name}.yaml") == configs[name]  # what ran is kept
    document = json.loads((output / "benchmark.json").read_text())
    assert list(document["families"]) == ["radial"]
    rows = {row["method"]: row for row in document["families"]["radial"]["rows"]}
    assert [rows[name]["kind"] for name in rows] == ["reference", "method", "bound", "bound"]
    assert rows["aq-all-levels"]["scores"]["psnr"]["T1"] == "inf"
    lines = (output / "benchmark.md").read_text().splitlines()
    bound_line = next(line for line in lines if line.startswith("| aq-all-levels (bound) | inf |"))
    assert "**" not in bound_line
    assert next(line for line in lines if line.startswith("| model |")).count("**") == 2 * 4  # best of the methods
    assert any(line.startswith("- (bound): a tokenizer's ceiling, not a method") for line in lines)
    assert document["settings"]["methods"]["aq-R32-tokens"]["overrides"]["model.output_levels"] == [0]


def test_memorisation_columns_reverse_for_a_method_that_outputs_training_slices(data_root, tmp_path):
    """A 'method' that answers every held-out slice with a training slice correlates 1 with the training set and less
    with its own target; a faithful one is the other way round."""
    training = tmp_path / "train"
    train_volumes = {}
    for index, (acquisition, subject) in enumerate({"AXT1": "200_1", "AXT2": "200_2"}.items()):
        anatomy = np.roll(phantom(3), 6 + 4 * index, axis=2)  # another head than the validation ones
        kspace, _ = simulate_volume(anatomy, coils=2, matrix=(64, 64), seed=9)
        path = training / f"file_brain_{acquisition}_{subject}.h5"
        write_fastmri_h5(path, kspace, acquisition)
        with h5py.File(path, "r") as file:
            train_volumes[path.name] = file["reconstruction_rss"][()]
    truth = targets(data_root)
    donor = train_volumes["file_brain_AXT2_200_2.h5"]
    memoriser = write_predictions(tmp_path / "memoriser", {name: donor[[0, 2]] for name in truth})
    faithful = write_predictions(tmp_path / "faithful", noisy(truth, 0.02))
    methods = [Method("memoriser", predictions=memoriser), Method("faithful", predictions=faithful)]
    result = run_benchmark(data_root, methods, tmp_path / "out", metrics=["psnr"], training_root=training)
    table = result.tables[0]
    rows = {row.name: row for row in table.rows}
    memorised, honest = rows["memoriser"].memorisation, rows["faithful"].memorisation
    assert memorised["closest_training"] == pytest.approx(1.0, abs=1e-5)
    assert memorised["own"] < 0.99 and memorised["closer_to_training"] == memorised["slices"] == 6
    assert honest["own"] > 0.99 and honest["own"] > honest["closest_training"] and honest["closer_to_training"] == 0
    assert table.training == f"6 slices of 2 files in {training} (64x64)"
    assert table.target_memorisation["own"] == 1.0 and table.target_memorisation["in_training"] == 0
    assert rows[ZERO_FILLED].memorisation["slices"] == 6
    # Per slice in the JSON, with the closest training slice named.
    document = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    record = document["families"]["cartesian_y"]["rows"][1]["volumes"][0]
    assert record["closest_training_slice"] == ["file_brain_AXT2_200_2.h5[0]", "file_brain_AXT2_200_2.h5[2]"]
    own = [np.corrcoef(donor[i].ravel(), truth[record["file"]][j].ravel())[0, 1] for j, i in enumerate((0, 2))]
    assert record["corr_own"] == pytest.approx(own, abs=1e-5)
    markdown = (tmp_path / "out" / "benchmark.md").read_text()
    assert "| Corr own ↑ | Corr train max | Train > own ↓ |" in markdown
    line = next(line for line in markdown.splitlines() if line.startswith("| memoriser |"))
    assert f"| {memorised['own']:.3f} | 1.000 | 6/6 |" in line


def test_validation_targets_that_are_training_slices_are_reported(data_root, tmp_path):
    perfect = write_predictions(tmp_path / "perfect", targets(data_root))
    result = run_benchmark(
        data_root, [Method("p", predictions=perfect)], tmp_path / "out", metrics=["psnr"], training_root=data_root
    )
    table = result.tables[0]
    assert table.target_memorisation["in_training"] == 6
    assert table.target_memorisation["closest_training"] == pytest.approx(1.0, abs=1e-5)
    assert table.rows[1].memorisation["closer_to_training"] == 0  # ties (1 = 1) do not count as closer
    markdown = (tmp_path / "out" / "benchmark.md").read_text()
    assert "6 target slice(s) are practically a training slice (r >= 0.9999)." in markdown


@pytest.mark.slow
def test_tokenizer_bound_rows_from_a_real_aqvae_run(data_root, tmp_path):
    """Train the tiny AQ-VAE for 6 iterations; ``--bound`` on its run directory gives both rows, decoded differently."""
    config = OmegaConf.load(tiny_config("tiny_aqvae.yaml"))
    config.training.num_iterations = 6  # DIRECT checkpoints from iteration 5 on
    config.training.checkpointer.checkpoint_steps = 6
    config.training.validation_steps = 6
    config_path = tmp_path / "tiny_aqvae.yaml"
    OmegaConf.save(config, config_path)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    train = [Path(sys.executable).parent / "direct", "train", tmp_path / "runs", "--cfg", config_path, "--name", "aq"]
    train += ["--training-root", data_root, "--validation-root", data_root, "--device", "cpu", "--num-gpus", "0"]
    done = subprocess.run(
        [str(part) for part in [*train, "--num-workers", "0"]], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    output = tmp_path / "out"
    argv = ["benchmark", "--bound", f"aq={tmp_path / 'runs' / 'aq'}", "--family", "cartesian_x", "--data"]
    argv += [str(data_root), "--output", str(output), "--metrics", "psnr", "ssim", "--training-root", str(data_root)]
    assert main(argv) == 0
    document = json.loads((output / "benchmark.json").read_text())
    rows = {row["method"]: row for row in document["families"]["cartesian_x"]["rows"]}
    assert [(name, row["kind"], row["status"]) for name, row in rows.items()] == [
        (ZERO_FILLED, "reference", "ok"),
        ("aq-all-levels", "bound", "ok"),
        ("aq-R32-tokens", "bound", "ok"),
    ]
    derived = OmegaConf.load(output / "configs" / "aq-R32-tokens.yaml")
    assert list(derived.model.output_levels) == [0] and list(derived.model.mask_families) == ["cartesian_x"]
    name = sorted(targets(data_root))[0]
    decoded = {}
    for row in ("aq-all-levels", "aq-R32-tokens"):
        with h5py.File(output / "predictions" / row / name, "r") as file:
            decoded[row] = file["reconstruction"][()]
        assert np.isfinite(decoded[row]).all() and decoded[row].shape == targets(data_root)[name].shape
    assert not np.allclose(decoded["aq-all-levels"], decoded["aq-R32-tokens"])  # other tokens, other image
    assert all(0 <= rows[row]["memorisation"]["closer_to_training"] <= 6 for row in ("aq-all-levels", "aq-R32-tokens"))
    assert "| aq-all-levels (bound) |" in (output / "benchmark.md").read_text()

"""``direct-nextaccel demo`` as a user runs it: its default data, one-line errors for unusable options and folders, and
which stages a rerun trains again (``direct train`` and the benchmark are stand-ins here; the real run is the wheel
test's)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from stage_fakes import FakeDirectTrain, write_data

from direct_nextaccel import cli, demo, demo_set, pipeline
from direct_nextaccel.benchmark import quality
from direct_nextaccel.data import simulate
from direct_nextaccel.pipeline import Stage

CHAIN = [stage.name for stage in pipeline.STAGES]


class FakeBenchmark:
    """Stands in for ``quality.run_benchmark``: records the methods and writes the table file the demo prints."""

    def __init__(self):
        self.calls = []

    def __call__(self, data, methods, output, **kwargs):
        self.calls.append([method.name for method in methods])
        output.mkdir(parents=True, exist_ok=True)
        (output / "benchmark.md").write_text("| method |\n")
        return quality.BenchmarkResult([], [], {})


@pytest.fixture
def fakes(monkeypatch):
    train, benchmark = FakeDirectTrain(), FakeBenchmark()
    monkeypatch.setattr(subprocess, "Popen", train)
    monkeypatch.setattr(quality, "run_benchmark", benchmark)
    return train, benchmark


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("direct-nextaccel demo: error: ")
    return err


def test_phantoms_are_fastmri_layout_t1_and_t2(tmp_path):
    paths = demo.write_phantoms(tmp_path, slices=2, size=32, coils=2, seed=1)
    assert [p.name.split("_")[2] for p in paths] == ["AXT1", "AXT2"]
    with h5py.File(paths[0], "r") as f:
        assert f["kspace"].shape == (2, 2, 32, 32)
        assert f.attrs["acquisition"] == "AXT1" and np.isfinite(f["reconstruction_rss"][()]).all()


@pytest.mark.parametrize("budget", ["0", "-1", "nan", "inf", "-inf"])
def test_a_budget_that_is_not_positive_and_finite_is_a_one_line_error(tmp_path, capsys, fakes, budget):
    output = tmp_path / "o"
    assert cli.main(["demo", f"--budget={budget}", "--output", str(output)]) == 2
    assert f"--budget {float(budget)}" in one_line_error(capsys)
    assert not output.exists() and not fakes[0].commands


def test_an_output_that_is_a_file_is_a_one_line_error(tmp_path, capsys, fakes):
    output = tmp_path / "demo"
    output.write_text("results of something else")
    assert cli.main(["demo", "--output", str(output)]) == 2
    assert f"--output {output} is a file" in one_line_error(capsys)
    assert output.read_text() == "results of something else"


def test_an_output_that_cannot_be_created_is_a_one_line_error(tmp_path, capsys, fakes):
    (tmp_path / "file").write_text("")
    output = tmp_path / "file" / "demo"
    assert cli.main(["demo", "--output", str(output)]) == 2
    assert f"--output {output} cannot be used" in one_line_error(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal of CUDA on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused_before_anything_trains(tmp_path, capsys, fakes):
    output = tmp_path / "o"
    assert cli.main(["demo", "--device", "cuda", "--output", str(output)]) == 2
    assert "--device cuda" in one_line_error(capsys)
    assert not output.exists() and not fakes[0].commands


def test_a_data_folder_without_files_is_refused(tmp_path, capsys, fakes):
    assert cli.main(["demo", "--data", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert f"no train .h5 files in {tmp_path / 'train'}" in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_a_missing_stage_config_stops_the_demo_before_anything_trains(tmp_path, capsys, fakes, monkeypatch):
    stages = (*pipeline.STAGES, Stage("Future", "tiny_future.yaml", 60))
    monkeypatch.setitem(pipeline.TASKS, "reconstruction", stages)
    data = write_data(tmp_path / "data")
    assert cli.main(["demo", "--data", str(data["train"].parent), "--output", str(tmp_path / "o")]) == 2
    assert "stage Future: no config 'tiny_future.yaml'" in one_line_error(capsys)
    assert not fakes[0].commands and not fakes[1].calls


def test_a_rerun_on_other_data_is_refused_unless_asked_to_retrain(tmp_path, capsys, fakes):
    train, benchmark = fakes
    output = tmp_path / "demo"
    data_a = write_data(tmp_path / "a")["train"].parent
    data_b = write_data(tmp_path / "b", b"another subject")["train"].parent
    argv = ["demo", "--budget", "0.05", "--output", str(output), "--data"]

    assert cli.main([*argv, str(data_a)]) == 0
    assert train.names == CHAIN
    assert benchmark.calls == [["E2EVarNet", "RecurrentVarNet", "AQ-VAE", "NextAccel", "NextAccel-distilled"]]
    assert cli.main([*argv, str(data_a)]) == 0
    assert train.names == CHAIN  # nothing changed: every stage reused
    capsys.readouterr()
    assert cli.main([*argv, str(data_b)]) == 2  # the models in the folder were trained on A: never replaced silently
    error = one_line_error(capsys)
    assert f"--output {output} holds models trained on {data_a}, not on {data_b}" in error and "--retrain" in error
    assert train.names == CHAIN
    assert cli.main([*argv, str(data_b), "--retrain"]) == 0
    assert train.names == CHAIN * 2  # none of A's models is reused for B
    assert "| method |" in capsys.readouterr().out
    assert cli.main([*argv, str(data_a)]) == 2  # the folder now holds B's models
    assert f"trained on {data_b}, not on {data_a}" in one_line_error(capsys)


def test_a_folder_with_models_but_no_record_of_their_data_is_refused(tmp_path, capsys, fakes):
    output = tmp_path / "demo"
    data = write_data(tmp_path / "a")["train"].parent
    assert cli.main(["demo", "--budget", "0.05", "--output", str(output), "--data", str(data)]) == 0
    (output / demo.TRAINED_ON).unlink()  # as an earlier version left it
    capsys.readouterr()
    assert cli.main(["demo", "--budget", "0.05", "--output", str(output), "--data", str(data)]) == 2
    assert "data this version did not record" in one_line_error(capsys)


def test_the_default_data_is_the_shipped_demo_set_simulated_by_subject_split(tmp_path, capsys, fakes):
    train, _ = fakes
    output = tmp_path / "demo"
    assert cli.main(["demo", "--budget", "0.05", "--output", str(output)]) == 0
    sides = {}
    for side in ("train", "val"):
        for path in sorted((output / "data" / side).glob("*.h5")):
            with h5py.File(path, "r") as f:
                assert f["kspace"].shape[1:] == (demo_set.COILS, *demo_set.MATRIX)
                assert "magnitude images" in f.attrs["simulated_from"]
                sides.setdefault(side, set()).add(simulate.subject_of(Path(f.attrs["source_file"]).stem))
    assert sides == {
        "train": {"TCGA-DU-7294", "lesjak_cs_patient07", "lesjak_cs_patient26"},
        "val": {"TCGA-FG-6692", "lesjak_cs_patient19"},
    }
    assert all(simulate.SPLIT_SUBJECTS[subject] == side for side, subjects in sides.items() for subject in subjects)
    assert "simulated from magnitude images" in capsys.readouterr().out
    assert cli.main(["demo", "--budget", "0.05", "--output", str(output)]) == 0
    assert train.names == CHAIN  # the same simulation again: every stage reused
    capsys.readouterr()
    assert cli.main(["demo", "--budget", "0.05", "--output", str(output), "--phantoms"]) == 2
    assert "trained on the shipped demo set" in one_line_error(capsys)
    assert train.names == CHAIN


def test_phantoms_are_an_option(tmp_path, fakes):
    output = tmp_path / "demo"
    assert cli.main(["demo", "--budget", "0.05", "--output", str(output), "--phantoms"]) == 0
    assert len(list((output / "phantoms" / "train").glob("*.h5"))) == 2 and not (output / "data").exists()


def test_superresolution_runs_on_the_demo_set_with_the_tokenizer_bound(tmp_path, fakes):
    train, benchmark = fakes
    output = tmp_path / "demo"
    assert cli.main(["demo", "--budget", "0.05", "--output", str(output), "--task", "superresolution"]) == 0
    assert train.names == [stage.name for stage in pipeline.SR_STAGES]
    assert benchmark.calls[0][:4] == ["E2EVarNet", "RecurrentVarNet", "U-Net", "MSVQ-VAE"]  # the bound row, then MIAR's
    assert any((output / "data" / "val").glob("*.h5"))


@pytest.fixture
def demo_set_copy(tmp_path, monkeypatch):
    """A copy of the shipped demo set that the demo reads instead of the package's."""
    copy = tmp_path / "demo_data"
    shutil.copytree(demo_set._folder(), copy)
    monkeypatch.setattr(demo_set, "_folder", lambda: copy)
    return copy


@pytest.mark.parametrize("damage", ["missing", "altered", "manifest-missing"])
def test_a_missing_or_altered_demo_set_file_is_a_one_line_error_naming_it(
    demo_set_copy, tmp_path, capsys, fakes, damage
):
    victim = demo_set_copy / ("SHA256SUMS" if damage == "manifest-missing" else "lesjak_cs_patient19.npz")
    if damage == "altered":
        content = bytearray(victim.read_bytes())
        content[len(content) // 2] ^= 1
        victim.write_bytes(bytes(content))
    else:
        victim.unlink()
    output = tmp_path / "o"
    assert cli.main(["demo", "--budget", "0.05", "--output", str(output)]) == 2
    error = one_line_error(capsys)
    assert str(victim) in error and ("altered" if damage == "altered" else "missing") in error
    assert not output.exists() and not fakes[0].commands


def test_the_shipped_demo_set_is_small_and_matches_its_manifest():
    files = demo_set.demo_files()
    folder = demo_set._folder()
    assert sum(folder.joinpath(name).stat().st_size for name in files) < 5e6
    assert {entry.name for entry in folder.iterdir() if entry.name.endswith(".npz")} == set(files)
    assert folder.joinpath("LICENCE.md").is_file()


def test_a_retrained_stage_retrains_the_stages_built_on_it(tmp_path, fakes, monkeypatch):
    train, _ = fakes
    output = tmp_path / "demo"
    data = write_data(tmp_path / "a")["train"].parent
    argv = ["demo", "--budget", "0.05", "--output", str(output), "--data", str(data)]
    assert cli.main(argv) == 0
    # A changed tokenizer config: the AQ-VAE trains again into the same checkpoint path, which every later stage reads.
    stages = tuple(
        dataclasses.replace(stage, model_overrides=lambda family: {"x": 1}) if stage.name == "AQ-VAE" else stage
        for stage in pipeline.STAGES
    )
    monkeypatch.setitem(pipeline.TASKS, "reconstruction", stages)
    assert cli.main(argv) == 0
    assert train.names[len(CHAIN) :] == ["AQ-VAE", "NextAccel", "Teacher", "NextAccel-distilled"]


def test_a_failed_stage_is_a_one_line_error_with_its_cause(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", FakeDirectTrain(error="ValueError: model.decoding 'greedy' unknown"))
    data = write_data(tmp_path / "a")["train"].parent
    assert cli.main(["demo", "--budget", "0.05", "--output", str(tmp_path / "o"), "--data", str(data)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the stage's progress bar
    assert last.startswith("direct-nextaccel demo: error: direct train of E2EVarNet failed: ValueError: model.decoding")
    assert str(tmp_path / "o" / "runs" / "E2EVarNet" / "demo_train.log") in last

"""``direct-nextaccel demo`` as a user runs it: its default data, one-line errors for unusable options and folders, and
which stages a rerun trains again (``direct train`` and the benchmark are stand-ins here; the real run is the wheel
test's)."""

from __future__ import annotations

import subprocess

import h5py
import numpy as np
import pytest
import torch
from stage_fakes import FakeDirectTrain, write_data

from direct_nextaccel import cli, demo, pipeline
from direct_nextaccel.benchmark import quality
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


def test_a_rerun_on_other_data_trains_every_stage_again(tmp_path, capsys, fakes):
    train, benchmark = fakes
    output = tmp_path / "demo"
    data_a = write_data(tmp_path / "a")["train"].parent
    data_b = write_data(tmp_path / "b", b"another subject")["train"].parent
    argv = ["demo", "--budget", "0.05", "--output", str(output), "--data"]

    assert cli.main([*argv, str(data_a)]) == 0
    assert train.names == CHAIN
    assert benchmark.calls == [["E2EVarNet", "RecurrentVarNet", "NextAccel", "NextAccel-distilled"]]
    assert cli.main([*argv, str(data_a)]) == 0
    assert train.names == CHAIN  # nothing changed: every stage reused
    assert cli.main([*argv, str(data_b)]) == 0
    assert train.names == CHAIN * 2  # the models in the folder were trained on A: none is reused for B
    assert "| method |" in capsys.readouterr().out


def test_a_retrained_stage_retrains_the_stages_built_on_it(tmp_path, fakes, monkeypatch):
    train, _ = fakes
    output = tmp_path / "demo"
    data = write_data(tmp_path / "a")["train"].parent
    argv = ["demo", "--budget", "0.05", "--output", str(output), "--data", str(data)]
    assert cli.main(argv) == 0
    # A changed tokenizer config: the AQ-VAE trains again into the same checkpoint path, which every later stage reads.
    changed = Stage("AQ-VAE", "tiny_aqvae.yaml", 120, benchmarked=False, model_overrides=lambda family: {"x": 1})
    stages = tuple(changed if stage.name == "AQ-VAE" else stage for stage in pipeline.STAGES)
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

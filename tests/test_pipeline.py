"""The stage pipeline: shipped stage configs, derived configs, the stage digest and when a finished run is reused.

``direct train`` itself is replaced by a stand-in that writes the final checkpoint (the real runs are the wheel test's
and the timed demo's); what is checked is which stages train, with what, and what their failures say.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from stage_fakes import FakeDirectTrain, write_data

from direct_nextaccel import pipeline, resources
from direct_nextaccel.masks.nested import MASK_NAMES
from direct_nextaccel.pipeline import Stage


def _stage(name: str, stages=pipeline.STAGES) -> Stage:
    return next(s for s in stages if s.name == name)


# Stage configs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["cartesian_y", "cartesian_x", "radial", "gaussian2d", None])
def test_every_stage_config_is_shipped_package_data(family):
    for task, stages in pipeline.TASKS.items():
        if (family is None) != (task == "superresolution"):
            continue
        pipeline.check_stages(stages, family)
        for stage in stages:
            path = resources.config_path(stage.config_name(family))
            assert path.is_file() and path.parent.name == "configs" and path.parent.parent.name == "direct_nextaccel"
            assert resources.load_config(stage.config_name(family)).model.model_name


def test_resources_list_every_yaml_of_the_package_folder():
    names = resources.config_names()
    folder = Path(pipeline.__file__).parent / "configs"
    assert names == sorted(p.name for p in folder.glob("*.yaml")) and "tiny_aqvae.yaml" in names


@pytest.mark.parametrize("name", ["tiny_nope.yaml", "../pyproject.toml", "", "configs/tiny_aqvae.yaml"])
def test_a_config_that_is_not_shipped_is_refused_naming_it(name):
    with pytest.raises(FileNotFoundError, match=r"not a file name|no config") as error:
        resources.config_file(name)
    assert repr(name) in str(error.value) and "\n" not in str(error.value)


def test_a_missing_stage_config_is_an_error_not_a_skip():
    stages = (*pipeline.STAGES[:2], Stage("Future", "tiny_future_{family}.yaml", 60))
    with pytest.raises(pipeline.StageError, match=r"stage Future: no config 'tiny_future_radial\.yaml'"):
        pipeline.check_stages(stages, "radial")


def test_a_stage_listed_before_the_stage_it_needs_is_refused():
    stages = (_stage("NextAccel"), _stage("AQ-VAE"))
    with pytest.raises(pipeline.StageError, match="NextAccel needs AQ-VAE"):
        pipeline.check_stages(stages, "cartesian_y")


def test_stage_config_fills_family_budget_and_earlier_checkpoints(tmp_path):
    config = pipeline.stage_config(_stage("NextAccel-distilled"), "radial", 0.5, tmp_path)
    iterations = {name: pipeline.stage_iterations(name, 0.5) for name in ("AQ-VAE", "Teacher", "NextAccel")}
    assert config["training"]["num_iterations"] == round(_stage("NextAccel-distilled").iterations * 0.5)
    assert config["training"]["checkpointer"]["checkpoint_steps"] == config["training"]["num_iterations"]
    datasets = [*config["training"]["datasets"], *config["validation"]["datasets"], config["inference"]["dataset"]]
    assert {d["transforms"]["masking"]["name"] for d in datasets} == {MASK_NAMES["radial"]}
    assert config["model"]["mask_family"] == "radial"
    last = {name: f"model_{count - 1}.pt" for name, count in iterations.items()}
    assert config["model"]["tokenizer_checkpoint"] == str(tmp_path / "AQ-VAE" / last["AQ-VAE"])
    assert config["model"]["teacher_checkpoint"] == str(tmp_path / "Teacher" / last["Teacher"])
    assert config["training"]["model_checkpoint"] == str(tmp_path / "NextAccel" / last["NextAccel"])
    assert _stage("NextAccel-distilled").upstream == ("AQ-VAE", "Teacher", "NextAccel")


def test_stage_config_starts_from_the_shipped_file_unchanged_but_for_the_demo_keys(tmp_path):
    config = pipeline.stage_config(_stage("AQ-VAE"), "cartesian_y", 1.0, tmp_path)
    shipped = OmegaConf.to_container(OmegaConf.load(Path(pipeline.__file__).parent / "configs" / "tiny_aqvae.yaml"))
    assert config["model"] == shipped["model"] and config["physics"] == shipped["physics"]
    assert config["training"]["lr"] == shipped["training"]["lr"]


def test_tiny_budget_keeps_directs_minimum_of_six_iterations(tmp_path):
    config = pipeline.stage_config(_stage("AQ-VAE"), "cartesian_y", 0.001, tmp_path)
    assert config["training"]["num_iterations"] == 6  # DIRECT validates and checkpoints only from iteration 5


@pytest.mark.parametrize("budget", [0.25, 1.0, 3.0])
def test_every_benchmarked_method_trains_on_as_many_slices_as_the_nextaccel_chain(tmp_path, budget):
    def slices(stage):
        training = pipeline.stage_config(stage, "cartesian_y", budget, tmp_path)["training"]
        return training["num_iterations"] * training["batch_size"]

    chain = sum(slices(stage) for stage in pipeline.STAGES if stage.iterations is not None)
    baselines = {stage.name: slices(stage) for stage in pipeline.STAGES if stage.iterations is None}
    assert baselines == {"E2EVarNet": chain, "RecurrentVarNet": chain}


def test_baseline_step_schedule_is_stretched_with_its_budget(tmp_path):
    training = pipeline.stage_config(_stage("E2EVarNet"), "cartesian_y", 1.0, tmp_path)["training"]
    # tiny config: 30 iterations, one halving after 20; the demo's 690 keep one halving, after 460
    assert (training["num_iterations"], training["lr_step_size"]) == (690, 460)


def test_superresolution_chain_keeps_its_mask_and_feeds_the_tokenizer_to_miar(tmp_path):
    stages = pipeline.SR_STAGES
    config = pipeline.stage_config(_stage("MIAR", stages), None, 1.0, tmp_path, stages)
    datasets = [*config["training"]["datasets"], *config["validation"]["datasets"], config["inference"]["dataset"]]
    assert {d["transforms"]["masking"]["name"] for d in datasets} == {"SuperResolution"}
    assert config["model"]["tokenizer_checkpoint"] == str(tmp_path / "MSVQ-VAE" / "model_119.pt")
    baselines = {s.name: pipeline.stage_iterations(s.name, 1.0, stages) for s in stages if s.iterations is None}
    assert baselines == {"E2EVarNet": 240, "RecurrentVarNet": 240, "U-Net": 240}


def test_decoding_variant_changes_only_the_model_keys(tmp_path):
    base = tmp_path / "demo_config.yaml"
    OmegaConf.save(OmegaConf.create({"model": {"decoding": "argmax", "beam_k": 1}, "training": {"lr": 0.1}}), base)
    path = pipeline.write_variant(base, "beam3", {"decoding": "beam", "beam_k": 3})
    assert path.name == "demo_predict_beam3.yaml"
    assert OmegaConf.to_container(OmegaConf.load(path)) == {
        "model": {"decoding": "beam", "beam_k": 3},
        "training": {"lr": 0.1},
    }


# Digests ------------------------------------------------------------------------------------------------------------


def test_data_digest_is_the_content_not_the_location(tmp_path):
    data = write_data(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "elsewhere" / "b")
    moved = {split: tmp_path / "elsewhere" / "b" / split for split in data}
    assert pipeline.data_digest(data) == pipeline.data_digest(moved)

    other = write_data(tmp_path / "c", b"volumE")  # one byte differs
    assert pipeline.data_digest(other) != pipeline.data_digest(data)
    (moved["val"] / "file_brain_AXT1_val.h5").rename(moved["val"] / "file_brain_AXT1_renamed.h5")
    assert pipeline.data_digest(moved) != pipeline.data_digest(data)
    (data["train"] / "notes.txt").write_text("not read by DIRECT")
    assert pipeline.data_digest(data) == pipeline.data_digest(write_data(tmp_path / "d"))


def test_stage_digest_covers_config_data_and_earlier_stages():
    base = pipeline.stage_digest({"model": {"depth": 3}}, "data", {"AQ-VAE": "x"})
    assert base == pipeline.stage_digest({"model": {"depth": 3}}, "data", {"AQ-VAE": "x"})
    assert base != pipeline.stage_digest({"model": {"depth": 4}}, "data", {"AQ-VAE": "x"})
    assert base != pipeline.stage_digest({"model": {"depth": 3}}, "other data", {"AQ-VAE": "x"})
    assert base != pipeline.stage_digest({"model": {"depth": 3}}, "data", {"AQ-VAE": "retrained"})


# Training a stage ---------------------------------------------------------------------------------------------------


def test_train_stage_reuses_only_a_run_of_the_same_data(tmp_path, monkeypatch):
    fake = FakeDirectTrain()
    monkeypatch.setattr(subprocess, "Popen", fake)
    stage, runs = _stage("AQ-VAE"), tmp_path / "runs"
    config = pipeline.stage_config(stage, "cartesian_y", 0.05, runs)
    data_a, data_b = write_data(tmp_path / "a"), write_data(tmp_path / "b", b"other subject")

    checkpoint = pipeline.train_stage(stage, config, data_a, runs, "cpu")
    assert checkpoint == pipeline.final_checkpoint(runs / "AQ-VAE", config["training"]["num_iterations"])
    assert checkpoint.is_file()
    assert pipeline.train_stage(stage, config, data_a, runs, "cpu") == checkpoint
    assert len(fake.commands) == 1  # same config and data: reused
    pipeline.train_stage(stage, config, data_b, runs, "cpu")
    assert len(fake.commands) == 2  # other data in the same run folder: trained again
    pipeline.train_stage(stage, config, data_b, runs, "cpu")
    assert len(fake.commands) == 2


def test_train_stage_runs_directs_cli_with_this_interpreter(tmp_path, monkeypatch):
    fake = FakeDirectTrain()
    monkeypatch.setattr(subprocess, "Popen", fake)
    stage, runs = _stage("AQ-VAE"), tmp_path / "runs"
    config = pipeline.stage_config(stage, "cartesian_y", 0.05, runs)
    data = write_data(tmp_path / "data")
    pipeline.train_stage(stage, config, data, runs, "cpu")
    command = fake.commands[0]
    assert command[:3] == [sys.executable, "-P", "-c"] and "direct.cli.cli" in command[3]
    assert command[4:6] == ["train", str(runs)] and command[command.index("--training-root") + 1] == str(data["train"])
    saved = OmegaConf.to_container(OmegaConf.load(command[command.index("--cfg") + 1]))
    assert saved == config


def test_a_failed_stage_names_its_cause_and_log_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", FakeDirectTrain(error="RuntimeError: CUDA error: no kernel image"))
    stage, runs = _stage("AQ-VAE"), tmp_path / "runs"
    config = pipeline.stage_config(stage, "cartesian_y", 0.05, runs)
    with pytest.raises(pipeline.StageError) as error:
        pipeline.train_stage(stage, config, write_data(tmp_path / "data"), runs, "cpu")
    message = str(error.value)
    assert "\n" not in message and message.startswith("direct train of AQ-VAE failed: RuntimeError: CUDA error")
    assert str(runs / "AQ-VAE" / "demo_train.log") in message
    assert not (runs / "AQ-VAE" / pipeline.MARKER).exists()


def test_an_interrupted_retraining_does_not_leave_the_old_digest(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", FakeDirectTrain())
    stage, runs = _stage("AQ-VAE"), tmp_path / "runs"
    config = pipeline.stage_config(stage, "cartesian_y", 0.05, runs)
    data_a, data_b = write_data(tmp_path / "a"), write_data(tmp_path / "b", b"other subject")
    pipeline.train_stage(stage, config, data_a, runs, "cpu")
    monkeypatch.setattr(subprocess, "Popen", FakeDirectTrain(error="KeyboardInterrupt"))
    with pytest.raises(pipeline.StageError):
        pipeline.train_stage(stage, config, data_b, runs, "cpu")
    # Data A again: the checkpoint file may be B's partial run, so A's run is not reused either.
    fake = FakeDirectTrain()
    monkeypatch.setattr(subprocess, "Popen", fake)
    pipeline.train_stage(stage, config, data_a, runs, "cpu")
    assert len(fake.commands) == 1

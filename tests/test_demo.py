"""The demo's plumbing: stage configs, phantom data, availability of stages (the full run is a timed command)."""

from __future__ import annotations

import argparse

import h5py
import numpy as np
import pytest

from direct_nextaccel import demo
from direct_nextaccel.masks.nested import MASK_NAMES


def test_stage_config_fills_family_budget_and_earlier_checkpoints(tmp_path):
    stage = next(s for s in demo.STAGES if s.name == "NextAccel-distilled")
    config = demo.stage_config(stage, "radial", 0.5, tmp_path)
    assert config["training"]["num_iterations"] == 30
    assert config["training"]["checkpointer"]["checkpoint_steps"] == 30
    datasets = [*config["training"]["datasets"], *config["validation"]["datasets"], config["inference"]["dataset"]]
    assert {d["transforms"]["masking"]["name"] for d in datasets} == {MASK_NAMES["radial"]}
    assert config["model"]["mask_family"] == "radial"
    assert config["model"]["tokenizer_checkpoint"] == str(tmp_path / "AQ-VAE" / "model_59.pt")
    assert config["model"]["teacher_checkpoint"] == str(tmp_path / "Teacher" / "model_59.pt")
    assert config["training"]["model_checkpoint"] == str(tmp_path / "NextAccel" / "model_59.pt")


def test_tiny_budget_keeps_directs_minimum_of_six_iterations(tmp_path):
    stage = next(s for s in demo.STAGES if s.name == "AQ-VAE")
    config = demo.stage_config(stage, "cartesian_y", 0.001, tmp_path)
    assert config["training"]["num_iterations"] == 6  # DIRECT validates and checkpoints only from iteration 5


def test_every_stage_of_this_release_is_available():
    assert {stage.name: demo.stage_available(stage) for stage in demo.STAGES} == {
        stage.name: None for stage in demo.STAGES
    }


def test_phantoms_are_fastmri_layout_t1_and_t2(tmp_path):
    paths = demo.write_phantoms(tmp_path, slices=2, size=32, coils=2, seed=1)
    assert [p.name.split("_")[2] for p in paths] == ["AXT1", "AXT2"]
    with h5py.File(paths[0], "r") as f:
        assert f["kspace"].shape == (2, 2, 32, 32)
        assert f.attrs["acquisition"] == "AXT1" and np.isfinite(f["reconstruction_rss"][()]).all()


@pytest.mark.parametrize("budget", [0.0, -1.0])
def test_bad_budget_is_a_one_line_error(tmp_path, capsys, budget):
    args = argparse.Namespace(
        output=tmp_path, data=None, task="reconstruction", family="cartesian_y", budget=budget, device="cpu"
    )
    assert demo.run(args) == 2
    assert f"--budget {budget}" in capsys.readouterr().err


def test_data_folder_without_files_is_refused(tmp_path, capsys):
    args = argparse.Namespace(
        output=tmp_path / "o", data=tmp_path, task="reconstruction", family="cartesian_y", budget=1.0, device="cpu"
    )
    assert demo.run(args) == 2
    assert "no train .h5 files" in capsys.readouterr().err


@pytest.mark.parametrize("budget", [0.25, 1.0, 3.0])
def test_every_benchmarked_method_trains_on_as_many_slices_as_the_nextaccel_chain(tmp_path, budget):
    def slices(stage):
        training = demo.stage_config(stage, "cartesian_y", budget, tmp_path)["training"]
        return training["num_iterations"] * training["batch_size"]

    chain = sum(slices(stage) for stage in demo.STAGES if stage.iterations is not None)
    baselines = {stage.name: slices(stage) for stage in demo.STAGES if stage.iterations is None}
    assert baselines == {"E2EVarNet": chain, "RecurrentVarNet": chain}


def test_baseline_step_schedule_is_stretched_with_its_budget(tmp_path):
    stage = next(s for s in demo.STAGES if s.name == "E2EVarNet")
    training = demo.stage_config(stage, "cartesian_y", 1.0, tmp_path)["training"]
    # tiny config: 30 iterations, one halving after 20; the demo's 420 keep one halving, after 280
    assert (training["num_iterations"], training["lr_step_size"]) == (420, 280)


def test_superresolution_chain_keeps_its_mask_and_feeds_the_tokenizer_to_miar(tmp_path):
    stage = next(s for s in demo.SR_STAGES if s.name == "MIAR")
    config = demo.stage_config(stage, None, 1.0, tmp_path, demo.SR_STAGES)
    datasets = [*config["training"]["datasets"], *config["validation"]["datasets"], config["inference"]["dataset"]]
    assert {d["transforms"]["masking"]["name"] for d in datasets} == {"SuperResolution"}
    assert config["model"]["tokenizer_checkpoint"] == str(tmp_path / "MSVQ-VAE" / "model_119.pt")
    baselines = {
        s.name: demo.stage_iterations(s.name, 1.0, demo.SR_STAGES) for s in demo.SR_STAGES if s.iterations is None
    }
    assert baselines == {"E2EVarNet": 240, "RecurrentVarNet": 240, "U-Net": 240}


def test_decoding_variant_changes_only_the_model_keys(tmp_path):
    from omegaconf import OmegaConf

    base = tmp_path / "demo_config.yaml"
    OmegaConf.save(OmegaConf.create({"model": {"decoding": "argmax", "beam_k": 1}, "training": {"lr": 0.1}}), base)
    path = demo.write_variant(base, "beam3", {"decoding": "beam", "beam_k": 3})
    assert path.name == "demo_predict_beam3.yaml"
    assert OmegaConf.to_container(OmegaConf.load(path)) == {
        "model": {"decoding": "beam", "beam_k": 3},
        "training": {"lr": 0.1},
    }

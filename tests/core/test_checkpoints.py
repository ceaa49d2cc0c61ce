"""Checkpoints (issue 15): every unusable checkpoint is one line naming the file, whatever reads it; plugin checkpoints
and model_best.pt are written atomically; model_best.pt never moves last_model.txt and is never replaced by a worse
model after --resume; the discriminator's optimizer is checkpointed."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest
import torch
from direct.checkpointer import Checkpointer
from direct.data.transforms import fft2, ifft2
from direct.utils.events import EventStorage
from helpers import build_model, direct_batch, merged_config
from omegaconf import OmegaConf

from direct_nextaccel.core.checkpoints import (
    CheckpointError,
    PluginCheckpointer,
    atomic_save,
    read_checkpoint,
)
from direct_nextaccel.miar.transformer_engine import load_tokenizer_state
from direct_nextaccel.nextaccel.aqvae import AQVAE
from direct_nextaccel.nextaccel.aqvae_engine import AQVAEEngine
from direct_nextaccel.nextaccel.config import AQVAEConfig, NextAccelConfig
from direct_nextaccel.nextaccel.nextaccel import NextAccel
from direct_nextaccel.nextaccel.tokenizer_loading import check_student_start, load_checkpoint, load_tokenizer


def aqvae_engine(adversarial: bool = False) -> AQVAEEngine:
    config = merged_config("tiny_aqvae.yaml", AQVAEConfig)
    if adversarial:
        OmegaConf.update(config, "model.discriminator_backbone", "patch")
        config.training.loss.losses.append({"function": "adversarial_loss", "multiplier": 0.1})
    engine = AQVAEEngine(config, build_model(AQVAE, config.model), "cpu", fft2, ifft2)
    if adversarial:
        engine._build_discriminator()
    return engine


def attach_checkpointer(engine, directory: Path) -> PluginCheckpointer:
    """What DIRECT's ``Engine.train`` does: build its Checkpointer and assign it."""
    optimizer = torch.optim.AdamW(engine.model.parameters(), lr=1e-3)
    engine.checkpointer = Checkpointer(
        save_directory=directory, save_to_disk=True, model=engine.model, optimizer=optimizer, **engine.models
    )
    return engine.checkpointer


def one_line_naming(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    return message


# Reading --------------------------------------------------------------------------------------------------------


@pytest.fixture
def good_checkpoint(tmp_path) -> Path:
    path = tmp_path / "run" / "model_5.pt"
    path.parent.mkdir()
    torch.save({"model": {"weight": torch.ones(64, 64)}, "optimizer": {}}, path)
    (path.parent / "last_model.txt").write_text("5")
    return path


def truncated(path: Path) -> Path:
    data = path.read_bytes()
    broken = path.with_name("model_7.pt")
    broken.write_bytes(data[: len(data) // 2])
    return broken


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda good: good.with_name("model_9.pt"), "is not a file: it does not exist"),
        (lambda good: good.parent, r"is a run directory: name one of its model_<N>\.pt files, e\.g\. '.*model_5\.pt'"),
        (lambda good: good.parent.parent / "empty", "is a directory holding no model_<N>.pt"),
        (truncated, "cannot be read: it is truncated or not a torch checkpoint"),
        (lambda good: _write(good.with_name("notes.pt"), b"just text\n"), "truncated or not a torch checkpoint"),
        (lambda good: _save(good.with_name("pickled.pt"), {"model": argparse.Namespace()}), "not a torch checkpoint"),
        (lambda good: _save(good.with_name("list.pt"), [1, 2]), "holds a list, not a mapping"),
        (lambda good: _save(good.with_name("opt.pt"), {"optimizer": {}}), "has no 'model' state dict"),
    ],
    ids=["missing", "run-directory", "empty-directory", "truncated", "text", "pickled-object", "list", "no-model"],
)
def test_unusable_checkpoints_are_one_line_errors_naming_the_file(good_checkpoint, make, message):
    (good_checkpoint.parent.parent / "empty").mkdir(exist_ok=True)
    path = make(good_checkpoint)
    with pytest.raises(CheckpointError, match=message) as error:
        read_checkpoint(path, "model.tokenizer_checkpoint")
    one_line_naming(error, path)
    with pytest.raises(CheckpointError, match=message):  # MIAR's tokenizer goes through the same reader
        load_tokenizer_state(path)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _save(path: Path, value) -> Path:
    torch.save(value, path)
    return path


def test_missing_checkpoint_is_also_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "model_1.pt", "tokenizer_checkpoint")


def nextaccel_config():
    return merged_config("tiny_nextaccel.yaml", NextAccelConfig)


def test_a_transformer_checkpoint_is_refused_as_tokenizer(tmp_path):
    config = nextaccel_config()
    path = tmp_path / "run" / "model_5.pt"
    path.parent.mkdir()
    torch.save({"model": build_model(NextAccel, config.model).state_dict()}, path)
    checkpoint = load_checkpoint(path, "tokenizer_checkpoint")
    with pytest.raises(
        CheckpointError, match=r"is not a checkpoint of AQVAE: it lacks .* another kind of model"
    ) as error:
        load_tokenizer(checkpoint, path, config.model, "cpu")
    one_line_naming(error, path)
    OmegaConf.save(config, path.parent / "config.yaml")  # with its run's config, the kind is named
    with pytest.raises(
        CheckpointError, match=r"is a checkpoint of nextaccel\.nextaccel\.NextAccel \(.*config\.yaml\), not of "
    ) as error:
        load_tokenizer(checkpoint, path, config.model, "cpu")
    one_line_naming(error, path)


def test_distillation_start_checkpoint_is_checked_before_direct_loads_it(tmp_path):
    student = nextaccel_config().model
    run = tmp_path / "teacher_run"
    run.mkdir()
    with pytest.raises(CheckpointError, match=r"is a directory holding no model_<N>\.pt"):
        check_student_start(run, student)
    torch.save({"model": {}}, run / "model_5.pt")
    with pytest.raises(CheckpointError, match="is a run directory"):
        check_student_start(run, student)
    teacher = merged_config("tiny_teacher.yaml", NextAccelConfig)
    OmegaConf.save(teacher, run / "config.yaml")
    with pytest.raises(CheckpointError, match=r"start checkpoint .* was trained with privileged_context=True") as error:
        check_student_start(run / "model_5.pt", student)
    one_line_naming(error, run / "model_5.pt")
    OmegaConf.save(merged_config("tiny_aqvae.yaml", AQVAEConfig), run / "config.yaml")
    with pytest.raises(CheckpointError, match=r"is a checkpoint of nextaccel\.aqvae\.AQVAE"):
        check_student_start(run / "model_5.pt", student)
    OmegaConf.save(nextaccel_config(), run / "config.yaml")
    check_student_start(run / "model_5.pt", student)  # a base model of the same setup passes


# Writing --------------------------------------------------------------------------------------------------------


def test_directs_checkpointer_becomes_the_plugins(tmp_path):
    engine = aqvae_engine()
    checkpointer = attach_checkpointer(engine, tmp_path)
    assert isinstance(checkpointer, PluginCheckpointer) and checkpointer.engine is engine
    checkpointer.save(5)
    checkpointer.save("best")
    assert (tmp_path / "last_model.txt").read_text() == "5", "model_best.pt never moves last_model.txt"
    saved = torch.load(tmp_path / "model_5.pt", weights_only=True)
    assert {"model", "optimizer", "training_state"} <= set(saved)
    assert saved["training_state"]["best_ssim"] == float("-inf")
    assert "_family_generator" in saved["training_state"]["generators"]


def test_an_interrupted_save_leaves_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model_best.pt"
    atomic_save({"model": {"weight": torch.zeros(3)}}, path)

    def interrupted_save(data, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"model": {"weight": torch.ones(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(read_checkpoint(path, "model_best.pt")["model"]["weight"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["model_best.pt"], "no temporary file is left behind"


# Resuming -------------------------------------------------------------------------------------------------------


def test_resume_errors_name_the_checkpoint(tmp_path, good_checkpoint):
    engine = aqvae_engine()
    engine._in_training = True  # as inside DIRECT's train()
    checkpointer = attach_checkpointer(engine, tmp_path)
    broken = truncated(good_checkpoint)
    shutil.copy(broken, tmp_path / "model_7.pt")
    (tmp_path / "last_model.txt").write_text("7")
    with pytest.raises(CheckpointError, match=r"checkpoint to resume from .*model_7\.pt' cannot be read") as error:
        checkpointer.load("latest")
    one_line_naming(error, tmp_path / "model_7.pt")
    torch.save({"model": build_model(NextAccel, nextaccel_config().model).state_dict()}, tmp_path / "model_7.pt")
    message = r"model_7\.pt' is not a checkpoint of this AQVAE \('model' entry\): it lacks \d+ of its \d+ weights"
    with pytest.raises(CheckpointError, match=message):
        checkpointer.load("latest")
    with pytest.raises(CheckpointError, match=r"initialization checkpoint .*model_7\.pt' is not a checkpoint of"):
        checkpointer.load_models_from_file(tmp_path / "model_7.pt")


def test_last_model_pointing_at_best_resumes_from_the_highest_checkpoint(tmp_path):
    engine = aqvae_engine()
    checkpointer = attach_checkpointer(engine, tmp_path)
    checkpointer.save(6)
    checkpointer.save(11)
    checkpointer.save("best")
    (tmp_path / "last_model.txt").write_text("best")  # what an interrupted best-model save of older versions left
    assert checkpointer.load("latest")["iteration"] == 11


def validate(engine, score: float, iteration: int) -> None:
    with EventStorage(iteration) as storage:
        storage.add_scalar("val/aqvae_all_levels/fastmri_ssim_metric", score)
        engine.validate_model_at_interval(lambda _: None, iteration, 1000)


def test_resumed_best_score_never_lets_a_worse_model_replace_model_best(tmp_path):
    engine = aqvae_engine()
    checkpointer = attach_checkpointer(engine, tmp_path)
    checkpointer.save(6)  # as DIRECT does: the iteration's checkpoint comes before its validation
    validate(engine, 0.9, 6)
    best = torch.load(tmp_path / "model_best.pt", weights_only=True)
    assert best["training_state"]["best_ssim"] == 0.9 and (tmp_path / "last_model.txt").read_text() == "6"

    resumed = aqvae_engine()  # a new process: --resume from model_6.pt, whose own best score is still -inf
    resumed._in_training = True  # as inside DIRECT's train()
    attach_checkpointer(resumed, tmp_path).load("latest")
    assert resumed._best_ssim == 0.9
    validate(resumed, 0.8, 9)
    assert torch.load(tmp_path / "model_best.pt", weights_only=True)["training_state"]["best_ssim"] == 0.9
    validate(resumed, 0.95, 12)
    assert torch.load(tmp_path / "model_best.pt", weights_only=True)["training_state"]["best_ssim"] == 0.95


def test_discriminator_optimizer_is_checkpointed_and_resumed(tmp_path):
    engine = aqvae_engine(adversarial=True)
    engine.model.train()
    batch = direct_batch(torch.ones(64, 64, dtype=torch.bool))
    with EventStorage(0):
        engine._do_iteration(batch, engine.build_loss())
    attach_checkpointer(engine, tmp_path).save(5)
    state = torch.load(tmp_path / "model_5.pt", weights_only=True)["discriminator_optimizer"]
    assert state["state"], "the discriminator's optimizer has stepped"

    resumed = aqvae_engine(adversarial=True)
    attach_checkpointer(resumed, tmp_path).load("latest")
    restored = resumed.discriminator_optimizer.state_dict()
    for index, moments in state["state"].items():
        for name, value in moments.items():
            assert torch.equal(restored["state"][index][name], value), (index, name)
    for key, value in engine.discriminator.state_dict().items():
        assert torch.equal(resumed.discriminator.state_dict()[key], value), key

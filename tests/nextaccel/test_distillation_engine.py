"""On-policy privileged information distillation: the reverse KL, randomized prefixes (also from a frozen base model's
rollouts), the frozen teacher, on-policy rollouts (argmax and sampled, reproducible), the errors a teacher or a prefix
model can cause, the shipped configs, and plain `direct train`/`direct predict` of teacher and distillation."""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from direct.data.transforms import fft2, ifft2
from direct.environment import load_models_into_environment_config
from direct.utils.events import EventStorage
from helpers import phantom
from omegaconf import OmegaConf

from direct_nextaccel.core.images import direct_batch
from direct_nextaccel.data.fastmri_h5 import fastmri_filename, write_fastmri_h5
from direct_nextaccel.data.simulate import simulate_volume
from direct_nextaccel.modules.options import SamplingMode
from direct_nextaccel.nextaccel import acquisition
from direct_nextaccel.nextaccel.aqvae import AQVAE
from direct_nextaccel.nextaccel.config import NextAccelConfig
from direct_nextaccel.nextaccel.distillation_engine import (
    DistillationEngine,
    TeacherEngine,
    randomize_prefix,
    reverse_kl,
)
from direct_nextaccel.nextaccel.nextaccel import NextAccel
from direct_nextaccel.nextaccel.tokenizer_loading import TEACHER_ARCHITECTURE_KEYS, tokenizer_arguments

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "direct_nextaccel" / "configs"
PAPER_CONFIGS = REPO / "projects" / "fastmri_brain" / "configs"
SMALL_CONFIGS = PAPER_CONFIGS / "small"
FAMILIES = ["cartesian_y", "cartesian_x", "radial", "gaussian2d"]
BIN = Path(sys.executable).parent
CPU = ["--device", "cpu", "--num-gpus", "0", "--num-workers", "0"]
FILENAME = "file_brain_AXT1_900_0001.h5"
MODEL_ARGUMENTS = NextAccel.__init__.__code__.co_varnames[1 : NextAccel.__init__.__code__.co_argcount]


def make_batch(family: str = "cartesian_y") -> dict:
    """Two slices of one file as DIRECT batches them: the R32 input of the nested family and the full k-space."""
    kspace = torch.view_as_real(torch.from_numpy(simulate_volume(phantom(), coils=4, matrix=(64, 64), seed=1)[0]))
    kspace = kspace.float()  # S, C, H, W, 2
    mask = acquisition.level_masks([FILENAME] * 2, [family] * 2, (64, 64), 1 / 64)[:, 0]
    return direct_batch(kspace, mask, [FILENAME] * 2)


def network(config) -> NextAccel:
    keys = {k: config[k] for k in MODEL_ARGUMENTS if k in config}
    return NextAccel(**{k: tuple(v) if OmegaConf.is_list(v) else v for k, v in keys.items()})


# The reverse KL and the randomized prefixes --------------------------------------------------------------------------


def test_reverse_kl_equals_the_hand_computed_divergence():
    # level A: two positions over a vocabulary of 2; level B: one position
    student_a = torch.log(torch.tensor([[[0.5, 0.5], [0.8, 0.2]]]))
    teacher_a = torch.log(torch.tensor([[[0.9, 0.1], [0.5, 0.5]]]))
    student_b = torch.log(torch.tensor([[[1 / 3, 2 / 3]]]))
    teacher_b = torch.log(torch.tensor([[[2 / 3, 1 / 3]]]))
    kl_a = (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1) + 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.4)) / 2
    kl_b = math.log(2) / 3
    loss, per_level = reverse_kl([student_a, student_b], [teacher_a + 7.0, teacher_b])  # logits: shift-invariant
    assert per_level[0].item() == pytest.approx(kl_a, rel=1e-6)
    assert per_level[1].item() == pytest.approx(kl_b, rel=1e-6)
    assert loss.item() == pytest.approx((kl_a + kl_b) / 2, rel=1e-6)
    forward, _ = reverse_kl([teacher_a, teacher_b], [student_a, student_b])
    assert forward.item() != pytest.approx(loss.item(), rel=1e-3)  # the direction matters


def test_reverse_kl_is_zero_when_student_and_teacher_agree():
    generator = torch.Generator().manual_seed(0)
    student = [torch.randn(2, g * g, 64, generator=generator, requires_grad=True) for g in (4, 5, 6, 7, 8)]
    loss, per_level = reverse_kl(student, [s.detach() - 3.0 for s in student])
    assert abs(loss.item()) < 1e-6 and all(abs(value.item()) < 1e-6 for value in per_level)
    loss.backward()
    assert all(s.grad.abs().max() < 1e-6 for s in student)


def test_randomized_prefixes_keep_r32_and_the_targets():
    generator = torch.Generator().manual_seed(0)
    tokens = [torch.randint(1000, (2, g, g), generator=generator) for g in (3, 4, 5, 6, 7, 8)]
    predictions = [torch.randint(1000, (2, g, g), generator=generator) for g in (4, 5, 6, 7, 8)]
    unchanged = randomize_prefix(tokens, 0.0, "mixed", 1000, predictions)
    assert all(torch.equal(a, b) for a, b in zip(unchanged, tokens, strict=True))
    own = randomize_prefix(tokens, 1.0, "self", 1000, predictions)
    assert torch.equal(own[0], tokens[0]) and torch.equal(own[-1], tokens[-1])
    assert all(torch.equal(own[level], predictions[level - 1]) for level in range(1, 5))
    half = randomize_prefix(tokens, 0.5, "uniform", 1000, generator=torch.Generator().manual_seed(1))
    changed = torch.cat([(half[level] != tokens[level]).flatten() for level in range(1, 5)]).float().mean()
    assert 0.4 < changed < 0.6 and all(0 <= t.min() and t.max() < 1000 for t in half)
    with pytest.raises(ValueError, match="prefix noise 'gaussian' is not one of"):
        randomize_prefix(tokens, 0.5, "gaussian", 1000)
    with pytest.raises(ValueError, match="needs the model's own predictions"):
        randomize_prefix(tokens, 0.5, "self", 1000)


def test_base_rollout_prefixes_take_the_rollouts_tokens_where_replaced_and_the_tokenizers_elsewhere():
    generator = torch.Generator().manual_seed(0)
    tokens = [torch.randint(1000, (2, g, g), generator=generator) for g in (3, 4, 5, 6, 7, 8)]
    rollout = [torch.randint(1000, (2, g, g), generator=generator) for g in (4, 5, 6, 7, 8)]
    noisy = randomize_prefix(tokens, 0.3, "base_rollout", 1000, rollout, generator=torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)  # the same draws: one Bernoulli(0.3) map per level R16 .. R2
    for level in range(1, 5):
        replaced = torch.rand(tokens[level].shape, generator=replay) < 0.3
        assert torch.equal(noisy[level], torch.where(replaced, rollout[level - 1], tokens[level]))
        assert 0.1 < replaced.float().mean() < 0.5
    assert torch.equal(noisy[0], tokens[0]) and torch.equal(noisy[-1], tokens[-1])  # R32 exact, FS only a target
    whole = randomize_prefix(tokens, 1.0, "base_rollout", 1000, rollout)
    assert all(torch.equal(whole[level], rollout[level - 1]) for level in range(1, 5))
    assert same(randomize_prefix(tokens, 0.0, "base_rollout", 1000, rollout), tokens)
    with pytest.raises(ValueError, match=r"^prefix noise 'base_rollout' needs the base model's rollout tokens$"):
        randomize_prefix(tokens, 0.5, "base_rollout", 1000)
    with pytest.raises(ValueError, match=r"^substitute tokens \[\(2, 4, 4\)\] do not match the token maps"):
        randomize_prefix(tokens, 0.5, "base_rollout", 1000, rollout[:1])


# Engines on checkpoints made in-process -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A random tiny tokenizer, a privileged teacher and a base model sharing its codebook, saved as DIRECT
    checkpoints."""
    root = tmp_path_factory.mktemp("distillation_checkpoints")
    config = distill_config(Path("unused"), Path("unused"))
    torch.manual_seed(0)
    tokenizer = AQVAE(**tokenizer_arguments(config.model), context_strides=tuple(config.model.context_strides))
    torch.manual_seed(1)
    teacher = network(config.additional_models.teacher)
    torch.manual_seed(3)
    base = network(config.model)
    paths = {name: root / name / "model_0.pt" for name in ("tokenizer", "teacher", "base")}
    for name, module in (("tokenizer", tokenizer), ("teacher", teacher), ("base", base)):
        if name != "tokenizer":
            module.init_context_encoder_from(tokenizer.encoder.state_dict())
            module.set_codebook(tokenizer.quantizer.codebook)
        paths[name].parent.mkdir()
        torch.save({"model": module.state_dict()}, paths[name])
    return paths


def distill_config(tokenizer: Path, teacher: Path, teacher_overrides: dict | None = None, **model):
    """direct_nextaccel/configs/tiny_distill.yaml merged as DIRECT merges it, without the sensitivity model (a random
    tokenizer)."""
    config = OmegaConf.load(CONFIGS / "tiny_distill.yaml")
    config.model = OmegaConf.merge(OmegaConf.structured(NextAccelConfig), config.model, model)
    config.model.tokenizer_checkpoint = str(tokenizer)
    config.model.teacher_checkpoint = str(teacher)
    entry = OmegaConf.merge(config.additional_models.teacher, teacher_overrides or {})
    config.additional_models = {"teacher": OmegaConf.merge(OmegaConf.structured(NextAccelConfig), entry)}
    return config


def teacher_config(checkpoints: dict[str, Path], prefix_overrides: dict | None = None, **model):
    """A TeacherEngine config on the tiny architecture whose prefixes come from the base model's rollouts
    (``additional_models.prefix_model``, merged as DIRECT merges it)."""
    values = {"privileged_context": True, "prefix_noise": "base_rollout", "prefix_noise_fraction": 1.0}
    config = distill_config(checkpoints["tokenizer"], checkpoints["teacher"], **{**values, **model})
    config.model.prefix_model_checkpoint = str(checkpoints["base"])
    config.training.loss.losses = [{"function": "token_cross_entropy", "multiplier": 1.0}]
    entry = OmegaConf.merge(config.additional_models.teacher, {"privileged_context": False}, prefix_overrides or {})
    config.additional_models = {"prefix_model": OmegaConf.merge(OmegaConf.structured(NextAccelConfig), entry)}
    return config


def build(config, engine_class=DistillationEngine):
    models = {name: network(entry) for name, entry in config.additional_models.items()}
    torch.manual_seed(2)
    engine = engine_class(config, network(config.model), "cpu", fft2, ifft2, **models)
    engine.ndim = 2  # set by DIRECT from the dataset
    engine.initialise_from_tokenizer()
    return engine


@pytest.fixture()
def engine(checkpoints) -> DistillationEngine:
    return build(distill_config(checkpoints["tokenizer"], checkpoints["teacher"]))


def test_teacher_is_loaded_frozen_and_kept_out_of_direct(engine, checkpoints):
    saved = torch.load(checkpoints["teacher"], weights_only=True)["model"]
    assert all(torch.equal(value, saved[key]) for key, value in engine.teacher.state_dict().items())
    assert "teacher" not in engine.models  # so: in no optimizer group, never in train mode, in no checkpoint
    assert all(not p.requires_grad for p in engine.teacher.parameters())
    engine.models_training_mode()
    assert not engine.teacher.training
    assert list(engine.build_loss()) == ["reverse_kl"]


def test_distillation_steps_update_the_student_and_never_the_teacher(engine):
    teacher_before = {k: v.clone() for k, v in engine.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in engine.transformer.state_dict().items()}
    groups = [{"params": engine.model.parameters()}]
    groups += [{"params": model.parameters()} for model in engine.models.values()]  # as direct.train builds it
    # Even with the teacher's parameters in an optimizer with weight decay, nothing may touch them.
    groups.append({"params": engine.teacher.parameters(), "weight_decay": 0.5})
    optimizer = torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.1)
    engine.models_training_mode()
    losses = engine.build_loss()
    with EventStorage(0) as storage:
        for _ in range(3):
            output = engine._do_iteration(make_batch(), losses)
            assert all(p.grad is None for p in engine.teacher.parameters())
            assert engine.transformer.head.weight.grad is not None
            optimizer.step()
            optimizer.zero_grad()
        logged = storage.latest()
    assert {f"reverse_kl_R{r}" for r in (32, 16, 8, 4, 2)} <= set(logged)
    assert set(output.data_dict) == {"reverse_kl"} and output.data_dict["reverse_kl"].item() > 0
    for key, value in engine.teacher.state_dict().items():
        assert torch.equal(value, teacher_before[key]), key
    assert not engine.teacher.training and engine.model.training
    assert any(not torch.equal(v, student_before[k]) for k, v in engine.transformer.state_dict().items())


def test_rollouts_are_the_students_own_tokens(engine):
    engine.models_training_mode()
    batch = make_batch()
    batch["sensitivity_map"] = engine.compute_sensitivity_map(batch["sensitivity_map"])
    images, family = engine.hierarchy(batch, levels=(0,))
    q32 = engine.tokenizer.encode(images, family, levels=[0]).indices[0]
    student = engine.transformer

    def own_tokens():
        student.eval()
        tokens = student.generate(q32, images[:, 0], family)
        student.train()
        return tokens

    first = engine.training_outputs(batch)["rollout"]
    assert all(torch.equal(a, b) for a, b in zip(first, own_tokens(), strict=True))
    assert engine.model.training  # the rollout ran in eval mode and gave training mode back
    with torch.no_grad():  # a different student decodes a different trajectory
        student.head.bias.zero_()
        favourite = int(first[1].flatten().bincount(minlength=student.codebook_size).argmin())
        student.head.bias[favourite] = 100.0
    second = engine.training_outputs(batch)["rollout"]
    assert torch.equal(second[0], first[0])  # Q32 is the tokenizer's
    assert all((level == favourite).all() for level in second[1:])
    assert not torch.equal(second[1], first[1])
    assert all(torch.equal(a, b) for a, b in zip(second, own_tokens(), strict=True))


def r32_inputs(engine, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The R32 tokens, R32 image and family labels an engine forms from a batch (sensitivity maps normalised)."""
    batch["sensitivity_map"] = engine.compute_sensitivity_map(batch["sensitivity_map"])
    images, family = engine.hierarchy(batch, levels=(0,))
    q32 = engine.tokenizer.encode(images, family, levels=[0]).indices[0]
    return q32, images[:, 0], family


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_the_sampled_rollout_differs_from_argmax_tends_to_it_as_temperature_falls_and_is_reproducible(checkpoints):
    engine = build(distill_config(checkpoints["tokenizer"], checkpoints["teacher"], rollout="multinomial"))
    engine.models_training_mode()
    batch = make_batch()
    q32, image32, family = r32_inputs(engine, batch)
    student = engine.transformer
    student.eval()
    argmax = student.generate(q32, image32, family)
    student.train()

    generator = engine._rollout_generator
    start = generator.get_state()
    sampled = engine.rollout(q32, image32, family)  # temperature 1.0, the config's
    assert torch.equal(sampled[0], q32) and engine.model.training
    differing = [float((a != b).float().mean()) for a, b in zip(sampled[1:], argmax[1:], strict=True)]
    assert all(fraction > 0.5 for fraction in differing), differing  # 64 near-uniform codes: mostly other tokens
    generator.set_state(start)
    assert same(engine.rollout(q32, image32, family), sampled)  # the generator alone decides the samples
    assert not same(engine.rollout(q32, image32, family), sampled)  # and moves on
    generator.set_state(start)
    assert same(engine.training_outputs(batch)["rollout"], sampled)  # the loss is computed on that rollout

    # seeded from the run's torch seed: an engine built the same way samples the same first rollout
    again = build(distill_config(checkpoints["tokenizer"], checkpoints["teacher"], rollout="multinomial"))
    assert torch.equal(again._rollout_generator.get_state(), start)
    # the resume state covers it: a checkpoint's training state puts the generator back where it was
    generator.set_state(start)
    state = engine.training_state()
    assert "_rollout_generator" in state["generators"]
    first = engine.rollout(q32, image32, family)
    engine._resume_state = state
    engine._restore_resumed_random_state()
    assert same(engine.rollout(q32, image32, family), first)

    engine.cfg.model.temperature = 1e-20  # temperature -> 0: the sampled rollout is the argmax rollout
    assert same(engine.rollout(q32, image32, family), argmax)
    engine.cfg.model.rollout = SamplingMode.argmax
    engine.cfg.model.temperature = 1.0
    before = generator.get_state()
    assert same(engine.rollout(q32, image32, family), argmax)
    assert torch.equal(generator.get_state(), before)  # argmax draws nothing


def test_teacher_prefixes_from_the_base_models_rollout(checkpoints):
    teacher = build(teacher_config(checkpoints), TeacherEngine)
    saved = torch.load(checkpoints["base"], weights_only=True)["model"]
    base = teacher.prefix_model
    assert all(torch.equal(value, saved[key]) for key, value in base.state_dict().items())
    assert "prefix_model" not in teacher.models  # so: in no optimizer group, never in train mode, in no checkpoint
    assert all(not p.requires_grad for p in base.parameters()) and base in teacher.frozen
    teacher.models_training_mode()
    batch = make_batch()
    q32, image32, family = r32_inputs(teacher, batch)
    images, _ = teacher.hierarchy(batch)
    tokens = teacher.tokenizer.encode(images, family).indices
    assert torch.equal(tokens[0], q32)
    config = teacher.cfg.model

    def base_tokens(mode: str, state: torch.Tensor) -> list[torch.Tensor]:
        generator = torch.Generator().set_state(state)
        return base.generate(q32, image32, family, mode=mode, temperature=config.temperature, generator=generator)

    # fraction 1: every R16..R2 token is the base model's own sampled rollout; R32 and the FS target stay
    state = teacher._prefix_generator.get_state()
    noisy = teacher.teacher_forcing_tokens(tokens, image32, family, images[:, -1])
    rollout = base_tokens("multinomial", state)
    assert same(noisy[1:-1], rollout[1:-1]) and torch.equal(noisy[0], tokens[0]) and torch.equal(noisy[-1], tokens[-1])
    assert all(float((a != b).float().mean()) > 0.5 for a, b in zip(rollout[1:-1], tokens[1:-1], strict=True))
    # fraction 0.5: the rollout's token where replaced (the global torch stream, as for every kind), the tokenizer's
    # elsewhere
    config.prefix_noise_fraction = 0.5
    state = teacher._prefix_generator.get_state()
    torch.manual_seed(11)
    noisy = teacher.teacher_forcing_tokens(tokens, image32, family, images[:, -1])
    rollout = base_tokens("multinomial", state)
    torch.manual_seed(11)
    for level in range(1, len(tokens) - 1):
        replaced = torch.rand(tokens[level].shape) < 0.5
        assert torch.equal(noisy[level], torch.where(replaced, rollout[level], tokens[level]))
    # an argmax base rollout
    config.prefix_rollout = SamplingMode.argmax
    config.prefix_noise_fraction = 1.0
    noisy = teacher.teacher_forcing_tokens(tokens, image32, family, images[:, -1])
    assert same(noisy[1:-1], base.generate(q32, image32, family)[1:-1])

    config.prefix_rollout = SamplingMode.multinomial
    before = {k: v.clone() for k, v in base.state_dict().items()}
    optimizer = torch.optim.AdamW([{"params": teacher.model.parameters()}], lr=1e-2)
    with EventStorage(0):
        output = teacher._do_iteration(make_batch(), teacher.build_loss())
    optimizer.step()
    assert output.data_dict["token_cross_entropy"].item() > 0
    assert all(p.grad is None for p in base.parameters()) and not base.training
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())
    assert "_prefix_generator" in teacher.training_state()["generators"]


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert len(message.splitlines()) == 1, message
    return message


def test_prefix_model_problems_are_named_in_one_line(checkpoints, tmp_path, caplog):
    def refused(config, exception=ValueError) -> str:
        with pytest.raises(exception) as error:
            build(config, TeacherEngine)
        return one_line(error)

    config = teacher_config(checkpoints)
    config.model.prefix_model_checkpoint = None
    assert refused(config).startswith("model.prefix_model_checkpoint is not set: give the path of a DIRECT checkpoint")
    config.model.prefix_model_checkpoint = str(tmp_path / "missing.pt")
    assert "model.prefix_model_checkpoint" in refused(config, FileNotFoundError)
    assert "missing.pt' is not a file: it does not exist" in refused(config, FileNotFoundError)
    config.model.prefix_model_checkpoint = str(checkpoints["base"].parent)
    assert "is a run directory: name one of its model_<N>.pt files" in refused(config)

    config = teacher_config(checkpoints)
    del config.additional_models["prefix_model"]
    assert "model.prefix_noise base_rollout needs additional_models.prefix_model" in refused(config)
    message = refused(teacher_config(checkpoints, {"privileged_context": True}))
    assert message.startswith("additional_models.prefix_model has privileged_context true")
    message = refused(teacher_config(checkpoints, {"codebook_size": 32}))
    assert message == "additional_models.prefix_model has codebook_size=32, the teacher model has 64"
    assert "has no key 'blocks.3." in refused(teacher_config(checkpoints, {"depth": 4}))
    message = refused(teacher_config(checkpoints, {"top_p": 1.5}))
    assert message == "additional_models.prefix_model.top_p 1.5 is not in (0, 1]"

    # the privileged teacher's checkpoint is no base model: its state dict has the fully sampled image's context
    config = teacher_config(checkpoints)
    config.model.prefix_model_checkpoint = str(checkpoints["teacher"])
    assert "has unexpected key 'source_embed" in refused(config)
    # ... and with the config.yaml DIRECT writes next to a checkpoint, it is named as such
    other = tmp_path / "teacher_run" / "model_0.pt"
    other.parent.mkdir()
    state = torch.load(checkpoints["base"], weights_only=True)
    torch.save(state, other)
    OmegaConf.save({"model": {"privileged_context": True}}, other.parent / "config.yaml")
    config.model.prefix_model_checkpoint = str(other)
    assert "was trained with privileged_context=True" in refused(config)
    OmegaConf.save({"model": {"mask_family": "radial"}}, other.parent / "config.yaml")
    assert "was trained with mask_family='radial'" in refused(config)
    (other.parent / "config.yaml").unlink()
    state["model"]["codebook"] = state["model"]["codebook"] + 1.0
    torch.save(state, other)
    assert "has another codebook than model.tokenizer_checkpoint" in refused(config)

    # bad choices are refused by the typed config, naming the key and the allowed values
    for key, value, allowed in (
        ("prefix_rollout", "beam", "argmax, multinomial, top_k_top_p"),
        ("prefix_noise", "base", "uniform, self, mixed, base_rollout"),
    ):
        with pytest.raises(ValueError, match=rf"'{value}', expected one of \[{allowed}\]\n.*{key}"):
            OmegaConf.update(teacher_config(checkpoints), f"model.{key}", value)

    # a prefix model configured for another kind of prefix noise is left out of DIRECT's optimizer and checkpoints
    config = teacher_config(checkpoints, prefix_noise="mixed")
    config.model.prefix_model_checkpoint = None
    with caplog.at_level(logging.WARNING):
        teacher = build(config, TeacherEngine)
    assert teacher.prefix_model is None and "prefix_model" not in teacher.models
    assert "additional_models.prefix_model is not used with model.prefix_noise 'mixed'" in caplog.text


def test_a_teacher_started_from_the_base_model(checkpoints, tmp_path):
    """``model.teacher_init_checkpoint``: every weight is the base model's but the source embeddings and the recorded
    families (the teacher's own); a teacher, another model or another architecture is refused in one line."""
    scratch = build(teacher_config(checkpoints), TeacherEngine)
    config = teacher_config(checkpoints, teacher_init_checkpoint=str(checkpoints["base"]))
    teacher = build(config, TeacherEngine)
    base = torch.load(checkpoints["base"], weights_only=True)["model"]
    own = teacher.transformer.state_dict()
    assert {key for key in own if key not in base} == {key for key in own if key.startswith("source_embed.")}
    for key, value in own.items():
        if key.startswith("source_embed.") or key == "trained_families":
            assert torch.equal(value, scratch.transformer.state_dict()[key]), key
        else:
            assert torch.equal(value, base[key]), key
    assert any(not torch.equal(value, own[key]) for key, value in scratch.transformer.state_dict().items())
    # it trains as a teacher: the fully sampled image reaches the loss through the source embeddings
    with EventStorage(0):
        teacher._do_iteration(make_batch(), teacher.build_loss())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in teacher.transformer.source_embed.parameters())

    def refused(path) -> str:
        with pytest.raises(ValueError) as error:
            build(teacher_config(checkpoints, teacher_init_checkpoint=str(path)), TeacherEngine)
        return one_line(error)

    assert "has 'source_embed." in refused(checkpoints["teacher"])
    assert "is not a checkpoint of NextAccel" in refused(checkpoints["tokenizer"])
    other = tmp_path / "deeper" / "model_0.pt"
    other.parent.mkdir()
    torch.save(torch.load(checkpoints["base"], weights_only=True), other)
    OmegaConf.save({"model": {"depth": 4}}, other.parent / "config.yaml")
    source = other.parent / "config.yaml"
    assert refused(other).endswith(f"was trained with depth=4 ({source}), the configuration has 3")


def test_direct_builds_the_engines_from_yamls_and_keeps_the_frozen_models_out(checkpoints, tmp_path, monkeypatch):
    """DIRECT's own environment (structured merge, models built from the YAML, engine) on the tiny YAMLs switched to
    the paper's choices: a teacher on base-model prefixes and a student with a sampled rollout."""
    import direct.environment

    monkeypatch.setattr(direct.environment, "setup_logging", lambda *args, **kwargs: None)
    teacher_yaml = OmegaConf.load(CONFIGS / "tiny_teacher.yaml")
    distill_yaml = OmegaConf.load(CONFIGS / "tiny_distill.yaml")
    for config in (teacher_yaml, distill_yaml):
        del config.additional_models["sensitivity_model"]  # the random tokenizer has none
        config.model.tokenizer_checkpoint = str(checkpoints["tokenizer"])
    teacher_yaml.model.prefix_noise = "base_rollout"
    teacher_yaml.model.prefix_model_checkpoint = str(checkpoints["base"])
    prefix_model = {**OmegaConf.to_container(distill_yaml.additional_models.teacher), "privileged_context": False}
    teacher_yaml.additional_models.prefix_model = prefix_model
    distill_yaml.model.rollout = "multinomial"
    distill_yaml.model.teacher_checkpoint = str(checkpoints["teacher"])
    built = {}
    for name, config in (("teacher", teacher_yaml), ("distill", distill_yaml)):
        path = tmp_path / f"{name}.yaml"
        OmegaConf.save(config, path)
        built[name] = direct.environment.setup_common_environment("run", tmp_path / name, str(path), "cpu", 0, False)
    teacher, student = built["teacher"].engine, built["distill"].engine
    assert isinstance(teacher, TeacherEngine) and isinstance(teacher.prefix_model, NextAccel)
    assert teacher.cfg.model.prefix_rollout == "multinomial" and not teacher.prefix_model.privileged_context
    assert isinstance(student, DistillationEngine) and student.cfg.model.rollout == "multinomial"
    assert dict(teacher.models) == {} and dict(student.models) == {}  # what DIRECT's optimizer and checkpoints see


def test_distillation_needs_a_base_student(engine, tmp_path):
    with pytest.raises(ValueError, match=r"set training\.model_checkpoint"):
        engine.train(None, None, [], tmp_path, resume=False, initialization=None)


@pytest.mark.parametrize(
    ("teacher_overrides", "model", "message"),
    [
        ({"privileged_context": False}, {}, "additional_models.teacher has privileged_context false"),
        ({"token_grids": [3, 4, 5, 6, 7, 9]}, {}, r"additional_models.teacher has token_grids=\[3, 4, 5, 6, 7, 9\]"),
        ({"codebook_size": 32}, {}, "additional_models.teacher has codebook_size=32"),
        ({"depth": 4}, {}, "has no key 'blocks.3.* that the configured network needs"),
        ({}, {"rollout": "beam"}, r"'beam', expected one of \[argmax, multinomial, top_k_top_p\]\n.*rollout"),
    ],
)
def test_bad_teachers_are_refused(checkpoints, teacher_overrides, model, message):
    with pytest.raises(ValueError, match=message):
        build(distill_config(checkpoints["tokenizer"], checkpoints["teacher"], teacher_overrides, **model))


def test_teacher_checkpoint_problems_are_named(checkpoints, tmp_path):
    with pytest.raises(ValueError, match=r"model\.teacher_checkpoint is not set"):
        build(distill_config(checkpoints["tokenizer"], ""))
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        build(distill_config(checkpoints["tokenizer"], tmp_path / "missing.pt"))
    config = distill_config(checkpoints["tokenizer"], checkpoints["teacher"])
    del config.additional_models["teacher"]
    with pytest.raises(ValueError, match=r"DistillationEngine needs additional_models\.teacher"):
        build(config)
    # a teacher trained on another tokenizer: same shapes, other codebook
    other = tmp_path / "other" / "model_0.pt"
    other.parent.mkdir()
    state = torch.load(checkpoints["teacher"], weights_only=True)
    state["model"]["codebook"] = state["model"]["codebook"] + 1.0
    torch.save(state, other)
    with pytest.raises(ValueError, match=r"has another codebook than model\.tokenizer_checkpoint"):
        build(distill_config(checkpoints["tokenizer"], other))
    # a teacher trained on another mask family, known from the config.yaml DIRECT wrote next to its checkpoint
    torch.save(torch.load(checkpoints["teacher"], weights_only=True), other)
    OmegaConf.save({"model": {"mask_family": "radial", "privileged_context": True}}, other.parent / "config.yaml")
    with pytest.raises(ValueError, match=r"was trained with mask_family='radial'.* has 'cartesian_y'"):
        build(distill_config(checkpoints["tokenizer"], other))


def test_teacher_engine_trains_on_randomized_prefixes_with_the_fully_sampled_image(checkpoints):
    config = distill_config(
        checkpoints["tokenizer"], checkpoints["teacher"], privileged_context=True, prefix_noise="self"
    )
    config.model.prefix_noise_fraction = 1.0
    config.training.loss.losses = [{"function": "token_cross_entropy", "multiplier": 1.0}]
    del config.additional_models["teacher"]
    teacher = build(config, TeacherEngine)
    teacher.models_training_mode()
    batch = make_batch()
    batch["sensitivity_map"] = teacher.compute_sensitivity_map(batch["sensitivity_map"])
    images, family = teacher.hierarchy(batch)
    tokens = teacher.tokenizer.encode(images, family).indices
    torch.manual_seed(0)
    noisy = teacher.teacher_forcing_tokens(tokens, images[:, 0], family, images[:, -1])
    assert torch.equal(noisy[0], tokens[0]) and torch.equal(noisy[-1], tokens[-1])
    assert any(not torch.equal(a, b) for a, b in zip(noisy[1:-1], tokens[1:-1], strict=True))
    with EventStorage(0):
        output = teacher._do_iteration(make_batch(), teacher.build_loss())
    assert output.data_dict["token_cross_entropy"].item() > 0
    assert teacher.transformer.source_embed[0].grad is not None  # the fully sampled image's context is used
    teacher.model.eval()
    with torch.no_grad():
        assert teacher._do_iteration(make_batch()).output_image.shape == (2, 64, 64)
    with pytest.raises(
        ValueError, match=r"'gaussian', expected one of \[uniform, self, mixed, base_rollout\]\n.*prefix_noise"
    ):
        config.model.prefix_noise = "gaussian"  # a typed config refuses a bad choice when it is set
    bad = copy.deepcopy(config)
    bad.model.prefix_noise_fraction = 1.5
    with pytest.raises(ValueError, match=r"model.prefix_noise_fraction 1.5 is not in \[0, 1\]"):
        build(bad, TeacherEngine)


STAGES = ("nextaccel", "teacher", "distill")


@pytest.mark.parametrize("family", FAMILIES)
def test_paper_teacher_and_distillation_configs_fit_together(family):
    base, teacher, distill = (OmegaConf.load(PAPER_CONFIGS / f"{stage}_{family}.yaml") for stage in STAGES)
    assert teacher.model.engine_name == "TeacherEngine" and teacher.model.privileged_context
    assert distill.model.engine_name == "DistillationEngine" and distill.model.lr_schedule == "cosine"
    assert distill.training.lr == pytest.approx(1e-5) and distill.training.loss.losses[0].function == "reverse_kl"
    assert {base.model.mask_family, teacher.model.mask_family, distill.model.mask_family} == {family}
    architecture = [k for k in MODEL_ARGUMENTS if k in teacher.model and k != "privileged_context"]
    for key in architecture:
        assert distill.additional_models.teacher[key] == teacher.model[key], key
        assert distill.model[key] == base.model[key], key
    with torch.device("meta"):
        merged = OmegaConf.merge(OmegaConf.structured(NextAccelConfig), distill.additional_models.teacher)
        assert network(merged).privileged_context


def direct_merge(path: Path):
    """The ``model`` and ``additional_models`` blocks of a YAML as DIRECT merges them (typed, defaults filled in)."""
    return load_models_into_environment_config(OmegaConf.load(path))[1]


def architecture(node) -> dict:
    return {key: node[key] for key in MODEL_ARGUMENTS if key in node and key != "privileged_context"}


@pytest.mark.parametrize("family", FAMILIES)
def test_paper_teacher_prefixes_and_distillation_rollouts_as_direct_merges_them(family):
    base, teacher, distill = (direct_merge(PAPER_CONFIGS / f"{stage}_{family}.yaml") for stage in STAGES)
    # the teacher's prefixes come from the base model's own sampled rollouts
    assert teacher.model.prefix_noise == "base_rollout" and teacher.model.prefix_rollout == "multinomial"
    assert 0 < teacher.model.prefix_noise_fraction <= 1
    assert teacher.model.prefix_model_checkpoint == f"runs/nextaccel_{family}/model_749999.pt"
    assert not teacher.prefix_model.privileged_context
    assert architecture(teacher.prefix_model) == architecture(base.model)
    for key in TEACHER_ARCHITECTURE_KEYS:
        assert teacher.prefix_model[key] == teacher.model[key], key
    # the student feeds its sampled tokens back, as the paper's does; inference stays argmax
    assert distill.model.rollout == "multinomial" and distill.model.temperature == 1.0
    assert distill.model.decoding == base.model.decoding == "argmax"
    assert NextAccelConfig.rollout == "multinomial" and NextAccelConfig.prefix_rollout == "multinomial"


def test_tiny_configs_keep_the_demos_argmax_rollout_and_mixed_prefixes():
    teacher, distill = (direct_merge(CONFIGS / f"tiny_{stage}.yaml") for stage in ("teacher", "distill"))
    assert distill.model.rollout == "argmax" and "prefix_model" not in teacher
    assert teacher.model.prefix_noise == "mixed" and teacher.model.prefix_noise_fraction == 0.2


def test_small_tier_teacher_and_distillation_configs_fit_the_small_base_model():
    base, teacher, distill = (direct_merge(SMALL_CONFIGS / f"{stage}_cartesian_y.yaml") for stage in STAGES)
    assert teacher.model.engine_name == "TeacherEngine" and teacher.model.privileged_context
    assert distill.model.engine_name == "DistillationEngine" and distill.model.rollout == "multinomial"
    for node in (teacher.model, teacher.prefix_model, distill.model, distill.teacher):
        assert architecture(node) == architecture(base.model)
    for node in (teacher.model, distill.model):
        assert node.tokenizer_checkpoint == base.model.tokenizer_checkpoint
        assert (node.mask_family, node.training_masks) == (base.model.mask_family, base.model.training_masks)
    raw = {stage: OmegaConf.load(SMALL_CONFIGS / f"{stage}_cartesian_y.yaml") for stage in STAGES}
    last = {stage: config.training.num_iterations - 1 for stage, config in raw.items()}
    base_run = f"small_tier/runs/small_nextaccel_cartesian_y/model_{last['nextaccel']}.pt"
    assert teacher.model.prefix_model_checkpoint == raw["distill"].training.model_checkpoint == base_run
    assert distill.model.teacher_checkpoint == f"small_tier/runs/small_teacher_cartesian_y/model_{last['teacher']}.pt"


# direct train / direct predict -----------------------------------------------------------------------------------


def six_iterations(source: Path, destination: Path, **overrides) -> Path:
    config = OmegaConf.load(source)
    config.training.num_iterations = 6
    config.training.checkpointer.checkpoint_steps = 6
    config.training.validation_steps = 6
    config.logging.log_interval = 1
    for key, value in overrides.items():
        OmegaConf.update(config, key, value)
    OmegaConf.save(config, destination)
    return destination


def start(command: list[str], cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.Popen(
        [str(BIN / command[0]), *command[1:]],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, f"{process.args[1:3]} failed:\n{output[-4000:]}"


@pytest.mark.slow
def test_teacher_and_distillation_train_and_the_student_predicts(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for acquisition_name, subject in (("AXT1", "900_0001"), ("AXT2", "900_0002")):
        kspace, _ = simulate_volume(phantom(), coils=4, matrix=(64, 64), seed=int(subject[-1]))
        write_fastmri_h5(data / fastmri_filename(acquisition_name, subject), kspace, acquisition_name)
    runs = tmp_path / "runs"
    roots = ["--training-root", str(data), "--validation-root", str(data), *CPU]

    def train(stage: str, **overrides) -> subprocess.Popen:
        config = six_iterations(CONFIGS / f"tiny_{stage}.yaml", tmp_path / f"{stage}.yaml", **overrides)
        return start(["direct", "train", str(runs), "--cfg", str(config), "--name", stage, *roots], cwd=tmp_path)

    finish(train("aqvae"))
    tokenizer = {"model.tokenizer_checkpoint": str(runs / "aqvae" / "model_5.pt")}
    base, teacher = train("nextaccel", **tokenizer), train("teacher", **tokenizer)
    finish(base)
    finish(teacher)
    finish(
        train(
            "distill",
            **tokenizer,
            **{
                "model.teacher_checkpoint": str(runs / "teacher" / "model_5.pt"),
                "training.model_checkpoint": str(runs / "nextaccel" / "model_5.pt"),
            },
        )
    )
    logged = set().union(*(json.loads(line) for line in (runs / "distill" / "metrics.json").read_text().splitlines()))
    assert {"reverse_kl", *(f"reverse_kl_R{r}" for r in (32, 16, 8, 4, 2))} <= logged
    assert any("fastmri_psnr" in key for key in logged)
    distilled = torch.load(runs / "distill" / "model_5.pt", weights_only=False)
    assert "teacher" not in distilled and not any(key.startswith("source_embed") for key in distilled["model"])
    assert len(distilled["optimizer"]["param_groups"]) == 2  # the student's and the sensitivity model's

    predict = six_iterations(CONFIGS / "tiny_nextaccel.yaml", tmp_path / "predict.yaml", **tokenizer)
    command = ["direct", "predict", str(tmp_path / "out"), "--cfg", str(predict), "--checkpoint"]
    finish(start([*command, str(runs / "distill" / "model_5.pt"), "--data-root", str(data), *CPU], cwd=tmp_path))
    for source in data.glob("*.h5"):
        with h5py.File(tmp_path / "out" / source.name, "r") as written:
            reconstruction = written["reconstruction"][()]
        assert reconstruction.shape == (2, 64, 64) and np.isfinite(reconstruction).all()

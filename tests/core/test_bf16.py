"""Every plugin engine trains in bfloat16 under ``--mixed-precision`` on the CPU, through the same autocast path a GPU
takes (issue 14: one mixed-precision policy, no GradScaler)."""

from __future__ import annotations

import pytest
import torch
from direct.data.transforms import fft2, ifft2
from direct.utils.events import EventStorage
from helpers import FILENAME, build_model, direct_batch, merged_config
from omegaconf import OmegaConf

from direct_nextaccel.masks.superresolution import superresolution_mask
from direct_nextaccel.miar.config import MIARConfig, MSVQVAEConfig
from direct_nextaccel.miar.miar import MIAR
from direct_nextaccel.miar.msvqvae import MSVQVAE
from direct_nextaccel.miar.msvqvae_engine import MSVQVAEEngine
from direct_nextaccel.miar.transformer_engine import MIAREngine
from direct_nextaccel.nextaccel import acquisition
from direct_nextaccel.nextaccel.aqvae import AQVAE
from direct_nextaccel.nextaccel.aqvae_engine import AQVAEEngine
from direct_nextaccel.nextaccel.config import AQVAEConfig, NextAccelConfig
from direct_nextaccel.nextaccel.distillation_engine import DistillationEngine, TeacherEngine
from direct_nextaccel.nextaccel.nextaccel import NextAccel
from direct_nextaccel.nextaccel.transformer_engine import NextAccelEngine

R32 = acquisition.level_masks([FILENAME] * 2, ["cartesian_y"] * 2, (64, 64), 1 / 64)[:, 0]
SR4 = torch.from_numpy(superresolution_mask((64, 64), 4))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A random tiny AQ-VAE and a privileged teacher on its codebook, and a random tiny MSVQ-VAE for MIAR, saved as
    bare DIRECT checkpoints."""
    root = tmp_path_factory.mktemp("bf16")
    torch.manual_seed(0)
    tokenizer = build_model(AQVAE, merged_config("tiny_aqvae.yaml", AQVAEConfig).model)
    teacher = build_model(NextAccel, merged_config("tiny_teacher.yaml", NextAccelConfig).model)
    teacher.init_context_encoder_from(tokenizer.encoder.state_dict())
    teacher.set_codebook(tokenizer.quantizer.codebook)
    paths = {"tokenizer": root / "tokenizer.pt", "teacher": root / "teacher.pt"}
    torch.save({"model": tokenizer.state_dict()}, paths["tokenizer"])
    torch.save({"model": teacher.state_dict()}, paths["teacher"])
    paths["msvqvae"] = root / "msvqvae.pt"
    msvqvae = build_model(MSVQVAE, merged_config("tiny_msvqvae.yaml", MSVQVAEConfig).model)
    torch.save({"model": msvqvae.state_dict()}, paths["msvqvae"])
    return paths


def transformer_engine(name: str, engine_class, checkpoints):
    config = merged_config(name, NextAccelConfig, tokenizer_checkpoint=str(checkpoints["tokenizer"]))
    models = {}
    if "teacher" in config.get("additional_models", {}):
        config.model.teacher_checkpoint = str(checkpoints["teacher"])
        teacher = OmegaConf.merge(OmegaConf.structured(NextAccelConfig), config.additional_models.teacher)
        config.additional_models = {"teacher": teacher}
        models["teacher"] = build_model(NextAccel, teacher)
    else:
        config.additional_models = {}  # a random tokenizer has no sensitivity model
    engine = engine_class(config, build_model(NextAccel, config.model), "cpu", fft2, ifft2, True, **models)
    engine.ndim = 2
    engine.initialise_from_tokenizer()
    return engine


def tokenizer_engine(name, config_class, model_class, engine_class):
    config = merged_config(name, config_class)
    return engine_class(config, build_model(model_class, config.model), "cpu", fft2, ifft2, True)


def miar_engine(checkpoints):
    config = merged_config("tiny_miar.yaml", MIARConfig, tokenizer_checkpoint=str(checkpoints["msvqvae"]))
    engine = MIAREngine(config, build_model(MIAR, config.model), "cpu", fft2, ifft2, True)  # loads the tokenizer
    engine.initialise_from_tokenizer()
    return engine


ENGINES = {
    "aqvae": (lambda _: tokenizer_engine("tiny_aqvae.yaml", AQVAEConfig, AQVAE, AQVAEEngine), R32),
    "msvqvae": (lambda _: tokenizer_engine("tiny_msvqvae.yaml", MSVQVAEConfig, MSVQVAE, MSVQVAEEngine), SR4),
    "miar": (miar_engine, SR4),
    "nextaccel": (lambda c: transformer_engine("tiny_nextaccel.yaml", NextAccelEngine, c), R32),
    "teacher": (lambda c: transformer_engine("tiny_teacher.yaml", TeacherEngine, c), R32),
    "distillation": (lambda c: transformer_engine("tiny_distill.yaml", DistillationEngine, c), R32),
}


@pytest.mark.parametrize("name", list(ENGINES))
def test_engine_trains_in_bf16_on_the_cpu(name, checkpoints):
    torch.manual_seed(3)
    build, mask = ENGINES[name]
    engine = build(checkpoints)
    assert engine.mixed_precision and not engine._scaler.is_enabled()  # bfloat16: no loss scaling
    linear_dtypes = []
    for module in engine.model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Conv2d) and any(p.requires_grad for p in module.parameters()):
            module.register_forward_hook(lambda _m, _i, out: linear_dtypes.append(out.dtype))
    trainable = [p for p in engine.model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    engine.model.train()
    losses = engine.build_loss()
    with EventStorage(0):
        for _ in range(2):
            output = engine._do_iteration(direct_batch(mask), losses)
            optimizer.step()
            optimizer.zero_grad()
    assert torch.bfloat16 in linear_dtypes  # the autocast region ran in bfloat16 on the CPU
    assert output.data_dict and all(torch.isfinite(value) for value in output.data_dict.values())
    assert all(value.dtype == torch.float32 for value in output.data_dict.values())  # losses in float32
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, trainable, strict=True))
    assert all(torch.isfinite(p).all() for p in trainable)

"""Every plugin engine trains in bfloat16 under ``--mixed-precision`` on the CPU, through the same autocast path a GPU
takes (issue 14: one mixed-precision policy, no GradScaler)."""

from __future__ import annotations

import pytest
import torch
from direct.utils.events import EventStorage
from helpers import FILENAME, direct_batch

from direct_nextaccel.benchmark.speed.training import build_engines
from direct_nextaccel.masks.superresolution import superresolution_mask
from direct_nextaccel.nextaccel import acquisition

R32 = acquisition.level_masks([FILENAME] * 2, ["cartesian_y"] * 2, (64, 64), 1 / 64)[:, 0]
SR4 = torch.from_numpy(superresolution_mask((64, 64), 4))


MASKS = {"aqvae": R32, "msvqvae": SR4, "miar": SR4, "nextaccel": R32, "teacher": R32, "distillation": R32}


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    """Builders of every plugin engine under ``--mixed-precision``, on a random tiny AQ-VAE, a privileged teacher on
    its codebook and a random tiny MSVQ-VAE, saved as bare DIRECT checkpoints (the speed measurement's builders)."""
    return build_engines(tmp_path_factory.mktemp("bf16"), mixed_precision=True)


@pytest.mark.parametrize("name", list(MASKS))
def test_engine_trains_in_bf16_on_the_cpu(name, engines):
    torch.manual_seed(3)
    engine, mask = engines[name](), MASKS[name]
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

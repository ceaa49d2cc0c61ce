"""Helpers shared by the test modules (importable because pytest puts ``tests/`` on ``sys.path`` for its conftest).

One phantom, one way to merge a config as DIRECT merges it and build its model, and one DIRECT-style batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from direct_nextaccel.core import images

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "direct_nextaccel" / "configs"
FILENAME = "file_brain_AXT1_900_0001.h5"


def phantom(slices: int = 2, size: int = 64, stripes: float = 0.0) -> np.ndarray:
    """Magnitude slices (slices, size, size): a head ellipse (1.0) with an inner ellipse (+0.5) that moves from
    slice to slice, and optionally fine stripes of relative amplitude ``stripes`` across the head (detail that a
    low-resolution image loses)."""
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    volume = np.zeros((slices, size, size), dtype=np.float32)
    for index in range(slices):
        head = (xx / 0.7) ** 2 + (yy / 0.8) ** 2 < 1
        inner = ((xx - 0.2 * index) / 0.2) ** 2 + (yy / 0.3) ** 2 < 1
        volume[index] = head * (1.0 + stripes * np.sin(12 * np.pi * xx)) + 0.5 * inner
    return volume


def merged_config(name: str, config_class, **model_overrides):
    """A tiny config of ``direct_nextaccel/configs`` with its model keys merged into ``config_class`` as DIRECT does."""
    config = OmegaConf.load(CONFIGS / name)
    config.model = OmegaConf.merge(OmegaConf.structured(config_class), config.model, model_overrides)
    return config


def build_model(model_class, model_config):
    """``model_class`` from the keys of ``model_config`` its constructor accepts (DIRECT's rule), lists as tuples."""
    code = model_class.__init__.__code__
    names = code.co_varnames[1 : code.co_argcount]
    keys = {k: model_config[k] for k in names if k in model_config}
    return model_class(**{k: tuple(v) if OmegaConf.is_list(v) else v for k, v in keys.items()})


def direct_batch(mask: torch.Tensor, coils: int = 4, size: int = 64, seed: int = 1) -> dict:
    """Two slices of one file as DIRECT batches them: full and masked k-space, RSS-estimated maps and RSS target.

    Parameters
    ----------
    mask : torch.Tensor
        Boolean sampling mask, (H, W) or (2, H, W).
    """
    from direct_nextaccel.data.simulate import simulate_volume

    kspace = torch.view_as_real(
        torch.from_numpy(simulate_volume(phantom(size=size), coils=coils, matrix=(size, size), seed=seed)[0])
    ).float()  # S, C, H, W, 2
    return images.direct_batch(kspace, mask.expand(2, size, size), [FILENAME] * 2)

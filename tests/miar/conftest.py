"""Shared fixtures of the MIAR tests: tiny super-resolution batches as DIRECT hands them to an engine, and the tiny
MSVQ-VAE checkpoint a MIAR engine loads its frozen tokenizer from (``model.tokenizer_checkpoint``)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from direct.data.transforms import ifft2
from omegaconf import OmegaConf

from direct_nextaccel.data.simulate import simulate_volume
from direct_nextaccel.masks.superresolution import superresolution_mask
from direct_nextaccel.miar.config import MSVQVAEConfig
from direct_nextaccel.miar.msvqvae import MSVQVAE

REPO = Path(__file__).resolve().parents[2]


def phantom(slices: int = 2, size: int = 64) -> np.ndarray:
    """Magnitude slices (slices, size, size): an ellipse with a moving inner ellipse and some fine stripes."""
    yy, xx = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    volume = np.zeros((slices, size, size), dtype=np.float32)
    for index in range(slices):
        head = (xx / 0.7) ** 2 + (yy / 0.8) ** 2 < 1
        inner = ((xx - 0.2 * index) / 0.2) ** 2 + (yy / 0.3) ** 2 < 1
        volume[index] = head * (1.0 + 0.2 * np.sin(12 * np.pi * xx)) + 0.5 * inner
    return volume


def sr_batch(coils: int = 4, factor: int = 4, size: int = 64, nan: bool = False) -> dict:
    """A batch of two slices with the SuperResolution mask applied, RSS-estimated sensitivities and RSS target."""
    kspace_np, _ = simulate_volume(phantom(size=size), coils=coils, matrix=(size, size), seed=3)
    kspace = torch.view_as_real(torch.from_numpy(kspace_np))  # slices, coils, H, W, 2
    if nan:
        kspace[0, 0, 5, 5, 0] = float("nan")
    mask = torch.from_numpy(superresolution_mask((size, size), factor))[None, None, :, :, None]  # 1, 1, H, W, 1
    masked = kspace * mask
    coil_images = ifft2(kspace, dim=(2, 3))
    low_res_coils = ifft2(masked, dim=(2, 3))
    low_res_rss = low_res_coils.pow(2).sum(dim=(1, 4)).sqrt()
    return {
        "kspace": kspace,
        "masked_kspace": masked,
        "sampling_mask": mask.expand(2, -1, -1, -1, -1),
        "sensitivity_map": low_res_coils / low_res_rss[:, None, :, :, None].clamp_min(1e-6),
        "target": coil_images.pow(2).sum(dim=(1, 4)).sqrt(),
        "filename": ["file_brain_AXT2_001_0001.h5"] * 2,
        "slice_no": torch.tensor([0, 1]),
    }


def tokenizer_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny MSVQ-VAE of ``direct_nextaccel/configs/tiny_msvqvae.yaml`` with the random weights of ``seed``."""
    yaml = OmegaConf.load(REPO / "direct_nextaccel" / "configs" / "tiny_msvqvae.yaml").model
    config = OmegaConf.merge(OmegaConf.structured(MSVQVAEConfig), yaml)
    keys = {k: config[k] for k in MSVQVAE.__init__.__code__.co_varnames[1:] if k in config}
    torch.manual_seed(seed)
    return MSVQVAE(**{k: tuple(v) if OmegaConf.is_list(v) else v for k, v in keys.items()}).state_dict()


def save_tokenizer(path: Path, seed: int = 0) -> Path:
    """:func:`tokenizer_state` saved at ``path`` as a bare DIRECT checkpoint (``{"model": state_dict}``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": tokenizer_state(seed)}, path)
    return path


def build_engine(config_name: str, config_class, model_class, engine_class, **model_overrides):
    """A tiny config merged as DIRECT merges it, its model built from the constructor's keys, and the engine."""
    from direct.data.transforms import fft2

    config = OmegaConf.load(REPO / "direct_nextaccel" / "configs" / config_name)
    config.model = OmegaConf.merge(OmegaConf.structured(config_class), config.model, model_overrides)
    names = model_class.__init__.__code__.co_varnames
    keys = {k: v for k, v in config.model.items() if k in names}
    model = model_class(**{k: tuple(v) if OmegaConf.is_list(v) else v for k, v in keys.items()})
    return engine_class(config, model, "cpu", fft2, ifft2)


@pytest.fixture
def make_batch():
    """:func:`sr_batch` (fixtures instead of imports: the test folders are not packages)."""
    return sr_batch


@pytest.fixture
def make_engine():
    """:func:`build_engine`."""
    return build_engine


@pytest.fixture
def make_tokenizer_state():
    """:func:`tokenizer_state`."""
    return tokenizer_state


@pytest.fixture
def make_tokenizer_checkpoint():
    """:func:`save_tokenizer`."""
    return save_tokenizer


@pytest.fixture(scope="module")
def tokenizer_checkpoint(tmp_path_factory) -> Path:
    """The tiny MSVQ-VAE of seed 0 as ``model_0.pt`` (no ``config.yaml``), for ``model.tokenizer_checkpoint``."""
    return save_tokenizer(tmp_path_factory.mktemp("msvqvae") / "model_0.pt")

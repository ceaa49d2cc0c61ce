"""Every MIAR and super-resolution config builds as `direct train` builds it, and its data path is the SR task.

Tiny configs go through DIRECT's own environment (structured merge that rejects unknown keys, models, engine, losses)
and push one slice of a tiny fastMRI-layout volume through each dataset's transforms; paper-size configs merge into
their config dataclasses and build on the meta device.
"""

import dataclasses
import pathlib

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from direct_nextaccel.data.fastmri_h5 import centered_fft2, write_fastmri_h5
from direct_nextaccel.masks.superresolution import superresolution_mask
from direct_nextaccel.miar.config import MIARConfig, MSVQVAEConfig
from direct_nextaccel.miar.miar import MIAR
from direct_nextaccel.miar.msvqvae import MSVQVAE

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = [
    f"direct_nextaccel/configs/tiny_{name}.yaml"
    for name in ("msvqvae", "miar", "miar_t1t2", "sr_varnet", "sr_recurrentvarnet", "sr_unet")
] + [f"projects/miar_brain/configs/small/{name}_sr4.yaml" for name in ("e2evarnet", "recurrentvarnet", "unet")]
SMALL_MSVQVAE = 1_030_226  # projects/miar_brain/configs/small/msvqvae.yaml: stride 4, 32 base channels, 1024 x 16 codes
PROJECT = sorted(str(p.relative_to(REPO)) for p in (REPO / "projects" / "miar_brain" / "configs").rglob("*.yaml"))
ENGINES = {
    "miar.msvqvae.MSVQVAE": "MSVQVAEEngine",
    "miar.miar.MIAR": "MIAREngine",
    "varnet.varnet.EndToEndVarNet": "EndToEndVarNetEngine",
    "recurrentvarnet.recurrentvarnet.RecurrentVarNet": "RecurrentVarNetEngine",
    "unet.unet_2d.Unet2d": "Unet2dEngine",
}


@pytest.fixture(scope="module")
def fastmri_root(tmp_path_factory) -> pathlib.Path:
    """One subject's T2 and T1 volumes (the T1 guides T2 in the multi-contrast config): one slice of a 2-coil
    ellipse in the fastMRI layout."""
    y, x = np.mgrid[-1:1:64j, -1:1:64j]
    image = (x**2 / 0.6 + y**2 / 0.8 < 1) * (1.0 + 0.1 * np.sin(20 * x))
    coils = np.stack([np.exp(-((x - np.cos(a)) ** 2 + (y - np.sin(a)) ** 2)) for a in range(2)])
    root = tmp_path_factory.mktemp("fastmri")
    write_fastmri_h5(root / "file_brain_AXT2_000.h5", centered_fft2((image * coils)[None]), "AXT2")
    write_fastmri_h5(root / "file_brain_AXT1_000.h5", centered_fft2((image[::-1] * coils)[None]), "AXT1")
    return root


@pytest.fixture()
def direct_env(request, tmp_path, monkeypatch, make_tokenizer_checkpoint):
    """DIRECT's environment of a config, run from ``tmp_path`` where a MIAR config's relative
    ``model.tokenizer_checkpoint`` finds a tiny MSVQ-VAE: the MIAR engine loads it when it is built."""
    import direct.environment

    monkeypatch.setattr(direct.environment, "setup_logging", lambda *args, **kwargs: None)
    monkeypatch.chdir(tmp_path)
    tokenizer = OmegaConf.load(REPO / request.param).model.get("tokenizer_checkpoint")
    if tokenizer:
        make_tokenizer_checkpoint(tmp_path / tokenizer)
    return direct.environment.setup_common_environment("run", tmp_path, str(REPO / request.param), "cpu", 0, False)


def test_project_has_miar_tokenizer_and_baselines():
    names = {pathlib.Path(p).name for p in PROJECT}
    assert {
        "msvqvae.yaml",
        "miar.yaml",
        "miar_t1t2.yaml",
        "varnet_sr4.yaml",
        "recurrentvarnet_sr4.yaml",
        "unet_sr4.yaml",
    } <= names


@pytest.mark.parametrize("direct_env", TINY, indirect=True, ids=TINY)
def test_tiny_config_builds_as_direct_train_does(direct_env, fastmri_root):
    from direct.data.datasets import build_dataset_from_input
    from direct.train import build_transforms_from_environment

    cfg, engine = direct_env.cfg, direct_env.engine
    assert type(engine).__name__ == ENGINES[cfg.model.model_name]
    assert list(engine.build_loss()) == [loss.function for loss in cfg.training.loss.losses]
    datasets = [*cfg.training.datasets, *cfg.validation.datasets, cfg.inference.dataset]
    for dataset_cfg in datasets:
        transforms = build_transforms_from_environment(direct_env, dataset_cfg)
        sample = build_dataset_from_input(transforms, dataset_cfg, data_root=fastmri_root)[0]
        mask = sample["sampling_mask"][0, :, :, 0].numpy()
        assert np.array_equal(mask, superresolution_mask((64, 64), 4))
        assert sample["acceleration"].item() == 16
        if dataset_cfg.name == "FastMRIReference":
            assert pathlib.Path(sample["filename"]).name == "file_brain_AXT2_000.h5"
            assert sample["reference_image"].shape == (64, 64) and cfg.model.reference_contrast


@pytest.mark.parametrize("path", [p for p in TINY + PROJECT if "miar" in OmegaConf.load(REPO / p).model.model_name])
def test_miar_configs_build_their_model(path):
    """Tiny and paper configs merge into their dataclass as DIRECT merges them and build (on meta)."""
    config = OmegaConf.load(REPO / path).model
    config_class, model_class = (MIARConfig, MIAR) if config.model_name.endswith("MIAR") else (MSVQVAEConfig, MSVQVAE)
    merged = OmegaConf.merge(OmegaConf.structured(config_class), config)
    keys = {k: merged[k] for k in model_class.__init__.__code__.co_varnames[1:] if k in merged}
    with torch.device("meta"):
        model = model_class(**{k: tuple(v) if OmegaConf.is_list(v) else v for k, v in keys.items()})
    if "projects" in path:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        expected = {
            "msvqvae.yaml": 97_752_642,
            "miar.yaml": 114_377_312,
            "miar_t1t2.yaml": 114_378_752,  # T1 -> T2: 160 x 3 x 3 weights of the T1 channel
            "small/msvqvae.yaml": SMALL_MSVQVAE,
            "small/msvqvae_stride2.yaml": 733_906,  # stride 2: one level less of encoder and decoder
            "small/miar.yaml": 1_337_888,  # 2 blocks of width 128 and its LR encoder, on the stride-2 tokenizer
        }
        assert trainable == expected[str(pathlib.Path(path).relative_to("projects/miar_brain/configs"))]


def test_miar_configs_repeat_their_tokenizer_shape():
    miar_fields = {field.name for field in dataclasses.fields(MIARConfig)}  # ClassVars (ENGINE_KEYS) excluded
    shape_keys = [field.name for field in dataclasses.fields(MSVQVAEConfig) if field.name in miar_fields]
    shape_keys = [k for k in shape_keys if k not in ("model_name", "engine_name", "lr_schedule", "min_lr")]
    for tokenizer, miar in (
        ("direct_nextaccel/configs/tiny_msvqvae.yaml", "direct_nextaccel/configs/tiny_miar.yaml"),
        ("projects/miar_brain/configs/msvqvae.yaml", "projects/miar_brain/configs/miar.yaml"),
        ("direct_nextaccel/configs/tiny_msvqvae.yaml", "direct_nextaccel/configs/tiny_miar_t1t2.yaml"),
        ("projects/miar_brain/configs/msvqvae.yaml", "projects/miar_brain/configs/miar_t1t2.yaml"),
        ("projects/miar_brain/configs/small/msvqvae_stride2.yaml", "projects/miar_brain/configs/small/miar.yaml"),
    ):
        a = OmegaConf.merge(OmegaConf.structured(MSVQVAEConfig), OmegaConf.load(REPO / tokenizer).model)
        b = OmegaConf.merge(OmegaConf.structured(MIARConfig), OmegaConf.load(REPO / miar).model)
        assert {k: a[k] for k in shape_keys} == {k: b[k] for k in shape_keys}, (tokenizer, miar)

"""The E2EVarNet and RecurrentVarNet baseline configs load, merge and build exactly as ``direct train`` does.

Every YAML under ``direct_nextaccel/configs/`` and ``projects/*/configs/`` whose model is one of DIRECT's built-in
baselines goes through DIRECT's own :func:`direct.environment.setup_common_environment` (structured merge that rejects
unknown model keys, models built with ``filter_arguments_by_signature``, engine), then its losses, mask functions and
transforms are built and one slice of a tiny fastMRI-layout volume is pushed through each dataset's transforms.
"""

import pathlib

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from direct_nextaccel._hook import REGISTRY
from direct_nextaccel.data.fastmri_h5 import centered_fft2, write_fastmri_h5
from direct_nextaccel.masks.nested import FAMILIES, MASK_NAMES

REPO = pathlib.Path(__file__).resolve().parents[1]
BASELINES = {
    "varnet.varnet.EndToEndVarNet": "varnet",
    "recurrentvarnet.recurrentvarnet.RecurrentVarNet": "recurrentvarnet",
}
EXPECTED = [f"projects/fastmri_brain/configs/baselines/{m}_{f}.yaml" for m in BASELINES.values() for f in FAMILIES]
EXPECTED += [f"direct_nextaccel/configs/tiny_varnet_{f}.yaml" for f in FAMILIES]
EXPECTED += ["direct_nextaccel/configs/tiny_recurrentvarnet_cartesian_y.yaml"]
MATRIX, COILS = 64, 4


def _baseline_configs() -> list[str]:
    """Reconstruction baselines at R = 32 (the super-resolution baselines are tested in tests/miar)."""
    paths = sorted(REPO.glob("direct_nextaccel/configs/*.yaml")) + sorted(REPO.glob("projects/*/configs/**/*.yaml"))
    found = []
    for path in paths:
        config = OmegaConf.load(path)
        masking = config.training.datasets[0].transforms.masking.name if "training" in config else ""
        if config.get("model", {}).get("model_name") in BASELINES and masking.startswith("Nested"):
            found.append(str(path.relative_to(REPO)))
    return found


CONFIGS = _baseline_configs()


def _family(config: str) -> str:
    stem = pathlib.Path(config).stem
    return next(family for family in FAMILIES if stem.endswith(f"_{family}"))


@pytest.fixture(scope="module")
def fastmri_root(tmp_path_factory) -> pathlib.Path:
    """One volume of two slices of a 4-coil ellipse (with texture) in the fastMRI layout."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[-1 : 1 : MATRIX * 1j, -1 : 1 : MATRIX * 1j]
    image = (x**2 / 0.6 + y**2 / 0.8 < 1) * (1.0 + 0.1 * rng.standard_normal((2, MATRIX, MATRIX)))  # slices, H, W
    coils = np.stack([np.exp(-((x - np.cos(a)) ** 2 + (y - np.sin(a)) ** 2)) for a in range(COILS)])  # C, H, W
    kspace = centered_fft2(image[:, None] * coils[None])  # slices, C, H, W
    root = tmp_path_factory.mktemp("fastmri")
    write_fastmri_h5(root / "file_brain_AXT1_000.h5", kspace, "AXT1")
    return root


@pytest.fixture()
def direct_env(request, tmp_path, monkeypatch):
    """DIRECT's environment for one config, without DIRECT reconfiguring the root logger for the whole session."""
    import direct.environment

    monkeypatch.setattr(direct.environment, "setup_logging", lambda *args, **kwargs: None)
    # One thread, as `direct train` sets: the orthogonal initialisation of RecurrentVarNet's GRUs (QR decompositions)
    # is about ten times slower with several threads on a busy 2-core machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield direct.environment.setup_common_environment("run", tmp_path, str(REPO / request.param), "cpu", 0, False)
    finally:
        torch.set_num_threads(threads)


def test_every_baseline_and_family_has_a_config():
    assert not sorted(set(EXPECTED) - set(CONFIGS))


@pytest.mark.parametrize("direct_env", CONFIGS, indirect=True, ids=CONFIGS)
def test_config_builds_as_direct_train_does(direct_env, fastmri_root, request):
    from direct.data.datasets import build_dataset_from_input
    from direct.train import build_transforms_from_environment

    config = request.node.callspec.params["direct_env"]
    cfg, engine = direct_env.cfg, direct_env.engine
    assert type(engine.model).__name__ == cfg.model.model_name.rsplit(".", 1)[1]
    stem = pathlib.Path(config).stem.removeprefix("tiny_").removeprefix("e2e")  # small/e2evarnet_<family>.yaml
    assert stem.startswith(BASELINES[cfg.model.model_name] + "_")
    assert type(engine.models["sensitivity_model"]).__name__ == "UnetModel2d"
    assert list(engine.build_loss()) == [loss.function for loss in cfg.training.loss.losses]
    assert cfg.validation.crop == "header" and cfg.training.loss.crop == "header"

    datasets = [(ds, False) for ds in cfg.training.datasets] + [(ds, True) for ds in cfg.validation.datasets]
    datasets.append((cfg.inference.dataset, True))
    for dataset_cfg, seeded in datasets:
        masking = dataset_cfg.transforms.masking
        assert masking.name == MASK_NAMES[_family(config)]
        assert masking.name in REGISTRY.load().masks
        assert list(masking.accelerations) == [32]
        assert list(masking.center_fractions) == [0.015625]
        assert dataset_cfg.transforms.use_seed is seeded

        transforms = build_transforms_from_environment(direct_env, dataset_cfg)
        sample = build_dataset_from_input(transforms, dataset_cfg, data_root=fastmri_root)[0]
        assert sample["masked_kspace"].shape == (COILS, MATRIX, MATRIX, 2)
        assert sample["sensitivity_map"].shape == (COILS, MATRIX, MATRIX, 2)
        assert sample["sampling_mask"].shape == (1, MATRIX, MATRIX, 1)
        assert 1 / 64 < sample["sampling_mask"].float().mean() < 1 / 16
        assert "kspace" not in sample

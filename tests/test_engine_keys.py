"""DIRECT's "Dropping unknown constructor arguments ... may be misspelled" warning fires only for keys nobody reads.

The plugin's config dataclasses declare the keys their engines read (``ENGINE_KEYS``); the import hook keeps those,
and the keys DIRECT reads or adds itself, out of DIRECT's check, which still names a key that nothing reads.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from dataclasses import dataclass

import pytest
from direct.config.defaults import DefaultConfig, ModelConfig
from omegaconf import OmegaConf

import direct_nextaccel
from direct_nextaccel._hook import DIRECT_MODEL_KEYS, engine_keys
from direct_nextaccel.miar.config import MIARConfig, MSVQVAEConfig
from direct_nextaccel.miar.miar import MIAR
from direct_nextaccel.miar.msvqvae import MSVQVAE
from direct_nextaccel.nextaccel.aqvae import AQVAE
from direct_nextaccel.nextaccel.config import AQVAEConfig, NextAccelConfig
from direct_nextaccel.nextaccel.nextaccel import NextAccel
from direct_nextaccel.resources import config_path

WARNING = "Dropping unknown constructor arguments"
PAIRS = [(AQVAEConfig, AQVAE), (NextAccelConfig, NextAccel), (MSVQVAEConfig, MSVQVAE), (MIARConfig, MIAR)]
PLUGIN_CONFIGS = [
    "tiny_aqvae.yaml",
    "tiny_nextaccel.yaml",
    "tiny_teacher.yaml",
    "tiny_distill.yaml",
    "tiny_msvqvae.yaml",
    "tiny_miar.yaml",
    "tiny_miar_t1t2.yaml",
    "tiny_varnet_cartesian_y.yaml",
]


@pytest.fixture(autouse=True)
def _hook_installed():
    direct_nextaccel.register()


def build_models(source) -> None:
    """DIRECT's own steps from a YAML to built models (``direct.environment.setup_common_environment``)."""
    import direct.environment as environment

    cfg = OmegaConf.structured(DefaultConfig)
    models, models_config = environment.load_models_into_environment_config(source)
    cfg.model = models_config.model
    del models_config["model"]
    cfg.additional_models = models_config
    environment.initialize_models_from_config(cfg, models, lambda x: x, lambda x: x, "cpu")


def dropped_warnings(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if WARNING in record.getMessage()]


@pytest.mark.parametrize("config_class, model_class", PAIRS, ids=lambda value: value.__name__)
def test_every_config_key_is_read(config_class, model_class):
    """Each field goes to the constructor, to the engine (declared) or to DIRECT; declarations name real fields."""
    constructor = set(inspect.getfullargspec(model_class).args)
    fields = {field.name for field in dataclasses.fields(config_class)}
    declared = engine_keys(config_class)
    assert fields - constructor - declared - DIRECT_MODEL_KEYS == set(), "fields nothing reads: declare them"
    assert declared - fields == set(), "ENGINE_KEYS that are no field"
    assert declared & constructor == set(), "ENGINE_KEYS the constructor takes"


@pytest.mark.parametrize("name", PLUGIN_CONFIGS)
def test_shipped_configs_build_without_the_warning(name, caplog):
    caplog.set_level(logging.WARNING)
    build_models(OmegaConf.load(config_path(name)))
    assert dropped_warnings(caplog) == []


@dataclass
class _StaleNextAccelConfig(NextAccelConfig):
    tokenizer_chekpoint: str | None = None  # a field no engine reads and the model does not take


@dataclass
class _StaleUnetConfig(ModelConfig):
    in_channels: int = 2
    out_channels: int = 2
    num_filters: int = 4
    num_pool_layers: int = 2
    dropout_probability: float = 0.0
    num_filter: int = 4  # DIRECT's U-Net takes num_filters


def test_a_key_nobody_reads_still_warns(caplog, monkeypatch):
    """A config field that neither the model nor the engine reads is named, and only it, for plugin and DIRECT
    models alike (the U-Net gets DIRECT's operators, which are never named)."""
    import direct.nn.nextaccel.config as nextaccel_config
    import direct.nn.nextaccel.nextaccel as nextaccel_module
    import direct.nn.unet.config as unet_config
    import direct.nn.unet.unet_2d as unet_2d

    monkeypatch.setattr(nextaccel_config, "_StaleNextAccelConfig", _StaleNextAccelConfig, raising=False)
    monkeypatch.setattr(unet_config, "_StaleUnetConfig", _StaleUnetConfig, raising=False)
    source = OmegaConf.load(config_path("tiny_nextaccel.yaml"))
    source.model.model_name = "nextaccel.nextaccel._StaleNextAccel"
    source.model.tokenizer_chekpoint = "runs/tiny_aqvae/model_59.pt"
    source.additional_models.sensitivity_model.model_name = "unet.unet_2d._StaleUnet"
    monkeypatch.setattr(nextaccel_module, "_StaleNextAccel", NextAccel, raising=False)
    monkeypatch.setattr(unet_2d, "_StaleUnet", unet_2d.UnetModel2d, raising=False)
    caplog.set_level(logging.WARNING)
    build_models(source)
    warnings = dropped_warnings(caplog)
    assert sorted(warnings) == [
        f"{WARNING} for NextAccel: tokenizer_chekpoint. If these were intentional config keys, the target class may "
        "be outdated or the keys may be misspelled.",
        f"{WARNING} for UnetModel2d: num_filter. If these were intentional config keys, the target class may be "
        "outdated or the keys may be misspelled.",
    ]


def test_a_misspelled_yaml_key_is_refused_by_the_merge():
    """A YAML key the config does not have never reaches the constructor: DIRECT's merge refuses it by name."""
    from omegaconf.errors import ConfigKeyError

    source = OmegaConf.load(config_path("tiny_nextaccel.yaml"))
    source.model.tokenizer_chekpoint = "runs/tiny_aqvae/model_59.pt"
    with pytest.raises(ConfigKeyError, match="tokenizer_chekpoint"):
        build_models(source)


def test_direct_environment_is_patched_at_interpreter_start():
    """Plain ``direct train`` imports ``direct.environment`` with nothing else imported: the .pth hook patches it."""
    import subprocess
    import sys

    code = "import direct.environment as e; print(e.filter_arguments_by_signature._direct_nextaccel)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.stdout.strip() == "True", result.stderr

"""Typed model configs: a bad choice in a YAML is refused when DIRECT merges it (naming the key and the allowed
values), ranges when the engine validates the merged config, and every shipped YAML still merges and validates.

What was verified about DIRECT 2.2 / OmegaConf 2.4 (the reason the checks sit where they do): DIRECT merges the
``model:`` block with ``OmegaConf.merge(<Model>Config, yaml)``; OmegaConf checks Enum fields there but never
instantiates the dataclass, so ``__post_init__`` (the range checks) only runs through
:func:`~direct_nextaccel.modules.options.validate_model_config`, which every plugin engine calls first.
"""

import dataclasses
import io
import json
import pathlib

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from direct_nextaccel.miar.config import MIARConfig, MSVQVAEConfig, MSVQVAEShape
from direct_nextaccel.modules.decoding import DECODING_MODES, SAMPLING_MODES, check_decoding
from direct_nextaccel.modules.options import (
    Decoding,
    DecodingOptions,
    LRSchedule,
    SamplingMode,
    validate_model_config,
)
from direct_nextaccel.nextaccel.config import (
    AQVAEConfig,
    AQVAEShape,
    DiscriminatorBackbone,
    MaskFamily,
    NextAccelConfig,
    PrefixNoise,
)

REPO = pathlib.Path(__file__).resolve().parents[1]
YAMLS = sorted(REPO.glob("direct_nextaccel/configs/*.yaml")) + sorted(REPO.glob("projects/*/configs/**/*.yaml"))
PLUGIN_CONFIGS = {
    "nextaccel.aqvae.AQVAE": AQVAEConfig,
    "nextaccel.nextaccel.NextAccel": NextAccelConfig,
    "miar.msvqvae.MSVQVAE": MSVQVAEConfig,
    "miar.miar.MIAR": MIARConfig,
}
NAMES = {config: name for name, config in PLUGIN_CONFIGS.items()}


def merged(config_class, **values):
    """``values`` merged into the structured config exactly as DIRECT merges a YAML ``model:`` block."""
    yaml = OmegaConf.create({"model_name": NAMES[config_class], **values})
    return OmegaConf.merge(OmegaConf.structured(config_class), yaml)


@pytest.mark.parametrize(
    ("config_class", "key", "value", "allowed"),
    [
        (NextAccelConfig, "decoding", "greedy", "argmax, multinomial, top_k_top_p, beam"),
        (MIARConfig, "decoding", "greedy", "argmax, multinomial, top_k_top_p, beam"),
        (NextAccelConfig, "rollout", "beam", "argmax, multinomial, top_k_top_p"),
        (NextAccelConfig, "lr_schedule", "step", "linear, cosine, direct"),
        (MIARConfig, "lr_schedule", "step", "linear, cosine, direct"),
        (MSVQVAEConfig, "lr_schedule", "exponential", "linear, cosine, direct"),
        (AQVAEConfig, "lr_schedule", "step", "linear, cosine, direct"),
        (NextAccelConfig, "training_masks", "random", "file, fresh"),
        (NextAccelConfig, "prefix_noise", "gaussian", "uniform, self, mixed, base_rollout"),
        (NextAccelConfig, "mask_family", "spiral", "cartesian_x, cartesian_y, gaussian2d, radial"),
        (NextAccelConfig, "mask_family", "NestedRadial", "cartesian_x, cartesian_y, gaussian2d, radial"),
        (AQVAEConfig, "var_init", "imagenet", "var, none"),
        (AQVAEConfig, "discriminator_backbone", "dino", "biomedclip, vit_random, patch, none"),
    ],
)
def test_a_bad_choice_is_refused_by_the_merge_naming_key_and_allowed_values(config_class, key, value, allowed):
    with pytest.raises(ValidationError) as error:
        merged(config_class, **{key: value})
    message = str(error.value)
    assert f"Invalid value '{value}', expected one of [{allowed}]" in message
    assert f"full_key: {key}\n" in message


def test_a_bad_element_of_a_list_of_choices_names_its_index():
    with pytest.raises(ValidationError) as error:
        merged(AQVAEConfig, mask_families=["radial", "spiral"])
    assert "Invalid value 'spiral', expected one of [cartesian_x, cartesian_y, gaussian2d, radial]" in str(error.value)
    assert "full_key: mask_families[1]" in str(error.value)


def test_direct_itself_refuses_a_bad_choice_in_a_yaml(tmp_path):
    """Through DIRECT's own loader of the ``model:`` and ``additional_models:`` blocks, on a shipped config."""
    from direct.environment import load_models_into_environment_config

    good = OmegaConf.load(REPO / "direct_nextaccel" / "configs" / "tiny_distill.yaml")
    _, models = load_models_into_environment_config(good)
    assert models.model.decoding == "argmax" and models.teacher.privileged_context
    for block, key in (("model", "decoding"), ("additional_models.teacher", "decoding"), ("model", "rollout")):
        bad = OmegaConf.load(REPO / "direct_nextaccel" / "configs" / "tiny_distill.yaml")
        OmegaConf.update(bad, f"{block}.{key}", "greedy")
        with pytest.raises(ValidationError, match=rf"Invalid value 'greedy', expected one of \[argmax, .*\n.*{key}"):
            load_models_into_environment_config(bad)


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(REPO)) for p in YAMLS])
def test_every_shipped_yaml_merges_as_direct_merges_it_and_validates(path):
    from direct.environment import load_models_into_environment_config

    _, models = load_models_into_environment_config(OmegaConf.load(path))
    for key, node in models.items():
        config_class = PLUGIN_CONFIGS.get(node.model_name)
        if config_class is not None:
            assert isinstance(validate_model_config(node, config_class, key), config_class)


@pytest.mark.parametrize(
    ("config_class", "values", "message"),
    [
        (NextAccelConfig, {"top_p": 1.5}, r"^model\.top_p 1\.5 is not in \(0, 1\]$"),
        (NextAccelConfig, {"decoding": "beam", "beam_k": 4}, r"^model\.beam_k 4 is not one of \(1, 2, 3\)$"),
        (NextAccelConfig, {"temperature": 0.0}, r"^model\.temperature 0\.0 must be positive$"),
        (NextAccelConfig, {"top_k": -1}, r"^model\.top_k -1 must be a non-negative integer"),
        (NextAccelConfig, {"token_grids": [3, 4, 5]}, r"^model\.token_grids \[3, 4, 5\] must name 6 grids"),
        (NextAccelConfig, {"prefix_noise_fraction": 1.5}, r"^model\.prefix_noise_fraction 1\.5 is not in \[0, 1\]$"),
        (NextAccelConfig, {"mask_center_fraction": 0.0}, r"^model\.mask_center_fraction 0\.0 is not in \(0, 1\)$"),
        (NextAccelConfig, {"adam_betas": [0.9, 1.0]}, r"^model\.adam_betas 1\.0 is not in \[0, 1\)$"),
        (AQVAEConfig, {"output_levels": [0, 6]}, r"^model\.output_levels \[0, 6\] must be a non-empty list"),
        (AQVAEConfig, {"mask_families": []}, r"^model\.mask_families is empty"),
        (AQVAEConfig, {"ema_decay": 1.0}, r"^model\.ema_decay 1\.0 is not in \[0, 1\)$"),
        (MIARConfig, {"beam_alpha": -1.0}, r"^model\.beam_alpha -1\.0 must be non-negative$"),
        (MIARConfig, {"lr_blur_sigma": -1.0}, r"^model\.lr_blur_sigma -1\.0 must be >= 0$"),
        (MIARConfig, {"min_lr": -1.0}, r"^model\.min_lr -1\.0 must be >= 0$"),
        (MSVQVAEConfig, {"scale_dropout": 1.0}, r"^model\.scale_dropout 1\.0 is not in \[0, 1\)$"),
        (MSVQVAEConfig, {"scales": [0, 2]}, r"^model\.scales \[0, 2\] must be a non-empty list of positive integers$"),
    ],
)
def test_ranges_pass_the_merge_and_are_refused_by_validation(config_class, values, message):
    config = merged(config_class, **values)  # OmegaConf cannot express a range: the merge accepts it
    with pytest.raises(ValueError, match=message):
        validate_model_config(config, config_class)
    with pytest.raises(ValueError, match=message.replace(r"^model\.", "^")):
        config_class(**values)  # the same check, from __post_init__


def test_the_merge_never_runs_post_init(monkeypatch):
    """Why the engines validate: neither OmegaConf.structured nor OmegaConf.merge instantiates the dataclass."""
    calls = []
    original = NextAccelConfig.__post_init__
    monkeypatch.setattr(NextAccelConfig, "__post_init__", lambda self: (calls.append(1), original(self)))
    config = merged(NextAccelConfig, top_p=1.5)
    assert config.top_p == 1.5 and calls == []
    with pytest.raises(ValueError):
        validate_model_config(config, NextAccelConfig)
    assert calls == [1]


def test_choices_keep_behaving_like_strings():
    config = merged(NextAccelConfig, decoding="beam", mask_family="radial", lr_schedule="cosine")
    assert isinstance(config.decoding, Decoding) and isinstance(config.decoding, str)
    assert config.decoding == "beam" and config.decoding != "argmax" and config.decoding in DECODING_MODES
    assert {"radial": 1}[config.mask_family] == 1 and hash(config.mask_family) == hash("radial")
    assert f"{config.lr_schedule}" == str(config.lr_schedule) == "cosine" and repr(config.decoding) == "'beam'"
    assert type(str(config.decoding)) is str
    assert json.loads(json.dumps({"decoding": config.decoding})) == {"decoding": "beam"}
    # DIRECT writes config.yaml with OmegaConf.to_yaml: member names, which are the YAML spellings, read back
    saved = OmegaConf.create(OmegaConf.to_yaml(config))
    assert saved.decoding == "beam" and type(saved.decoding) is str
    assert OmegaConf.merge(OmegaConf.structured(NextAccelConfig), saved) == config


def test_a_schedule_built_from_a_choice_saves_a_checkpoint_weights_only_can_read():
    from direct_nextaccel.schedules import warmup_schedule

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = warmup_schedule(optimizer, merged(NextAccelConfig, lr_schedule="cosine").lr_schedule, 2, 10, 0.0)
    buffer = io.BytesIO()
    torch.save({"lr_scheduler": schedule.state_dict()}, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["lr_scheduler"]["kind"] == "cosine"


def test_the_enums_spell_the_vocabulary_the_code_uses():
    from direct_nextaccel.masks.nested import FAMILIES
    from direct_nextaccel.modules.discriminator import BACKBONES
    from direct_nextaccel.nextaccel.distillation_engine import PREFIX_NOISE
    from direct_nextaccel.nextaccel.nextaccel import GENERATION_MODES

    assert tuple(SamplingMode) == SAMPLING_MODES and tuple(Decoding) == DECODING_MODES == GENERATION_MODES
    assert tuple(MaskFamily) == FAMILIES
    assert tuple(DiscriminatorBackbone) == (*BACKBONES, "none")
    assert tuple(PrefixNoise) == PREFIX_NOISE
    assert {schedule.value for schedule in LRSchedule} == {"linear", "cosine", "direct"}


def test_one_decoding_mixin_and_one_check_for_both_methods():
    import direct_nextaccel.miar.miar as miar

    assert issubclass(NextAccelConfig, DecodingOptions) and issubclass(MIARConfig, DecodingOptions)
    assert miar.check_decoding is check_decoding  # MIAR.generate and both configs use the same function
    names = [field.name for field in dataclasses.fields(DecodingOptions)]
    assert names == ["decoding", "temperature", "top_k", "top_p", "beam_k", "beam_alpha"]
    # each method keeps its own defaults: NextAccel's paper argmax with top-k/top-p 900/0.96, MIAR's beam search
    assert (NextAccelConfig.decoding, NextAccelConfig.top_k, NextAccelConfig.top_p) == ("argmax", 900, 0.96)
    assert (MIARConfig.decoding, MIARConfig.top_k, MIARConfig.top_p) == ("beam", 0, 1.0)


def test_one_tokenizer_shape_per_method():
    from direct_nextaccel.nextaccel.tokenizer_loading import TOKENIZER_KEYS

    shape = [field.name for field in dataclasses.fields(AQVAEShape)]
    assert shape == list(TOKENIZER_KEYS)  # what the transformer engine checks against the tokenizer checkpoint
    assert issubclass(AQVAEConfig, AQVAEShape) and issubclass(NextAccelConfig, AQVAEShape)
    for key in shape:  # no class redefines a shape default
        assert getattr(AQVAEConfig(), key) == getattr(NextAccelConfig(), key) == getattr(AQVAEShape(), key)
    assert issubclass(MSVQVAEConfig, MSVQVAEShape) and issubclass(MIARConfig, MSVQVAEShape)
    for field in dataclasses.fields(MSVQVAEShape):
        assert getattr(MSVQVAEConfig(), field.name) == getattr(MIARConfig(), field.name)

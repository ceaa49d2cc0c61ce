"""Frozen networks of earlier NextAccel stages, loaded from their DIRECT checkpoints with clear compatibility errors.

The transformer engines depend on networks trained before them: the AQ-VAE tokenizer (and the sensitivity model it
was trained with), for distillation the privileged teacher, and for a teacher trained on a base model's rollouts
(``prefix_noise: base_rollout``) that base model. DIRECT saves each stage as ``model_N.pt`` holding
``{"model": state_dict, <additional model name>: state_dict, ...}`` and writes the run's ``config.yaml`` next to
it. Here a stage is loaded into a network built from the current configuration: every key and shape must match the
checkpoint, and where the ``config.yaml`` is present its architecture values are compared too (they catch what a
state dict cannot show, e.g. the tokenizer's Phi strength or a teacher trained on another mask family). The loaded
network is put in eval mode with ``requires_grad`` off.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from direct_nextaccel.core.checkpoints import (
    CheckpointError,
    check_run_config,
    checkpoint_file,
    load_exactly,
    plain_value,
    read_checkpoint,
    saved_model_value,
    without_module_prefix,
)
from direct_nextaccel.core.intensity import check_convention
from direct_nextaccel.nextaccel.aqvae import AQVAE

logger = logging.getLogger(__name__)

TOKENIZER_KEYS = (
    "in_channels",
    "base_channels",
    "channel_multipliers",
    "num_res_blocks",
    "latent_dim",
    "codebook_size",
    "token_grids",
    "num_families",
    "image_size",
)
"""AQ-VAE constructor arguments that the transformer's configuration shares (its context encoder copies the
tokenizer's encoder); the remaining one, ``quant_resi``, is the engine key ``tokenizer_quant_resi``."""


def load_checkpoint(path: str | os.PathLike | None, config_key: str) -> dict[str, Any]:
    """Read a DIRECT checkpoint ``model_N.pt`` (CPU tensors) named by the configuration key ``config_key``.

    Raises
    ------
    CheckpointError
        A ValueError in one line naming the file: unset, a run directory, truncated, not a DIRECT checkpoint
        (:func:`direct_nextaccel.core.checkpoints.read_checkpoint`); a FileNotFoundError as well when it does not exist.
    """
    return read_checkpoint(path, f"model.{config_key}")


def check_kind(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse a state dict that lacks most of ``module``'s weights: a checkpoint of another kind of model.

    Raises
    ------
    CheckpointError
        Naming the checkpoint, the network it should have been and one weight it lacks.
    """
    own = module.state_dict()
    missing = [key for key in own if key not in state_dict]
    if len(missing) * 2 > len(own):
        raise CheckpointError(
            f"{what} is not a checkpoint of {type(module).__name__}: it lacks {len(missing)} of the {len(own)} weights "
            f"the configured network has, e.g. {missing[0]!r} (a checkpoint of another kind of model)"
        )


def load_frozen(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> nn.Module:
    """Load ``state_dict`` into ``module`` exactly (every key, every shape), then freeze it in eval mode.

    Raises
    ------
    ValueError
        Naming the first missing, unexpected or differently shaped key (or, when most are missing, the checkpoint as
        one of another kind of model, :func:`check_kind`); nothing is loaded then.
    """
    check_kind(module, state_dict, what)
    load_exactly(module, state_dict, what, "the configured network")
    module.eval().requires_grad_(False)
    return module


def tokenizer_arguments(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """AQ-VAE constructor arguments from a NextAccel ``model`` configuration."""
    arguments = {key: plain_value(model_config[key]) for key in TOKENIZER_KEYS}
    arguments = {key: tuple(value) if isinstance(value, list) else value for key, value in arguments.items()}
    arguments["quant_resi"] = model_config["tokenizer_quant_resi"]
    return arguments


def _tokenizer_network(arguments: dict[str, Any], model_config: Mapping[str, Any]) -> AQVAE:
    # The AQ-VAE's feature strides select returned features, not weights; the transformer's are valid strides of the
    # same encoder.
    return AQVAE(**arguments, context_strides=tuple(model_config["context_strides"]))


def load_tokenizer(
    checkpoint: Mapping[str, Any], path: str | os.PathLike, model_config: Mapping[str, Any], device: torch.device | str
) -> AQVAE:
    """The frozen AQ-VAE of a tokenizer checkpoint, built from the NextAccel configuration and checked against it.

    Parameters
    ----------
    checkpoint : Mapping
        The checkpoint read by :func:`load_checkpoint`.
    path : path
        Its file, for messages and for the ``config.yaml`` next to it.
    model_config : Mapping
        The NextAccel ``model`` configuration (``TOKENIZER_KEYS``, ``tokenizer_quant_resi``, ``mask_family``).
    device : torch.device or str
        Where the tokenizer runs.
    """
    what = f"model.tokenizer_checkpoint {str(path)!r}"
    arguments = tokenizer_arguments(model_config)
    check_run_config(path, {"model_name": "nextaccel.aqvae.AQVAE", **arguments}, what)
    families = saved_model_value(path, "mask_families")
    wanted = [str(family) for family in (model_config.get("mask_families") or [model_config["mask_family"]])]
    if families is not None and (missing := [family for family in wanted if family not in families]):
        raise ValueError(f"{what} was trained on mask families {families}, not on {missing[0]!r}")
    tokenizer = _tokenizer_network(arguments, model_config)
    check_kind(tokenizer, checkpoint["model"], what)
    check_convention(checkpoint["model"], what)
    load_frozen(tokenizer, checkpoint["model"], what)
    return tokenizer.to(device)


def load_frozen_additional_model(
    module: nn.Module, checkpoint: Mapping[str, Any], name: str, path: str | os.PathLike, config_key: str
) -> nn.Module:
    """Load and freeze the additional model ``name`` saved in a checkpoint, e.g. the tokenizer's sensitivity model.

    Raises
    ------
    ValueError
        If the checkpoint has no entry ``name`` or its weights do not fit ``module``.
    """
    what = f"model.{config_key} {str(path)!r}"
    if name not in checkpoint:
        raise ValueError(f"{what} has no '{name}' entry, but additional_models.{name} is configured")
    return load_frozen(module, checkpoint[name], f"'{name}' of {what}")


TEACHER_ARCHITECTURE_KEYS = ("token_grids", "codebook_size", "latent_dim", "num_families", "in_channels", "image_size")
"""Architecture values a distillation teacher must share with its student (and a teacher's prefix model with the
teacher): the tokenizer's vocabulary and level schedule and the image the context encoder sees."""

TEACHER_TRAINING_KEYS = ("mask_family", "mask_center_fraction", "tokenizer_quant_resi")
"""Values of the teacher's own training run (its ``config.yaml``) that must equal the student's (and those of a
teacher's prefix model, the teacher's): the acquisition it learnt and the tokenizer it learnt it on."""


def _check_nextaccel_run(path: str | os.PathLike, privileged: bool, expected: Mapping[str, Any], what: str) -> None:
    """:func:`check_run_config` for a NextAccel checkpoint: a base model (``privileged``: a teacher) with ``expected``
    values."""
    check_run_config(
        path, {"model_name": "nextaccel.nextaccel.NextAccel", "privileged_context": privileged, **expected}, what
    )


def _check_codebook(theirs: torch.Tensor, codebook: torch.Tensor, what: str) -> None:
    """Refuse a NextAccel checkpoint whose codebook is not the tokenizer's (trained on other tokens)."""
    if not torch.equal(theirs.detach().cpu(), codebook.detach().cpu()):
        raise ValueError(f"{what} has another codebook than model.tokenizer_checkpoint: trained with another tokenizer")


def _load_frozen_transformer(
    network: nn.Module,
    network_config: Mapping[str, Any],
    engine_config: Mapping[str, Any],
    codebook: torch.Tensor,
    path: str | os.PathLike | None,
    entry: str,
    checkpoint_key: str,
    privileged: bool,
    role: str,
) -> nn.Module:
    """Load a frozen NextAccel of an earlier stage that shares the engine's tokens (the distillation teacher, the
    teacher's prefix model) and check it against the engine's configuration.

    Parameters
    ----------
    network : nn.Module
        The ``additional_models.<entry>`` network DIRECT built (random weights).
    network_config, engine_config : Mapping
        ``additional_models.<entry>`` and ``model`` configurations.
    codebook : Tensor
        The tokenizer's codebook (V, D): the network must have been trained on the same tokens.
    path : path or None
        ``model.<checkpoint_key>``.
    entry, checkpoint_key : str
        Names for messages.
    privileged : bool
        Whether the network must be a privileged teacher (``privileged_context: true``) or a base model.
    role : str
        What the engine's own model is (``"student"``, ``"teacher"``), for messages.
    """
    for key in TEACHER_ARCHITECTURE_KEYS:
        ours, theirs = plain_value(engine_config[key]), plain_value(network_config[key])
        if ours != theirs:
            raise ValueError(f"additional_models.{entry} has {key}={theirs!r}, the {role} model has {ours!r}")
    checkpoint = load_checkpoint(path, checkpoint_key)
    what = f"model.{checkpoint_key} {str(path)!r}"
    expected = {key: engine_config[key] for key in (*TEACHER_ARCHITECTURE_KEYS, *TEACHER_TRAINING_KEYS)}
    _check_nextaccel_run(path, privileged, expected, what)
    load_frozen(network, checkpoint["model"], what)
    _check_codebook(network.codebook, codebook, what)
    return network


def load_teacher(
    teacher: nn.Module,
    teacher_config: Mapping[str, Any],
    student_config: Mapping[str, Any],
    codebook: torch.Tensor,
    path: str | os.PathLike | None,
) -> nn.Module:
    """Load the privileged teacher of on-policy distillation from its checkpoint and freeze it.

    Parameters
    ----------
    teacher : nn.Module
        The ``additional_models.teacher`` network DIRECT built (random weights).
    teacher_config, student_config : Mapping
        ``additional_models.teacher`` and ``model`` configurations.
    codebook : Tensor
        The tokenizer's codebook (V, D): the teacher must have been trained on the same tokens.
    path : path or None
        ``model.teacher_checkpoint``.

    Raises
    ------
    ValueError
        If the teacher has no privileged context, or its configuration, checkpoint or codebook differ from the
        student's tokenizer, vocabulary, level schedule or mask family.
    """
    if not teacher_config.get("privileged_context", False):
        raise ValueError(
            "additional_models.teacher has privileged_context false: distillation needs the privileged teacher, "
            "which also sees the fully sampled image (train it with engine_name: TeacherEngine)"
        )
    return _load_frozen_transformer(
        teacher,
        teacher_config,
        student_config,
        codebook,
        path,
        "teacher",
        "teacher_checkpoint",
        privileged=True,
        role="student",
    )


def load_prefix_model(
    prefix_model: nn.Module,
    prefix_config: Mapping[str, Any],
    teacher_config: Mapping[str, Any],
    codebook: torch.Tensor,
    path: str | os.PathLike | None,
) -> nn.Module:
    """Load the frozen base NextAccel whose own rollouts randomize the teacher's prefixes (``prefix_noise:
    base_rollout``) and freeze it.

    Parameters
    ----------
    prefix_model : nn.Module
        The ``additional_models.prefix_model`` network DIRECT built (random weights).
    prefix_config, teacher_config : Mapping
        ``additional_models.prefix_model`` and the teacher's ``model`` configurations.
    codebook : Tensor
        The tokenizer's codebook (V, D): the base model must have been trained on the same tokens.
    path : path or None
        ``model.prefix_model_checkpoint``: a base (or distilled) NextAccel of the teacher's mask family.

    Raises
    ------
    ValueError
        If the model is privileged (a teacher sees what a student never does), or its configuration, checkpoint or
        codebook differ from the teacher's tokenizer, vocabulary, level schedule or mask family.
    """
    if prefix_config.get("privileged_context", False):
        raise ValueError(
            "additional_models.prefix_model has privileged_context true: the prefixes must be a student's own "
            "rollouts, so the prefix model is a base NextAccel (privileged_context: false)"
        )
    return _load_frozen_transformer(
        prefix_model,
        prefix_config,
        teacher_config,
        codebook,
        path,
        "prefix_model",
        "prefix_model_checkpoint",
        privileged=False,
        role="teacher",
    )


BASE_ARCHITECTURE_KEYS = ("depth", "embed_dim", "num_heads", "mlp_ratio", "context_strides", "qk_norm")
"""Transformer architecture values a teacher started from a base model must share with it (beside
:data:`TEACHER_ARCHITECTURE_KEYS`)."""


def start_teacher_from_base(
    teacher: nn.Module, engine_config: Mapping[str, Any], codebook: torch.Tensor, path: str | os.PathLike | None
) -> None:
    """Copy a base NextAccel's weights into a privileged teacher (``model.teacher_init_checkpoint``).

    Every weight of the teacher is the base model's except its privileged source embeddings (``source_embed``, which
    label the measured and the fully sampled context tokens and keep the teacher's own initialisation) and the
    families it records (``trained_families``, the teacher's own configuration's).

    Parameters
    ----------
    teacher : nn.Module
        The engine's privileged NextAccel (``privileged_context: true``).
    engine_config : Mapping
        The teacher's ``model`` configuration.
    codebook : Tensor
        The tokenizer's codebook (V, D): the base model must have been trained on the same tokens.
    path : path or None
        ``model.teacher_init_checkpoint``.

    Raises
    ------
    ValueError
        In one line naming the file: not a base NextAccel (a teacher, another model), another architecture, mask
        family, tokenizer or codebook; nothing is loaded then.
    """
    checkpoint = load_checkpoint(path, "teacher_init_checkpoint")
    what = f"model.teacher_init_checkpoint {str(path)!r}"
    expected = {
        key: engine_config[key] for key in (*TEACHER_ARCHITECTURE_KEYS, *BASE_ARCHITECTURE_KEYS, *TEACHER_TRAINING_KEYS)
    }
    _check_nextaccel_run(path, False, expected, what)
    weights = without_module_prefix(checkpoint["model"])
    own = teacher.state_dict()
    kept = [key for key in own if key.startswith("source_embed.") or key == "trained_families"]
    privileged = [key for key in weights if key.startswith("source_embed.")]
    if privileged:
        raise ValueError(f"{what} has {privileged[0]!r}: it is a privileged teacher, not the base model to start from")
    _check_codebook(weights.get("codebook", codebook), codebook, what)
    check_kind(teacher, weights, what)
    load_exactly(teacher, {**weights, **{key: own[key] for key in kept}}, what, "the teacher")


STUDENT_START_KEYS = ("mask_family", "mask_center_fraction", "tokenizer_quant_resi", *TEACHER_ARCHITECTURE_KEYS)
"""Values of the base model's training run (its ``config.yaml``) that a distillation started from it must share."""


def check_student_start(path: str | os.PathLike, student_config: Mapping[str, Any]) -> None:
    """Check distillation's start checkpoint (``training.model_checkpoint``) before DIRECT loads it.

    It must be a file (not a run directory) and, where its ``config.yaml`` is present, a base NextAccel (not the
    privileged teacher, not another model) trained on the student's mask family and tokenizer shape. DIRECT's load
    (:class:`~direct_nextaccel.core.checkpoints.PluginCheckpointer`) then refuses a file that is truncated, not a DIRECT
    checkpoint or of another architecture, in one line naming it.

    Raises
    ------
    CheckpointError
        Naming the file and what is wrong with it.
    """
    what = "distillation's start checkpoint (training.model_checkpoint)"
    if "://" in str(path):  # DIRECT downloads a URL itself
        return
    path = checkpoint_file(path, what)
    expected = {key: student_config[key] for key in STUDENT_START_KEYS if key in student_config}
    _check_nextaccel_run(path, False, expected, f"{what} {str(path)!r}")

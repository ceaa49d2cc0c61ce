"""On-policy privileged information distillation (paper section 4.3): the privileged teacher and the student's engine.

``TeacherEngine`` trains a :class:`NextAccel` with ``privileged_context: true``: its cross-attention context also holds
the fully sampled image, and teacher forcing runs on *randomized prefixes* (a fraction of the R16 ... R2 tokens is
replaced, while the targets stay the tokenizer's), so that the teacher learns to correct a wrong history from the
context instead of copying it. ``model.prefix_noise`` says what replaces a token: a random code, the teacher's own
prediction, either, or (``base_rollout``) the token of a frozen base NextAccel's own rollout from the R32 input, the
kind of error the student will make in the prefixes distillation shows the teacher. The R32 tokens are never
replaced: at inference they are the tokenizer's encoding of the measurement, exact by construction.

``DistillationEngine`` post-trains a base student. For each batch the student rolls out Q16 ... Q_FS from the R32
input alone (eval mode, no gradient), by default sampling each token and feeding it back as the paper's student does
(``model.rollout: multinomial``; ``argmax`` and ``top_k_top_p`` are options); on exactly that rollout the student
(with gradient) and the frozen teacher (which also sees the fully sampled image) predict every next level, and the
loss is the reverse KL ``KL(student || teacher)`` of eq. 4 (:func:`reverse_kl`). Validation and ``direct predict``
are the base model's: a distilled checkpoint is used with ``NextAccelEngine`` like any other.

Sampled rollouts draw from a ``torch.Generator`` of the engine (``_rollout_generator``, the teacher's
``_prefix_generator``), seeded from the run's seed (each rank's own under DistributedDataParallel) and saved in every
checkpoint with the other random states (:mod:`direct_nextaccel.core.resume`), so ``--resume`` samples exactly what
the uninterrupted run samples.

The teacher is ``additional_models.teacher`` so that DIRECT builds it from its configuration; the engine takes it out
of ``self.models`` at construction, before DIRECT's ``train`` builds the optimizer from the engine's models, so it is
in no optimizer group, never switched to train mode and never saved in the student's checkpoints. Its weights come
from ``model.teacher_checkpoint`` (DIRECT would not load them). The teacher's base model for ``base_rollout``
prefixes is handled the same way: ``additional_models.prefix_model``, weights from ``model.prefix_model_checkpoint``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from direct_nextaccel.masks.nested import LEVELS
from direct_nextaccel.modules.options import validate_model_config
from direct_nextaccel.nextaccel.config import NextAccelConfig
from direct_nextaccel.nextaccel.nextaccel import NextAccel
from direct_nextaccel.nextaccel.tokenizer_loading import (
    check_student_start,
    load_prefix_model,
    load_teacher,
    start_teacher_from_base,
)
from direct_nextaccel.nextaccel.transformer_engine import NextAccelEngine

logger = logging.getLogger(__name__)

PREFIX_NOISE = ("uniform", "self", "mixed", "base_rollout")
"""Kinds of prefix randomization (``model.prefix_noise``), see :func:`randomize_prefix`."""

ROLLOUT_SEED_OFFSET = 1
PREFIX_SEED_OFFSET = 2
"""Offsets added to the process's torch seed for the engines' own sampling generators, so that their streams differ
from the mask generator's (seeded with the torch seed itself)."""


def engine_generator(device: torch.device | str, offset: int) -> torch.Generator:
    """A generator on ``device`` seeded from the process's torch seed (``--seed``, each rank's own under DDP)."""
    return torch.Generator(device=device).manual_seed((torch.initial_seed() + offset) % 2**63)


def reverse_kl(student_logits: Sequence[Tensor], teacher_logits: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """Reverse KL ``KL(p_student || p_teacher)`` of next-level predictions, paper eq. 4.

    Per position the divergence is summed exactly over the whole vocabulary, ``sum_v p_s(v) (log p_s(v) -
    log p_t(v))`` in float32; it is averaged over the positions (and samples) of each level, then over the levels.

    Parameters
    ----------
    student_logits, teacher_logits : Sequence[Tensor]
        Logits (B, L_l, V) per predicted level, aligned; the teacher's carry no gradient in distillation.

    Returns
    -------
    loss : Tensor
        Scalar, mean over the levels.
    per_level : list of Tensor
        Scalar mean divergence of each level.
    """
    if len(student_logits) != len(teacher_logits) or not student_logits:
        raise ValueError(f"got {len(student_logits)} student and {len(teacher_logits)} teacher levels of logits")
    per_level = []
    for student, teacher in zip(student_logits, teacher_logits, strict=True):
        if student.shape != teacher.shape:
            raise ValueError(f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ")
        log_p = student.float().log_softmax(dim=-1)
        log_q = teacher.float().log_softmax(dim=-1)
        per_level.append((log_p.exp() * (log_p - log_q)).sum(dim=-1).mean())
    return torch.stack(per_level).mean(), per_level


def randomize_prefix(
    tokens: Sequence[Tensor],
    fraction: float,
    kind: str,
    codebook_size: int,
    predictions: Sequence[Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """Replace a random ``fraction`` of the tokens of levels 1 .. L-2 (R16 ... R2) for teacher forcing.

    Every token of those levels is replaced with probability ``fraction`` (independently) by a uniform random code
    (``"uniform"``), by the model's own prediction of it (``"self"``), by either with equal chance (``"mixed"``), or by
    the token at the same position of a base model's rollout (``"base_rollout"``; ``predictions`` are then that
    rollout's tokens). Level 0 (R32, always exact at inference) and the last level (only a target) are returned
    unchanged.

    Parameters
    ----------
    tokens : Sequence[Tensor]
        Long (B, g_l, g_l) per level.
    fraction : float
        In [0, 1].
    kind : str
        One of :data:`PREFIX_NOISE`.
    codebook_size : int
        Vocabulary of the uniform codes.
    predictions : Sequence[Tensor], optional
        Substitute tokens (B, g_l, g_l) for levels 1 .. L-1: the model's own (e.g. argmax of teacher-forced logits),
        needed by ``"self"`` and ``"mixed"``, or a base model's rollout without its Q32, needed by ``"base_rollout"``.
    generator : torch.Generator, optional
        On the tokens' device.
    """
    if kind not in PREFIX_NOISE:
        raise ValueError(f"prefix noise {kind!r} is not one of {PREFIX_NOISE}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"prefix noise fraction {fraction} is not in [0, 1]")
    if kind != "uniform" and predictions is None:
        what = "the base model's rollout tokens" if kind == "base_rollout" else "the model's own predictions"
        raise ValueError(f"prefix noise {kind!r} needs {what}")
    if predictions is not None:
        shapes = [tuple(t.shape) for t in tokens[1:]]
        if [tuple(t.shape) for t in predictions] != shapes:
            raise ValueError(
                f"substitute tokens {[tuple(t.shape) for t in predictions]} do not match the token maps {shapes} "
                "of levels 1 .."
            )
    noisy = [tokens[0]]
    for level in range(1, len(tokens) - 1):
        clean = tokens[level]
        replace = torch.rand(clean.shape, generator=generator, device=clean.device) < fraction
        if kind == "base_rollout":
            noisy.append(torch.where(replace, predictions[level - 1], clean))
            continue
        uniform = torch.randint(codebook_size, clean.shape, generator=generator, device=clean.device)
        if kind == "uniform":
            substitute = uniform
        elif kind == "self":
            substitute = predictions[level - 1]
        else:
            coin = torch.rand(clean.shape, generator=generator, device=clean.device) < 0.5
            substitute = torch.where(coin, uniform, predictions[level - 1])
        noisy.append(torch.where(replace, substitute, clean))
    noisy.append(tokens[-1])
    return noisy


class TeacherEngine(NextAccelEngine):
    """DIRECT engine of the privileged teacher: ``engine_name: TeacherEngine`` with ``privileged_context: true``.

    Trains with ``token_cross_entropy`` on prefixes randomized by ``model.prefix_noise`` and
    ``model.prefix_noise_fraction`` (:func:`randomize_prefix`). With ``prefix_noise: base_rollout`` the substitutes
    come from a frozen base NextAccel (``additional_models.prefix_model``, the base model's architecture, weights from
    ``model.prefix_model_checkpoint``) that rolls out from the same R32 input with ``model.prefix_rollout``
    (``temperature``/``top_k``/``top_p``). It needs the fully sampled k-space at validation too (the teacher sees the
    fully sampled image there as well), so its validation is not a measure of what a student can reach.
    """

    PRIVILEGED: ClassVar[bool] = True

    def __init__(self, cfg, model, device, forward_operator, backward_operator, mixed_precision=False, **models):
        # model.prefix_noise and model.prefix_noise_fraction are checked with the whole config by NextAccelEngine.
        additional = cfg.get("additional_models", {}) or {}
        base_prefixes = cfg.model.get("prefix_noise") == "base_rollout"
        if base_prefixes and "prefix_model" in additional:
            validate_model_config(additional.prefix_model, NextAccelConfig, "additional_models.prefix_model")
        super().__init__(cfg, model, device, forward_operator, backward_operator, mixed_precision, **models)
        config = cfg.model
        self._prefix_generator = engine_generator(device, PREFIX_SEED_OFFSET)
        self.prefix_model: NextAccel | None = None
        if not base_prefixes:
            if "prefix_model" in self.models:  # kept out of DIRECT's optimizer and checkpoints all the same
                self.models.pop("prefix_model")
                logger.warning(
                    "additional_models.prefix_model is not used with model.prefix_noise %r: it is neither loaded, "
                    "trained nor saved (prefix_noise: base_rollout uses it).",
                    str(config.prefix_noise),
                )
            return
        if "prefix_model" not in self.models:
            raise ValueError(
                "model.prefix_noise base_rollout needs additional_models.prefix_model: {model_name: "
                "nextaccel.nextaccel.NextAccel, privileged_context: false, ...the base model's architecture} and "
                "model.prefix_model_checkpoint, the base model's checkpoint"
            )
        prefix_model = self.models.pop("prefix_model")
        if not isinstance(prefix_model, NextAccel):
            raise TypeError(
                f"additional_models.prefix_model must be nextaccel.nextaccel.NextAccel, got {type(prefix_model)}"
            )
        # A base model's checkpoint older than the recorded families is taken to know the teacher's.
        prefix_model.set_trained_families(self.transformer.trained_families.nonzero().flatten().tolist())
        self.prefix_model = load_prefix_model(
            prefix_model,
            additional.prefix_model,
            config,
            self.tokenizer.quantizer.codebook,
            config.prefix_model_checkpoint,
        ).to(device)
        self.frozen.append(self.prefix_model)

    def initialise_from_tokenizer(self) -> None:
        """Start as the base model does, then, with ``model.teacher_init_checkpoint``, from that base model's weights
        (all but the privileged source embeddings; a resumed run's checkpoint overwrites both, as for the base)."""
        super().initialise_from_tokenizer()
        path = self.cfg.model.get("teacher_init_checkpoint")
        if path:
            start_teacher_from_base(self.transformer, self.cfg.model, self.tokenizer.quantizer.codebook, path)
            logger.info("The teacher starts from the base model %s (all but its source embeddings).", path)

    def base_rollout(self, q32: Tensor, image32: Tensor, family: Tensor) -> list[Tensor]:
        """The frozen base model's own tokens of every level from the R32 input (``model.prefix_rollout``)."""
        config = self.cfg.model
        if self.prefix_model is None:
            raise ValueError("base_rollout needs model.prefix_noise base_rollout and its prefix model")
        return self.prefix_model.generate(
            q32,
            image32,
            family,
            mode=config.prefix_rollout,
            temperature=config.temperature,
            top_k=config.top_k,
            top_p=config.top_p,
            generator=self._prefix_generator,
            check_values=False,
        )

    def teacher_forcing_tokens(
        self, tokens: list[Tensor], image32: Tensor, family: Tensor, fs_image: Tensor | None
    ) -> list[Tensor]:
        """The tokenizer's tokens with randomized R16 ... R2 prefixes."""
        config = self.cfg.model
        if config.prefix_noise_fraction == 0:
            return tokens
        predictions = None
        if config.prefix_noise == "base_rollout":
            predictions = self.base_rollout(tokens[0], image32, family)[1:]
        elif config.prefix_noise != "uniform":
            with torch.no_grad():
                logits = self.transformer(tokens, image32, family, fs_image=fs_image, check_values=False)
            predictions = [
                level_logits.argmax(dim=-1).view_as(level)
                for level_logits, level in zip(logits, tokens[1:], strict=True)
            ]
        return randomize_prefix(
            tokens, config.prefix_noise_fraction, config.prefix_noise, self.transformer.codebook_size, predictions
        )

    def privileged_image(self, data: dict[str, Any]) -> Tensor:
        """The fully sampled image (B, 2, h, w) from the batch's k-space."""
        return self.hierarchy(data, levels=(len(LEVELS),))[0][:, 0]


class DistillationEngine(NextAccelEngine):
    """DIRECT engine of on-policy privileged information distillation: ``engine_name: DistillationEngine``.

    Needs ``additional_models.teacher`` (``model_name: nextaccel.nextaccel.NextAccel``, ``privileged_context: true``,
    the teacher's architecture), ``model.teacher_checkpoint`` and a base student to start from
    (``training.model_checkpoint`` or ``--initialization-checkpoint``). Engine loss: ``reverse_kl``; logged per
    conditioning level: ``reverse_kl_R32`` ... ``reverse_kl_R2``. ``model.rollout`` picks the student's rollout
    decoding: multinomial (the paper's sampled rollout, softmax of logits / ``temperature``, the default), argmax or
    top_k_top_p (``top_k``/``top_p``); sampling draws from the engine's ``_rollout_generator``.
    """

    ENGINE_LOSSES: ClassVar[dict[str, str]] = {"reverse_kl": "reverse_kl"}

    def __init__(self, cfg, model, device, forward_operator, backward_operator, mixed_precision=False, **models):
        if "teacher" in cfg.get("additional_models", {}):  # model.rollout is checked by NextAccelEngine
            validate_model_config(cfg.additional_models.teacher, NextAccelConfig, "additional_models.teacher")
        super().__init__(cfg, model, device, forward_operator, backward_operator, mixed_precision, **models)
        config = cfg.model
        if "teacher" not in self.models:
            raise ValueError(
                "DistillationEngine needs additional_models.teacher: {model_name: nextaccel.nextaccel.NextAccel, "
                "privileged_context: true, ...the teacher's architecture}"
            )
        teacher = self.models.pop("teacher")
        if not isinstance(teacher, NextAccel):
            raise TypeError(f"additional_models.teacher must be nextaccel.nextaccel.NextAccel, got {type(teacher)}")
        # A teacher checkpoint older than the recorded families is taken to know the student's.
        teacher.set_trained_families(self.transformer.trained_families.nonzero().flatten().tolist())
        self.teacher = load_teacher(
            teacher, cfg.additional_models.teacher, config, self.tokenizer.quantizer.codebook, config.teacher_checkpoint
        ).to(device)
        self.frozen.append(self.teacher)
        self._rollout_generator = engine_generator(device, ROLLOUT_SEED_OFFSET)

    def train(self, optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs):
        """Refuse to distil into an untrained student, then train as :meth:`NextAccelEngine.train`."""
        if not kwargs.get("initialization") and not kwargs.get("resume"):
            raise ValueError(
                "DistillationEngine post-trains a base NextAccel: set training.model_checkpoint (or "
                "--initialization-checkpoint) to the base model's checkpoint"
            )
        if kwargs.get("initialization"):
            check_student_start(kwargs["initialization"], self.cfg.model)
        return super().train(optimizer, lr_scheduler, training_datasets, experiment_directory, *args, **kwargs)

    def rollout(self, q32: Tensor, image32: Tensor, family: Tensor) -> list[Tensor]:
        """The student's own tokens of every level from the R32 input, decoded as at inference (eval mode)."""
        config = self.cfg.model
        student = self.transformer
        was_training = student.training
        student.eval()
        try:
            return student.generate(
                q32,
                image32,
                family,
                mode=config.rollout,
                temperature=config.temperature,
                top_k=config.top_k,
                top_p=config.top_p,
                generator=self._rollout_generator,
                check_values=False,
            )
        finally:
            student.train(was_training)

    def training_outputs(self, data: dict[str, Any]) -> dict[str, Any]:
        """One on-policy step's loss on a batch (sensitivity maps already normalised).

        Returns
        -------
        dict
            ``reverse_kl`` (scalar, gradient to the student only), ``rollout`` (the six token maps the loss was
            computed on, the student's own) and ``scalars``, the per-level divergences to log.
        """
        images, family = self.hierarchy(data, levels=(0, len(LEVELS)))
        image32, fs_image = images[:, 0], images[:, 1]
        with torch.no_grad():
            q32 = self.tokenizer.encode(image32[:, None], family, levels=[0], check_values=False).indices[0]
            rollout = self.rollout(q32, image32, family)
            teacher_logits = self.teacher(rollout, image32, family, fs_image=fs_image, check_values=False)
        student_logits = self.model(rollout, image32, family, check_values=False)
        loss, per_level = reverse_kl(student_logits, teacher_logits)
        names = [f"reverse_kl_R{level}" for level in LEVELS]
        return {"reverse_kl": loss, "rollout": rollout, "scalars": dict(zip(names, per_level, strict=True))}

"""On-policy privileged information distillation (paper section 4.3): the privileged teacher and the student's engine.

``TeacherEngine`` trains a :class:`NextAccel` with ``privileged_context: true``: its cross-attention context also holds
the fully sampled image, and teacher forcing runs on *randomized prefixes* (a fraction of the R16 ... R2 tokens is
replaced by random codes and/or the model's own predictions, while the targets stay the tokenizer's), so that the
teacher learns to correct a wrong history from the context instead of copying it. The R32 tokens are never
replaced: at inference they are the tokenizer's encoding of the measurement, exact by construction.

``DistillationEngine`` post-trains a base student. For each batch the student rolls out Q16 ... Q_FS from the R32
input alone (eval mode, no gradient, argmax by default); on exactly that rollout the student (with gradient) and the
frozen teacher (which also sees the fully sampled image) predict every next level, and the loss is the reverse KL
``KL(student || teacher)`` of eq. 4 (:func:`reverse_kl`). Validation and ``direct predict`` are the base model's:
a distilled checkpoint is used with ``NextAccelEngine`` like any other.

The teacher is ``additional_models.teacher`` so that DIRECT builds it from its configuration; the engine takes it out
of ``self.models`` at construction, before DIRECT's ``train`` builds the optimizer from the engine's models, so it is
in no optimizer group, never switched to train mode and never saved in the student's checkpoints. Its weights come
from ``model.teacher_checkpoint`` (DIRECT would not load them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from direct_nextaccel.masks.nested import LEVELS
from direct_nextaccel.modules.options import validate_model_config
from direct_nextaccel.nextaccel.config import NextAccelConfig
from direct_nextaccel.nextaccel.nextaccel import NextAccel
from direct_nextaccel.nextaccel.tokenizer_loading import check_student_start, load_teacher
from direct_nextaccel.nextaccel.transformer_engine import NextAccelEngine

PREFIX_NOISE = ("uniform", "self", "mixed")


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
    (``"uniform"``), by the model's own prediction of it (``"self"``), or by either with equal chance (``"mixed"``).
    Level 0 (R32, always exact at inference) and the last level (only a target) are returned unchanged.

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
        The model's own tokens (B, g_l, g_l) for levels 1 .. L-1 (e.g. argmax of teacher-forced logits); needed by
        ``"self"`` and ``"mixed"``.
    generator : torch.Generator, optional
        On the tokens' device.
    """
    if kind not in PREFIX_NOISE:
        raise ValueError(f"prefix noise {kind!r} is not one of {PREFIX_NOISE}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"prefix noise fraction {fraction} is not in [0, 1]")
    if kind != "uniform" and predictions is None:
        raise ValueError(f"prefix noise {kind!r} needs the model's own predictions")
    noisy = [tokens[0]]
    for level in range(1, len(tokens) - 1):
        clean = tokens[level]
        replace = torch.rand(clean.shape, generator=generator, device=clean.device) < fraction
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
    ``model.prefix_noise_fraction`` (:func:`randomize_prefix`). It needs the fully sampled k-space at validation
    too (the teacher sees the fully sampled image there as well), so its validation is not a measure of what a
    student can reach.
    """

    PRIVILEGED: ClassVar[bool] = True

    def __init__(self, cfg, model, device, forward_operator, backward_operator, mixed_precision=False, **models):
        # model.prefix_noise and model.prefix_noise_fraction are checked with the whole config by NextAccelEngine.
        super().__init__(cfg, model, device, forward_operator, backward_operator, mixed_precision, **models)

    def teacher_forcing_tokens(
        self, tokens: list[Tensor], image32: Tensor, family: Tensor, fs_image: Tensor | None
    ) -> list[Tensor]:
        """The tokenizer's tokens with randomized R16 ... R2 prefixes."""
        config = self.cfg.model
        if config.prefix_noise_fraction == 0:
            return tokens
        predictions = None
        if config.prefix_noise != "uniform":
            with torch.no_grad():
                logits = self.transformer(tokens, image32, family, fs_image=fs_image)
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
    decoding (argmax, multinomial or top_k_top_p with ``temperature``/``top_k``/``top_p``).
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
        self.teacher = load_teacher(
            teacher, cfg.additional_models.teacher, config, self.tokenizer.quantizer.codebook, config.teacher_checkpoint
        ).to(device)
        self.frozen.append(self.teacher)

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
            q32 = self.tokenizer.encode(image32[:, None], family, levels=[0]).indices[0]
            rollout = self.rollout(q32, image32, family)
            teacher_logits = self.teacher(rollout, image32, family, fs_image=fs_image)
        student_logits = self.model(rollout, image32, family)
        loss, per_level = reverse_kl(student_logits, teacher_logits)
        names = [f"reverse_kl_R{level}" for level in LEVELS]
        return {"reverse_kl": loss, "rollout": rollout, "scalars": dict(zip(names, per_level, strict=True))}

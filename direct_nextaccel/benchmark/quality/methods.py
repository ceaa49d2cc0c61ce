"""The rows of ``direct-nextaccel benchmark`` as given on its command line: ``--run``, ``--predictions`` and
``--bound`` (named as :mod:`direct_nextaccel.benchmark.naming` says), and a tokenizer bound expanded into its rows.

- **Tokenizer bounds** (``--bound NAME[@FAMILY]=CONFIG.yaml:CHECKPOINT|RUN_DIR``): the ceiling of the autoregressive
  methods that decode through a tokenizer: ``direct predict`` of the tokenizer's own config, which decodes the
  fully sampled slice from its own tokens. An AQ-VAE (``nextaccel.aqvae.AQVAE``) gives two rows,
  ``NAME-all-levels`` (``model.output_levels`` = all six) and ``NAME-R32-tokens`` (``[0]``), both with
  ``model.mask_families: [FAMILY]`` (``@FAMILY``, else ``--family``) and the family's nested mask as inference
  masking, so each is the bound of that family's NextAccel; an MSVQ-VAE (``miar.msvqvae.MSVQVAE``) gives
  ``NAME-all-scales`` in its config's (super-resolution) table. Bound rows are marked ``(bound)`` and never bold:
  they see the fully sampled data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from direct_nextaccel.benchmark.naming import check_name, parse_named, resolve_run
from direct_nextaccel.benchmark.report import MethodRow
from direct_nextaccel.core.direct_runs import one_line

DEFAULT_FAMILY = "cartesian_y"
AQVAE_BOUNDS = {"all-levels": [0, 1, 2, 3, 4, 5], "R32-tokens": [0]}
"""Rows of an AQ-VAE bound: name suffix -> ``model.output_levels``."""
MSVQVAE_BOUND = "all-scales"
KINDS = ("run", "predictions", "bound")
"""The options that name a method: ``--run``, ``--predictions``, ``--bound``."""


@dataclass(frozen=True)
class Method:
    """One method of the benchmark, as given on the command line.

    Attributes
    ----------
    name : str
        Row label and folder name (:data:`~direct_nextaccel.benchmark.naming.NAME_RULE`).
    family : str, optional
        Mask family given with ``NAME@FAMILY``.
    run : str, optional
        ``CONFIG.yaml:CHECKPOINT`` or a run directory, to reconstruct with ``direct predict``.
    predictions : Path, optional
        Folder of existing ``direct predict`` outputs.
    bound : str, optional
        ``CONFIG.yaml:CHECKPOINT`` or run directory of a tokenizer, expanded by :func:`expand_bound` into its bound
        rows.
    overrides : tuple of (str, object)
        Dotted config keys set before ``direct predict`` (the derived config goes to ``configs/<name>.yaml``).
    kind : str
        ``"method"`` or ``"bound"`` (a row that sees the fully sampled data).
    error : str, optional
        Why this row cannot be produced (set by :func:`expand_bound`); it is reported, not run.
    """

    name: str
    family: str | None = None
    run: str | None = None
    predictions: Path | None = None
    bound: str | None = None
    overrides: tuple[tuple[str, object], ...] = ()
    kind: str = "method"
    error: str | None = None


@dataclass
class Entry:
    """A method on its way through the benchmark: its row, its family and where its predictions are."""

    method: Method
    row: MethodRow
    family: str
    predictions: Path | None = None
    masking: dict | None = None


def parse_method(text: str, kind: str) -> Method:
    """``NAME[@FAMILY]=VALUE`` of ``--run`` (``kind="run"``), ``--predictions`` (``"predictions"``) or ``--bound``
    (``"bound"``).

    Raises
    ------
    ValueError
        If ``text`` does not have that form or NAME is not safe (:func:`~direct_nextaccel.benchmark.naming.check_name`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is neither 'run', 'predictions' nor 'bound'")
    named = parse_named(text)
    if kind == "run":
        return Method(named.name, named.family, run=named.value)
    if kind == "bound":
        return Method(named.name, named.family, bound=named.value, kind="bound")
    return Method(named.name, named.family, predictions=Path(named.value))


def expand_bound(method: Method, default_family: str) -> list[Method]:
    """The rows of a ``--bound`` tokenizer (see the module docstring); one failed row if its config cannot be one.

    Parameters
    ----------
    method : Method
        With ``bound`` set.
    default_family : str
        Family of an AQ-VAE bound without ``@FAMILY`` (the benchmark's ``--family``).
    """
    from omegaconf import OmegaConf

    from direct_nextaccel.masks.nested import FAMILIES, MASK_NAMES, family_of

    try:
        config, checkpoint = resolve_run(method.bound)
        try:
            loaded = OmegaConf.load(config)
            model_name = str(OmegaConf.select(loaded, "model.model_name", default=""))
            families = OmegaConf.select(loaded, "model.mask_families", default=None)
            families = list(FAMILIES) if families is None else [str(f) for f in families]
            has_masking = OmegaConf.select(loaded, "inference.dataset.transforms.masking") is not None
        except Exception as error:  # OmegaConf and YAML raise many types; the row only needs the message
            raise ValueError(f"config {config} cannot be read: {one_line(error)}") from error
        run = f"{config}:{checkpoint}"
        if model_name.split(".")[-2:] == ["aqvae", "AQVAE"]:
            family = family_of(method.family or default_family)
            if family not in families:
                raise ValueError(f"the tokenizer of {config} was trained on the families {families}, not {family}")
            common = [("model.mask_families", [family])]
            if has_masking:
                common.append(("inference.dataset.transforms.masking.name", MASK_NAMES[family]))
            return [
                Method(
                    check_name(f"{method.name}-{suffix}"),
                    family,
                    run=run,
                    overrides=(*common, ("model.output_levels", levels)),
                    kind="bound",
                )
                for suffix, levels in AQVAE_BOUNDS.items()
            ]
        if model_name.split(".")[-2:] == ["msvqvae", "MSVQVAE"]:
            return [Method(check_name(f"{method.name}-{MSVQVAE_BOUND}"), method.family, run=run, kind="bound")]
        raise ValueError(
            f"--bound needs a tokenizer config (model_name nextaccel.aqvae.AQVAE or miar.msvqvae.MSVQVAE); {config} "
            f"has {model_name or 'no model_name'}"
        )
    except ValueError as error:
        return [Method(method.name, method.family, kind="bound", error=one_line(error))]

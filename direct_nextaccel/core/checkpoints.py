"""The one reader and writer of DIRECT checkpoints and run configurations for every plugin engine.

DIRECT saves a run as ``RUN/model_<N>.pt`` (``{"model": state_dict, <additional model>: state_dict, "optimizer":
..., "__version__": ...}``), points ``RUN/last_model.txt`` at the latest ``N`` (what ``--resume`` loads) and writes
the run's ``RUN/config.yaml``. Here:

- :func:`read_checkpoint` reads one ``model_<N>.pt`` for any purpose (a frozen tokenizer, a teacher, a start
  checkpoint, a resume) and turns every way it can fail into a one-line :class:`CheckpointError` naming the file: a
  path that does not exist, a run directory where a file is expected (the message names its latest checkpoint; one is
  never picked silently, since a run holds several), a truncated or foreign file, a mapping without a ``model`` state
  dict. :func:`check_run_config` compares a checkpoint's ``config.yaml`` with what the caller expects, so that a
  checkpoint of another kind of model is named as such.
- :func:`atomic_save` and :func:`atomic_write_text` write to a temporary file in the same folder and rename it, so an
  interrupt or a full disk leaves the previous file in place, never a truncated one.
- :class:`PluginCheckpointer` is DIRECT's :class:`~direct.checkpointer.Checkpointer` as the plugin engines use it
  (the engine adopts the instance DIRECT builds, :class:`~direct_nextaccel.core.resume.ResumableEngine`): atomic
  checkpoints carrying the engine's training state (:data:`TRAINING_STATE_KEY`), ``model_best.pt`` that never moves
  ``last_model.txt``, the reader above for every load, and one-line errors for a checkpoint of another model.
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import torch
from direct.checkpointer import Checkpointer
from direct.types import HasStateDict
from direct.utils.io import check_is_valid_url
from omegaconf import OmegaConf

__all__ = [
    "TRAINING_STATE_KEY",
    "CheckpointError",
    "CheckpointNotFoundError",
    "PluginCheckpointer",
    "atomic_save",
    "atomic_write_text",
    "check_run_config",
    "checkpoint_file",
    "filled_when_missing",
    "latest_checkpoint",
    "load_exactly",
    "plain_value",
    "read_checkpoint",
    "run_config",
    "saved_model_value",
    "without_module_prefix",
]

logger = logging.getLogger(__name__)

TRAINING_STATE_KEY = "training_state"
"""Checkpoint entry of a plugin engine's training state (random states, data position, best score); DIRECT's loader
ignores entries it was not asked for, so DIRECT's own engines read these checkpoints unchanged."""

_CHECKPOINT_NAME = re.compile(r"^model_(\d+)\.pt$")

_UNREADABLE = (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, TypeError, KeyError)
"""What ``torch.load`` raises for a truncated, corrupt or foreign file besides an OSError (a missing file is checked
before)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, in one line naming the file.

    A ValueError, not a RuntimeError: DIRECT's training loop catches RuntimeError to write a checkpoint and its logs.
    """


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist."""


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint a run directory's ``last_model.txt`` names, else its highest ``model_<N>.pt``, else None."""
    directory = Path(directory)
    pointer = directory / "last_model.txt"
    if pointer.is_file():
        text = pointer.read_text(encoding="utf-8").strip()
        if text.isdigit() and (directory / f"model_{text}.pt").is_file():
            return directory / f"model_{text}.pt"
    numbered = [
        (int(match[1]), path) for path in directory.glob("model_*.pt") if (match := _CHECKPOINT_NAME.match(path.name))
    ]
    return max(numbered)[1] if numbered else None


def checkpoint_file(path: str | os.PathLike | None, what: str) -> Path:
    """``path`` as a checkpoint file that exists, or a one-line error naming it.

    Parameters
    ----------
    path : path or None
        A ``model_<N>.pt``.
    what : str
        What the path is, for messages (``"model.tokenizer_checkpoint"``, ``"checkpoint to resume from"``).

    Raises
    ------
    CheckpointError
        If ``path`` is unset, or a directory (the message names the run's latest checkpoint when it has one).
    CheckpointNotFoundError
        If nothing exists at ``path``.
    """
    if path is None or str(path) == "":
        raise CheckpointError(f"{what} is not set: give the path of a DIRECT checkpoint model_<N>.pt")
    path = Path(path).expanduser()
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(
                f"{what} {str(path)!r} is a directory holding no model_<N>.pt: name a checkpoint file"
            )
        raise CheckpointError(
            f"{what} {str(path)!r} is a run directory: name one of its model_<N>.pt files, e.g. {str(latest)!r} "
            "(its latest)"
        )
    if not path.exists():
        raise CheckpointNotFoundError(f"{what} {str(path)!r} is not a file: it does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {str(path)!r} is not a regular file")
    return path


def read_checkpoint(path: str | os.PathLike | None, what: str) -> dict[str, Any]:
    """Read a DIRECT checkpoint (CPU tensors, ``weights_only``): a mapping with a ``model`` state dict.

    Raises
    ------
    CheckpointError
        One line naming the file: see :func:`checkpoint_file`, and a file that is truncated, not a torch file, holds
        objects other than tensors and plain values, or has no ``model`` state dict.
    """
    path = checkpoint_file(path, what)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as error:
        raise CheckpointError(f"{what} {str(path)!r} cannot be read: {error.strerror}") from None
    except (*_UNREADABLE, OSError) as error:
        # torch's zip reader says only "Invalid argument" for a truncated file: no detail is better than that
        detail = "" if isinstance(error, OSError) else f" ({(str(error).strip().splitlines() or [''])[0]})"
        raise CheckpointError(
            f"{what} {str(path)!r} cannot be read: it is truncated or not a torch checkpoint{detail}"
        ) from None
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"{what} {str(path)!r} is not a DIRECT checkpoint: it holds a {type(checkpoint).__name__}, not a mapping "
            "with a 'model' state dict"
        )
    if not isinstance(checkpoint.get("model"), Mapping):
        raise CheckpointError(f"{what} {str(path)!r} is not a DIRECT checkpoint: it has no 'model' state dict")
    return dict(checkpoint)


def filled_when_missing(module: torch.nn.Module, key: str) -> bool:
    """Whether the submodule owning state-dict entry ``key`` of ``module`` fills it in itself when a checkpoint lacks
    it (an entry added after older checkpoints were written, listed in that submodule's ``FILLED_WHEN_MISSING`` and
    supplied by its load hook)."""
    path, _, name = key.rpartition(".")
    try:
        owner = module.get_submodule(path)
    except AttributeError:
        return False
    return name in getattr(owner, "FILLED_WHEN_MISSING", ())


def load_exactly(module: torch.nn.Module, state_dict: Mapping[str, Any], what: str, needs: str) -> None:
    """Load ``state_dict`` into ``module`` only if it has every key of the module, no other and every shape equal.

    Parameters
    ----------
    module : torch.nn.Module
        What receives the weights.
    state_dict : Mapping
        The weights (a checkpoint entry or another module's ``state_dict()``).
    what : str
        Where the weights come from, for messages (a file and config key, or a hint such as
        "the AQ-VAE encoder state dict").
    needs : str
        What ``module`` is, for messages ("the configured network", "the context encoder").

    Raises
    ------
    ValueError
        Naming the first missing, unexpected or differently shaped key; nothing is loaded then.
    """
    own = module.state_dict()
    for key, tensor in own.items():
        if key not in state_dict:
            if filled_when_missing(module, key):
                continue
            raise ValueError(f"{what} has no key '{key}' that {needs} needs: the architectures differ")
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{what} has '{key}' of shape {tuple(state_dict[key].shape)}, {needs} needs {tuple(tensor.shape)}"
            )
    for key in state_dict:
        if key not in own:
            raise ValueError(f"{what} has unexpected key '{key}', which {needs} does not have")
    module.load_state_dict(dict(state_dict))


def without_module_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict without DistributedDataParallel's ``module.`` key prefix."""
    return {key.removeprefix("module."): value for key, value in state.items()}


def run_config(path: str | os.PathLike) -> Any:
    """The ``config.yaml`` next to a checkpoint (an OmegaConf config), or None when there is none."""
    config = Path(path).parent / "config.yaml"
    if not config.is_file():
        return None
    try:
        return OmegaConf.load(config)
    except Exception as error:  # YAML and OmegaConf raise many kinds
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{config} next to checkpoint {str(path)!r} cannot be read: {first_line}") from None


def _container(value: Any) -> Any:
    return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def plain_value(value: Any) -> Any:
    """A configuration value as plain Python for comparison (lists for sequences, integral floats as ints)."""
    return _plain(_container(value))


def saved_model_value(path: str | os.PathLike, key: str) -> Any:
    """``model.<key>`` of the ``config.yaml`` next to a checkpoint, or None when there is none."""
    config = run_config(path)
    if config is None:
        return None
    return plain_value(config.get("model", {}).get(key))


def check_run_config(path: str | os.PathLike, expected: Mapping[str, Any], what: str) -> None:
    """Compare ``model.<key>`` of the ``config.yaml`` next to a checkpoint with ``expected``; skip if absent.

    Raises
    ------
    CheckpointError
        Naming the first key whose value differs; a different ``model_name`` is reported as a checkpoint of another
        kind of model.
    """
    config = run_config(path)
    if config is None:
        logger.info("No config.yaml next to %s: only its state dict is checked against the configuration.", path)
        return
    saved = config.get("model", {})
    source = Path(path).parent / "config.yaml"
    for key, value in expected.items():
        if key not in saved:
            continue
        saved_value, value = plain_value(saved[key]), plain_value(value)
        if saved_value == value:
            continue
        if key == "model_name":
            raise CheckpointError(f"{what} is a checkpoint of {saved_value} ({source}), not of {value}")
        raise CheckpointError(
            f"{what} was trained with {key}={saved_value!r} ({source}), the configuration has {value!r}"
        )


def _fsync_directory(directory: Path) -> None:
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def _replace_atomically(path: Path, write) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:  # an interrupt too: never leave the temporary file behind
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def atomic_save(data: Any, path: str | os.PathLike) -> None:
    """``torch.save(data)`` to ``path`` through a temporary file and a rename: the old file or the new, never half."""
    _replace_atomically(Path(path), lambda handle: torch.save(data, handle))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    _replace_atomically(Path(path), lambda handle: handle.write(text.encode("utf-8")))


class PluginCheckpointer(Checkpointer):
    """DIRECT's checkpointer for the plugin engines (adopted from the instance DIRECT builds, :meth:`adopt`).

    Differences from DIRECT's: every file is written atomically; the engine's :meth:`training_state` is saved as
    :data:`TRAINING_STATE_KEY` and given back to it when ``--resume`` loads; ``save("best")`` (any non-integer name)
    leaves ``last_model.txt`` alone; ``last_model.txt`` that does not hold an iteration (an interrupted best-model
    save of an older version left ``best`` there) falls back to the highest ``model_<N>.pt``; every read goes through
    :func:`read_checkpoint`; a missing or differently shaped weight is one line naming the file and the entry.
    """

    engine: Any = None
    role: str = "checkpoint"
    _reading: str | None = None

    @classmethod
    def adopt(cls, checkpointer: Checkpointer, engine: Any) -> PluginCheckpointer:
        """Turn DIRECT's ``checkpointer`` into a :class:`PluginCheckpointer` of ``engine`` (in place).

        ``engine.resume_checkpointables()`` (e.g. a discriminator's optimizer) join the objects it saves and loads.
        """
        checkpointer.__class__ = cls
        checkpointer.engine = engine
        for name, value in engine.resume_checkpointables().items():
            checkpointer.checkpointables.setdefault(name, value)
        return checkpointer

    @property
    def _training(self) -> bool:
        return bool(getattr(self.engine, "_in_training", False))

    # Writing --------------------------------------------------------------------------------------------------------

    def save(self, iteration: int | str, **kwargs: Any) -> None:
        if isinstance(iteration, int) and self.engine is not None:
            self.engine._saved_iteration = iteration
        if not self.save_to_disk:
            return
        data: dict[str, Any] = {"model": self.model.state_dict()}
        for key, value in self.checkpointables.items():
            if key.startswith("__") and key.endswith("__"):
                data[key] = value
            elif isinstance(value, get_args(HasStateDict)):
                data[key] = value.state_dict()
            else:
                self.logger.warning("Value of key %s has no state_dict.", key)
        data.update(kwargs)
        if self.engine is not None:
            data[TRAINING_STATE_KEY] = self.engine.training_state()
        data["__datetime__"] = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        path = Path(self.save_directory) / f"model_{iteration}.pt"
        self.logger.info("Saving checkpoint to: %s.", path)
        atomic_save(data, path)
        if isinstance(iteration, int) and not isinstance(iteration, bool):
            atomic_write_text(Path(self.save_directory) / "last_model.txt", str(iteration))

    # Reading --------------------------------------------------------------------------------------------------------

    def _latest_iteration(self) -> int | None:
        directory = Path(self.save_directory)
        pointer = directory / "last_model.txt"
        if not pointer.exists():
            self.logger.info("No %s: no checkpoint to resume from, starting from scratch.", pointer)
            return None
        text = pointer.read_text(encoding="utf-8").strip()
        if text.isdigit():
            return int(text)
        latest = latest_checkpoint(directory)
        if latest is None:
            raise CheckpointError(
                f"{pointer} holds {text!r}, not an iteration, and {directory} has no model_<N>.pt to resume from"
            )
        self.logger.warning(
            "%s holds %r, not an iteration (left by an interrupted best-model save of an older version): resuming "
            "from %s, the highest model_<N>.pt.",
            pointer,
            text,
            latest.name,
        )
        return int(_CHECKPOINT_NAME.match(latest.name)[1])

    def load(self, iteration: int | str | None, checkpointable_objects: dict | None = None) -> dict:
        if iteration in ("latest", -1):
            iteration = self._latest_iteration()
            if iteration is None:
                return {}
        self.role = "checkpoint to resume from" if self._training else "checkpoint"
        checkpoint = super().load(iteration, checkpointable_objects)
        if checkpoint and self.engine is not None and self._training:  # direct predict has no use for it
            path = Path(self.save_directory) / f"model_{iteration}.pt"
            self.engine.restore_training_state(checkpoint.pop(TRAINING_STATE_KEY, None), path)
        return checkpoint

    def load_models_from_file(self, checkpoint_path) -> None:
        self.role = "initialization checkpoint (training.model_checkpoint)" if self._training else "checkpoint"
        super().load_models_from_file(checkpoint_path)

    def load_from_path(self, checkpoint_path, checkpointable_objects=None, only_models: bool = False) -> dict:
        self._reading = str(checkpoint_path)
        try:
            return super().load_from_path(checkpoint_path, checkpointable_objects, only_models)
        finally:
            self._reading = None

    def _load_checkpoint(self, checkpoint_path) -> dict:
        if check_is_valid_url(str(checkpoint_path)):
            return super()._load_checkpoint(checkpoint_path)
        return read_checkpoint(checkpoint_path, self.role)

    def _load_model(self, obj, state_dict) -> None:
        name = (
            "model"
            if obj is self.model
            else next((key for key, value in self.checkpointables.items() if value is obj), type(obj).__name__)
        )
        where = f"{self.role} {self._reading!r}"
        if not isinstance(state_dict, Mapping):
            raise CheckpointError(f"{where} has no state dict in its '{name}' entry")
        own = obj.state_dict()
        missing = [key for key in own if key not in state_dict and not filled_when_missing(obj, key)]
        if missing:
            kind = "another kind of model" if len(missing) == len(own) else "a different architecture"
            raise CheckpointError(
                f"{where} is not a checkpoint of this {type(obj).__name__} ('{name}' entry): it lacks {len(missing)} "
                f"of its {len(own)} weights, e.g. {missing[0]!r} ({kind})"
            )
        for key, tensor in own.items():
            saved = state_dict.get(key)
            if isinstance(saved, torch.Tensor) and tuple(saved.shape) != tuple(tensor.shape):
                raise CheckpointError(
                    f"{where} has '{name}' weight {key!r} of shape {tuple(saved.shape)}, this {type(obj).__name__} "
                    f"needs {tuple(tensor.shape)}: the configuration differs from the one it was trained with"
                )
        super()._load_model(obj, state_dict)

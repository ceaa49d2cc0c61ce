"""Checks of the files and folders a user names on a ``direct-nextaccel`` command line, made before any work.

Each check raises :class:`PathError` (a ``ValueError``, which every subcommand turns into its one-line error) naming
the option and the path, and leaves nothing behind: a folder it creates to test that it can write there is removed
again. Imports nothing heavy.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["PathError", "check_output_file", "check_output_folder"]


class PathError(ValueError):
    """A path given on the command line cannot be used; the message is one line naming the option and the path."""


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


def _given(path: str | os.PathLike, option: str, kind: str) -> Path:
    if str(path).strip() == "":
        raise PathError(f"{option} is empty: name a {kind}")
    return Path(path).expanduser()


def _folder_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a folder to write in (created if needed), as a predicate (``"is a file, not a folder"``),
    or None; folders created to test are removed again."""
    if path.exists() and not path.is_dir():
        return "is a file, not a folder"
    ancestor = next((parent for parent in path.parents if parent.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        return f"is under {ancestor}, which is a file"
    created: list[Path] = []
    try:
        for folder in [*reversed(path.parents), path]:
            if not folder.exists():
                folder.mkdir()
                created.append(folder)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        return f"cannot be created or written: {_reason(error)}"
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
    return None


def check_output_folder(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a folder the command can create (if needed) and write in, else :class:`PathError`.

    Refused: an empty path, an existing file, a path under a file, and a folder that cannot be created or written
    (read-only file system, missing permission). Folders created for the test are removed again.
    """
    path = _given(path, option, "folder")
    if problem := _folder_problem(path):
        raise PathError(f"{option} {path} {problem}")
    return path


def check_output_file(path: str | os.PathLike, option: str) -> Path:
    """``path`` as a file the command can write (its folder created if needed), else :class:`PathError`.

    Refused: an empty path, an existing folder, and a file whose folder cannot be used (see
    :func:`check_output_folder`).
    """
    path = _given(path, option, "file")
    if path.is_dir():
        raise PathError(f"{option} {path} is a folder, not a file")
    if problem := _folder_problem(path.parent):
        raise PathError(f"{option} {path} cannot be written: its folder {path.parent} {problem}")
    return path

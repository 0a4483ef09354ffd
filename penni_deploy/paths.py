"""Check output paths before any work is done, so a bad ``-o`` costs a one-line error, not a
finished compile that dies on ``FileNotFoundError`` or ``FileExistsError`` at the last step."""

from __future__ import annotations

import os

from .errors import OutputPathError


def check_output_file(path: str | os.PathLike[str], option: str, *, create_folders: bool = False) -> str:
    """Refuse an output file that cannot be written; returns it as an absolute path.

    Parameters
    ----------
    path : str or PathLike
        The file to be written (it may exist: it is then replaced).
    option : str
        The option that named it (``-o``, ``--output``), for the message.
    create_folders : bool
        Whether the writer creates missing folders (``compile`` does); otherwise the folder must exist.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        raise OutputPathError(f"{option} {path} is a folder, not a file; name a file inside it")
    folder = os.path.dirname(path)
    existing = folder
    while not os.path.exists(existing):  # the nearest ancestor that exists decides
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputPathError(f"cannot write {option} {path}: {existing} is a file, not a folder; "
                              "choose another path")
    if existing != folder and not create_folders:
        raise OutputPathError(f"cannot write {option} {path}: folder {folder} does not exist; "
                              f"create it (mkdir -p {folder}) or choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {option} {path}: no permission to write in {existing}")
    return path


def check_output_folder(path: str | os.PathLike[str], option: str) -> str:
    """Refuse an output folder (created when missing) whose place is taken by a file."""
    path = os.path.abspath(os.fspath(path))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputPathError(f"cannot use {option} {path}: {existing} is a file, not a folder; choose another path")
    return path

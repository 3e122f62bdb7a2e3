"""Atomic writes: a file or a folder appears whole under its name, or not at all.

Every result, figure, export and checkpoint of the project is written to a temporary name beside its
target and renamed over it, so a killed process never leaves a truncated file under the real name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: Path, text: str) -> Path:
    """Writes ``text`` to a temporary file beside ``path``, then renames it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(temporary, 0o666 & ~_umask())  # the permissions of a plain open(), not mkstemp's 0600
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` for a writer that takes a file name (``savefig``,
    ``torch.save``); on success it is renamed over ``path``, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_umask())
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def replacing_folder(folder: Path) -> Iterator[Path]:
    """Yields a fresh staging folder beside ``folder``; on success it replaces ``folder`` whole (no stale
    files), by renames; on failure it is removed and ``folder`` is left as it was."""
    folder = Path(os.path.abspath(folder))  # '.', relative paths and symlinked parents alike
    here = Path(os.path.abspath(os.getcwd()))
    if folder.parent == folder or not folder.name or folder == here or folder in here.parents:
        raise ValueError(
            f"cannot replace {folder} whole (it is or holds the working directory): choose a folder below it"
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    os.chmod(staging, 0o777 & ~_umask())  # the permissions of a plain mkdir, not mkdtemp's 0700
    try:
        yield staging
        old = None
        if folder.exists() or folder.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            old.rmdir()
            folder.rename(old)
        try:
            staging.rename(folder)
        except BaseException:
            if old is not None:  # put the earlier folder back
                old.rename(folder)
            raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old, ignore_errors=True)


def check_replaceable(
    folder: Path, config_name: str, fmt: str, files: frozenset[str], overwrite: bool, what: str
) -> None:
    """Refuses to write an export of kind ``what`` into ``folder`` when that would replace an export (without
    ``overwrite``) or anything that is not one: a folder is only replaced whole when its ``config_name``
    declares format ``fmt`` and it holds nothing beyond ``files``. An empty or missing folder is fine."""
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder} is a file; choose a folder for the {what}")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if not (folder / config_name).exists():
        raise FileExistsError(
            f"{folder} holds files but no export ({config_name}); an export replaces its folder "
            "whole, so choose an empty or new folder"
        )
    try:
        found = json.loads((folder / config_name).read_text()).get("format")
    except (ValueError, UnicodeDecodeError, AttributeError):
        found = None
    others = sorted(p.name for p in folder.iterdir() if p.name not in files)
    if found != fmt or others:
        why = f"its {config_name} is not an {what}" if found != fmt else f"it also holds {others[:5]}"
        raise FileExistsError(
            f"{folder} is not only an {what} ({why}); an export replaces its folder whole, so choose another folder"
        )
    if not overwrite:
        raise FileExistsError(f"{folder / config_name} exists; pass overwrite=True or choose another folder")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


__all__ = ["atomic_path", "check_replaceable", "replacing_folder", "write_atomic"]

"""Durable file writes: a reader, and a kill at any moment, see the old file or the whole new one.

Every write goes to a hidden partial file in the target's own folder (`.<name>.partial`, or
`.<name>.<pid>.partial` where several processes may write the same name at once: SLURM index
shards, DDP ranks), is flushed to disk, then renamed into place and the rename made durable.
Checkpoints, run records and the data index are all written here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

PARTIAL_SUFFIX = ".partial"


def partial_path(path: Path, unique: bool = False) -> Path:
    """Where `path` is written before it is renamed into place: same folder, hidden; with
    `unique`, this process's id in the name too."""
    pid = f".{os.getpid()}" if unique else ""
    return path.with_name(f".{path.name}{pid}{PARTIAL_SUFFIX}")


def fsync_folder(folder: Path) -> None:
    """Make the folder's entries (a rename into it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically(partial: Path, path: Path) -> None:
    """Rename a fully written `partial` onto `path` and make the rename durable."""
    os.replace(partial, path)
    fsync_folder(path.parent)


def write_durably(path: Path, write: Callable[[BinaryIO], None], unique: bool = False) -> None:
    """`write(handle)` into `path`'s partial file, flushed to disk, then renamed into place.

    On an error the partial file is removed (a kill leaves it, for the writer's next start to
    remove); an `OSError` without a file name (a full disk during `write`) is re-raised naming
    `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(path, unique)
    try:
        with open(partial, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        replace_atomically(partial, path)
    except Exception as error:
        partial.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            raise OSError(error.errno, error.strerror, str(path)) from error
        raise


def write_text_atomic(path: Path, text: str, unique: bool = False) -> None:
    """`text` as UTF-8 into `path`, durably (`write_durably`)."""
    write_durably(path, lambda handle: handle.write(text.encode()), unique)


def write_json_atomic(
    path: Path, content: Any, unique: bool = False, indent: int | None = 2
) -> None:
    """`content` as JSON into `path`, durably (`write_durably`); `indent=None` for files only
    programs read (compact, and written by json's C encoder, several times faster)."""
    write_text_atomic(path, json.dumps(content, indent=indent), unique)

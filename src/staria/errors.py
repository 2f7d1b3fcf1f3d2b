"""Errors shared by every stage that reads a documented JSON record (labels, manifests)."""

from __future__ import annotations

from pathlib import Path


class RecordFormatError(ValueError):
    """A file or record that breaks its documented format; names the file and key at fault."""

    def __init__(self, path: str | Path, key: str, reason: str) -> None:
        super().__init__(f"{path}: key {key!r}: {reason}")
        self.path = str(path)
        self.key = key
        self.reason = reason

"""Read side of the token index: one split folder's memory-mapped tokens, offsets, section ids
and piece records (the folders `staria.data.preprocess` writes; layout: docs/data-format.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

NO_SECTION = 255  # section id of a token in no labelled section
COMPLETE_MARKER = "COMPLETE"  # a split folder is readable once this file is in it


class IncompleteIndexError(RuntimeError):
    """A cache folder or shard set that a finished run would have completed, and did not."""


@dataclass(frozen=True)
class PieceRecord:
    """One indexed piece: its source, content hash, labels and section spans in its sequence."""

    path: str
    sha256: str
    num_tokens: int
    form: str | None = None
    style: dict[str, str | None] | None = None
    sections: tuple[tuple[str, int, int], ...] = ()


class CachedSplit:
    """Read side of one split folder: memory-mapped tokens, offsets, section ids, piece records.

    Arrays open lazily and are not pickled, so DataLoader workers each map the files themselves.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / COMPLETE_MARKER).is_file():
            raise IncompleteIndexError(f"{self.folder} has no {COMPLETE_MARKER} marker")
        index = json.loads((self.folder / "index.json").read_text())
        self.split: str = index["split"]
        self.pieces = [
            PieceRecord(
                p["path"],
                p["sha256"],
                p["num_tokens"],
                p["form"],
                p["style"],
                tuple((s[0], s[1], s[2]) for s in p["sections"]),
            )
            for p in index["pieces"]
        ]
        self.offsets = np.load(self.folder / "offsets.npy")

    def __len__(self) -> int:
        return len(self.pieces)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_tokens", None)
        state.pop("_section_ids", None)
        return state

    @cached_property
    def _tokens(self) -> np.ndarray:
        return np.load(self.folder / "tokens.npy", mmap_mode="r")

    @cached_property
    def _section_ids(self) -> np.ndarray | None:
        path = self.folder / "section_ids.npy"
        return np.load(path, mmap_mode="r") if path.is_file() else None

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def id_counts(self, vocab_size: int) -> np.ndarray:
        """How often each vocabulary id occurs in the split's tokens [vocab_size] (int64)."""
        return np.bincount(self._tokens, minlength=vocab_size)

    def tokens(self, piece: int) -> np.ndarray:
        """Token ids of one piece as int64 (a copy, safe to modify)."""
        return self._tokens[self.offsets[piece] : self.offsets[piece + 1]].astype(np.int64)

    def section_ids(self, piece: int) -> np.ndarray:
        """Per-token section letter index (0 = A), `NO_SECTION` where the piece has no label."""
        if self._section_ids is None:
            return np.full(self.lengths[piece], NO_SECTION, dtype=np.uint8)
        return np.asarray(self._section_ids[self.offsets[piece] : self.offsets[piece + 1]])

"""The label record stored beside every labelled MIDI file: its form, section timeline and style.

`<name>.json` sits beside `<name>.mid`; the format is documented in docs/data-format.md.
Section times are seconds in the MIDI file's own timeline, so labels survive any tokenizer change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from staria.errors import RecordFormatError
from staria.tokenizer import FORMS, SECTION_LETTERS, TIME_STEP_MS

# generated/stitched: synthetic pieces (`staria.data.synthetic`); labelled: real MIDI labelled
# by a section classifier.
SYNTHETIC_SOURCES = ("generated", "stitched")
SOURCES = (*SYNTHETIC_SOURCES, "labelled")
SPLITS = ("train", "val", "test")
STYLE_KEYS = ("composer", "form", "genre")
# Onsets are compared with half a tokenizer step of slack, so an onset that quantization moved
# onto (or just before) a section boundary still counts for the section that starts there.
BOUNDARY_TOLERANCE_S = TIME_STEP_MS / 2 / 1000


class LabelFormatError(RecordFormatError):
    """A label file or record that breaks docs/data-format.md."""


@dataclass(frozen=True)
class Section:
    """One occurrence of a form letter, covering onsets in `[start, end)` seconds."""

    letter: str
    start: float
    end: float


@dataclass(frozen=True)
class PieceLabels:
    """Everything known about a labelled piece besides its notes."""

    form: str
    sections: tuple[Section, ...]
    style: dict[str, str | None] | None = None
    source: str = "generated"
    seed: int = 0
    split: str | None = None
    # Stitched pieces: the source file each letter's material comes from (provenance, leak checks).
    origins: dict[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sections", tuple(self.sections))
        self.validate("<PieceLabels>")

    def validate(self, origin: str | Path) -> None:
        """Raise `LabelFormatError` (naming `origin`) unless the record follows the format."""
        if self.form not in FORMS:
            raise LabelFormatError(origin, "form", f"{self.form!r} is not one of {FORMS}")
        letters = "".join(section.letter for section in self.sections)
        if letters != self.form:
            raise LabelFormatError(
                origin, "sections", f"letters {letters!r} do not spell form {self.form!r}"
            )
        previous_end = -np.inf
        for index, section in enumerate(self.sections):
            if not previous_end <= section.start < section.end:
                raise LabelFormatError(
                    origin,
                    f"sections[{index}]",
                    f"[{section.start}, {section.end}) is empty or overlaps the previous section",
                )
            previous_end = section.end
        if self.style is not None:
            unknown = set(self.style) - set(STYLE_KEYS)
            if unknown:
                raise LabelFormatError(
                    origin, "style", f"unknown keys {sorted(unknown)}; allowed {STYLE_KEYS}"
                )
        if self.source not in SOURCES:
            raise LabelFormatError(origin, "source", f"{self.source!r} is not one of {SOURCES}")
        if self.split is not None and self.split not in SPLITS:
            raise LabelFormatError(
                origin, "split", f"{self.split!r} is not one of {SPLITS} or null"
            )
        if self.origins is not None and set(self.origins) != set(self.form):
            raise LabelFormatError(
                origin, "origins", f"letters {sorted(self.origins)} differ from form {self.form!r}"
            )

    def section_of_onsets(self, onset_seconds: np.ndarray) -> np.ndarray:
        """Index into `sections` of each onset, -1 for onsets outside every section."""
        onsets = np.asarray(onset_seconds, dtype=np.float64) + BOUNDARY_TOLERANCE_S
        starts = np.array([section.start for section in self.sections])
        ends = np.array([section.end for section in self.sections])
        index = np.searchsorted(starts, onsets, side="right") - 1
        inside = (index >= 0) & (onsets < ends[np.maximum(index, 0)] + BOUNDARY_TOLERANCE_S)
        return np.where(inside, index, -1)

    def letters_for_onsets(self, onset_seconds: np.ndarray) -> np.ndarray:
        """Section letter of each onset (`""` outside every section), as a numpy string array."""
        index = self.section_of_onsets(onset_seconds)
        letters = np.array([*(section.letter for section in self.sections), ""])
        return letters[index]

    def to_json(self) -> dict[str, Any]:
        record = asdict(self)
        record["sections"] = [asdict(section) for section in self.sections]
        return record

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PieceLabels:
        """Read and validate a label file; any deviation raises `LabelFormatError` naming it."""
        try:
            record = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise LabelFormatError(path, "<document>", f"not valid JSON ({error})") from error
        return cls.from_json(record, origin=path)

    @classmethod
    def from_json(cls, record: Any, origin: str | Path = "<record>") -> PieceLabels:
        if not isinstance(record, dict):
            raise LabelFormatError(origin, "<document>", "expected a JSON object")
        record = {"origins": None, **record}
        expected = {"form", "sections", "style", "source", "seed", "split", "origins"}
        if set(record) != expected:
            missing, extra = expected - set(record), set(record) - expected
            raise LabelFormatError(
                origin,
                ",".join(sorted(missing | extra)),
                f"missing {sorted(missing)}, unknown {sorted(extra)}",
            )
        _expect(origin, "form", record["form"], str)
        _expect(origin, "source", record["source"], str)
        _expect(origin, "seed", record["seed"], int)
        _expect(origin, "split", record["split"], (str, type(None)))
        _expect(origin, "style", record["style"], (dict, type(None)))
        _expect(origin, "origins", record["origins"], (dict, type(None)))
        _expect(origin, "sections", record["sections"], list)
        sections = []
        for index, entry in enumerate(record["sections"]):
            key = f"sections[{index}]"
            _expect(origin, key, entry, dict)
            if set(entry) != {"letter", "start", "end"}:
                raise LabelFormatError(
                    origin, key, f"expected keys letter, start, end; got {sorted(entry)}"
                )
            _expect(origin, f"{key}.letter", entry["letter"], str)
            if entry["letter"] not in SECTION_LETTERS:
                raise LabelFormatError(
                    origin, f"{key}.letter", f"{entry['letter']!r} is not one of {SECTION_LETTERS}"
                )
            _expect(origin, f"{key}.start", entry["start"], (int, float))
            _expect(origin, f"{key}.end", entry["end"], (int, float))
            sections.append(Section(entry["letter"], float(entry["start"]), float(entry["end"])))
        for style_key, value in (record["style"] or {}).items():
            _expect(origin, f"style.{style_key}", value, (str, type(None)))
        for letter, value in (record["origins"] or {}).items():
            _expect(origin, f"origins.{letter}", value, str)
        try:
            return cls(
                record["form"],
                tuple(sections),
                record["style"],
                record["source"],
                record["seed"],
                record["split"],
                record["origins"],
            )
        except LabelFormatError as error:
            raise LabelFormatError(origin, error.key, error.reason) from None


def labels_path(midi_path: str | Path) -> Path:
    """Where the labels of a MIDI file live: the same name with `.json`."""
    return Path(midi_path).with_suffix(".json")


def _expect(origin: str | Path, key: str, value: Any, types: type | tuple[type, ...]) -> None:
    if isinstance(value, bool) or not isinstance(value, types):
        raise LabelFormatError(
            origin, key, f"{value!r} has type {type(value).__name__}, expected {types}"
        )
